package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLinearizableGetDuringLeaderKill: while one writer puts increasing
// values (`coffer kv put`) and two readers run `coffer kv get
// -consistency=linearizable -field=v` over and over, all through every
// node's address, the leader is killed (SIGKILL) just after a put was
// acknowledged. Every get either prints a value no older than the newest
// one acknowledged before it began, or exits non-zero: never an older
// value with exit 0. With -field nothing would tell an older value from a
// fresh one, so the client must not answer from a stale fallback.
//
// Then a second node is killed (no quorum): a linearizable get and a
// default get with -stale-fallback=false both fail, while a plain default
// get falls back to the survivor's state and says so (read_meta.stale).
func TestLinearizableGetDuringLeaderKill(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	c.initAndUnseal(t, c.others(c.waitLeader(t, ""))[0])
	// A sealed leader may have handed over while the others unsealed.
	leader := c.waitLeader(t, "")
	const path = "secret/lin/cli"
	c.mustRun(t, "kv", "put", path, "v=0")

	type put struct {
		value      int
		start, end time.Time
		acked      bool
	}
	type get struct {
		start, end time.Time
		r          result
	}
	var (
		mu   sync.Mutex
		puts = []put{{value: 0, acked: true}} // acknowledged before anything else began
		gets []get
	)
	count := func(since time.Time) (acked, answered int) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range puts {
			if p.acked && p.start.After(since) {
				acked++
			}
		}
		for _, g := range gets {
			if g.r.code == 0 && g.start.After(since) {
				answered++
			}
		}
		return acked, answered
	}
	// ackedNow receives the value of an acknowledged put, when the test
	// waits for one at that moment.
	ackedNow := make(chan int)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := 1; ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			p := put{value: v, start: time.Now()}
			r := c.run(t, "kv", "put", path, "v="+strconv.Itoa(v))
			p.end, p.acked = time.Now(), r.code == 0
			mu.Lock()
			puts = append(puts, p)
			mu.Unlock()
			if p.acked {
				select {
				case ackedNow <- v:
				default:
				}
			}
		}
	}()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				g := get{start: time.Now()}
				g.r = c.run(t, "kv", "get", "-consistency=linearizable", "-field=v", path)
				g.end = time.Now()
				mu.Lock()
				gets = append(gets, g)
				mu.Unlock()
			}
		}()
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()

	begin := time.Now()
	if err := poll(60*time.Second, func() error {
		if acked, answered := count(begin); acked < 3 || answered < 3 {
			return fmt.Errorf("%d puts acknowledged, %d gets answered", acked, answered)
		}
		return nil
	}); err != nil {
		t.Fatalf("before the kill: %v\n%s", err, c.logs())
	}
	// Kill the leader right after an acknowledgement: the followers may
	// not have applied that put yet, so an answer from their state would
	// be older than it.
	var last int
	select {
	case last = <-ackedNow:
	case <-time.After(30 * time.Second):
		t.Fatalf("no put acknowledged in 30s\n%s", c.logs())
	}
	killed := time.Now()
	leader.kill()
	survivors := &testCluster{nodes: c.others(leader), token: c.token}
	newLeader := survivors.waitLeader(t, leader.id)
	agreed := time.Now()
	if err := poll(60*time.Second, func() error {
		if acked, answered := count(killed); acked < 1 || answered < 5 {
			return fmt.Errorf("since the kill: %d puts acknowledged, %d gets answered", acked, answered)
		}
		return nil
	}); err != nil {
		t.Fatalf("after the kill of %s: %v\n%s", leader.id, err, survivors.logs())
	}
	stopLoad()

	// Every answered get printed a value no older than the newest put
	// acknowledged before it began, no newer than the last put begun
	// before it ended, and no older than a get that ended before it began.
	var answered, failed, leaderless, leaderlessAnswered, afterKill int
	for _, g := range gets {
		if !g.start.After(agreed) && !g.end.Before(killed) {
			leaderless++
			if g.r.code == 0 {
				leaderlessAnswered++
			}
		}
		if g.start.After(killed) {
			afterKill++
		}
		if g.r.code != 0 {
			failed++
			if g.r.code != 1 || !strings.HasPrefix(g.r.stderr, "Error: ") {
				t.Errorf("get at +%s failed with %s: want exit 1 and an error line", g.start.Sub(killed), g.r)
			}
			continue
		}
		answered++
		v, err := strconv.Atoi(strings.TrimSuffix(g.r.stdout, "\n"))
		if err != nil || g.r.stdout != strconv.Itoa(v)+"\n" {
			t.Errorf("get at +%s printed %q: want the value and a newline", g.start.Sub(killed), g.r.stdout)
			continue
		}
		newestAcked, lastBegun := 0, 0
		for _, p := range puts {
			if p.acked && p.end.Before(g.start) {
				newestAcked = max(newestAcked, p.value)
			}
			if p.start.Before(g.end) {
				lastBegun = max(lastBegun, p.value)
			}
		}
		if v < newestAcked {
			t.Errorf("get [%s, %s] of the kill printed %d with exit 0, but %d was acknowledged before it began",
				g.start.Sub(killed).Round(time.Millisecond), g.end.Sub(killed).Round(time.Millisecond), v, newestAcked)
		}
		if v > lastBegun {
			t.Errorf("get [%s, %s] of the kill printed %d, which no put had begun to write", g.start.Sub(killed).Round(time.Millisecond), g.end.Sub(killed).Round(time.Millisecond), v)
		}
		for _, e := range gets {
			if e.r.code != 0 || !e.end.Before(g.start) {
				continue
			}
			if w, err := strconv.Atoi(strings.TrimSuffix(e.r.stdout, "\n")); err == nil && v < w {
				t.Errorf("get [%s, %s] of the kill printed %d, after a get that ended earlier printed %d",
					g.start.Sub(killed).Round(time.Millisecond), g.end.Sub(killed).Round(time.Millisecond), v, w)
			}
		}
	}
	t.Logf("killed %s after put %d was acknowledged; %s leads after %s; %d linearizable gets: %d answered, %d failed; %d in flight before the survivors agreed on a leader (%d answered), %d begun after the kill; %d puts",
		leader.id, last, newLeader.id, agreed.Sub(killed).Round(time.Millisecond), len(gets), answered, failed, leaderless, leaderlessAnswered, afterKill, len(puts)-1)
	if leaderless == 0 {
		t.Errorf("no get was in flight between the kill and the new leader: the test did not exercise the failover")
	}

	// No quorum: the survivor knows no leader and only its own state.
	newLeader.kill()
	quorumLost := time.Now()
	res := make([]result, 3)
	var qwg sync.WaitGroup
	for i, args := range [][]string{
		{"kv", "get", "-consistency=linearizable", "-field=v", path},
		{"kv", "get", "-stale-fallback=false", "-format=json", path},
		{"kv", "get", "-format=json", path},
	} {
		qwg.Go(func() { res[i] = c.run(t, args...) })
	}
	qwg.Wait()
	lin, strict, fallback := res[0], res[1], res[2]
	t.Logf("without quorum (%s for the three gets): linearizable: %s\n-stale-fallback=false: %s\ndefault: %s",
		time.Since(quorumLost).Round(time.Millisecond), lin, strict, fallback)
	if lin.code != 1 {
		t.Errorf("linearizable get without quorum: %s: want exit 1, never a fallback", lin)
	}
	if strict.code != 1 {
		t.Errorf("default get with -stale-fallback=false without quorum: %s: want exit 1", strict)
	}
	var fb getJSON
	if err := jsonUnmarshalStrict(fallback.stdout, &fb); fallback.code != 0 || err != nil || fb.ReadMeta == nil || !fb.ReadMeta.Stale {
		t.Errorf("default get without quorum: %s (%v): want exit 0 with read_meta.stale, from the stale fallback", fallback, err)
	}
}
