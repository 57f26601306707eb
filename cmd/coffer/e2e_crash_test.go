package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// ackedWrite is a put the cluster acknowledged: the version it answered and
// the value written.
type ackedWrite struct {
	path, value    string
	version, index uint64
	start          time.Time
}

// crashWriters is a few goroutines putting through one client, each to
// its own keys, four versions per key (a secret keeps ten), recording every
// write the cluster acknowledged.
type crashWriters struct {
	mu    sync.Mutex
	acked []ackedWrite
	fails int
	stop  chan struct{}
	wg    sync.WaitGroup
}

func startCrashWriters(cl *api.Client, writers int) *crashWriters {
	w := &crashWriters{stop: make(chan struct{})}
	for g := range writers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for j := 0; ; j++ {
				select {
				case <-w.stop:
					return
				default:
				}
				path := fmt.Sprintf("secret/crash/w%d/k%d", g, j/4)
				value := fmt.Sprintf("%d-%d", g, j)
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := cl.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": value}})
				cancel()
				w.mu.Lock()
				if err == nil {
					w.acked = append(w.acked, ackedWrite{path: path, value: value, version: resp.GetVersion(), index: resp.GetIndex(), start: start})
				} else {
					w.fails++
				}
				w.mu.Unlock()
			}
		}()
	}
	return w
}

// count returns how many writes were acknowledged that began after since.
func (w *crashWriters) count(since time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.acked {
		if a.start.After(since) {
			n++
		}
	}
	return n
}

// halt stops the writers and returns every acknowledged write.
func (w *crashWriters) halt() ([]ackedWrite, int) {
	close(w.stop)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ackedWrite(nil), w.acked...), w.fails
}

// waitAcked polls until n writes that began after since are acknowledged.
func (w *crashWriters) waitAcked(t *testing.T, c *testCluster, n int, since time.Time, what string) {
	t.Helper()
	if err := poll(60*time.Second, func() error {
		if got := w.count(since); got < n {
			return fmt.Errorf("%d of %d writes acknowledged %s", got, n, what)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, c.logs())
	}
}

// restartAndUnseal restarts the killed nodes on their flags, all before
// waiting for any (a lone node of a cluster that lost all its nodes does
// not answer until it hears from the others), and unseals node i with
// shares i..i+2.
func (c *testCluster) restartAndUnseal(t *testing.T, nodes []*clusterNode, shares []string) {
	t.Helper()
	for _, n := range nodes {
		n.restart(t)
	}
	for i, n := range nodes {
		if err := n.waitServing(t, 90*time.Second); err != nil {
			t.Fatalf("restarting %s: %v\n%s", n.id, err, c.logs())
		}
		for _, k := range shares[i : i+3] {
			if r := runCLI(t, nil, "", "operator", "unseal", "-address="+n.url, k); r.code != 0 {
				t.Fatalf("unseal %s: %s", n.id, r)
			}
		}
	}
}

// TestCrashKeepsAcknowledgedWrites: three real nodes on each Raft log
// store take writes from several goroutines; in the middle of them the
// leader is killed with SIGKILL (then, after new writes were acknowledged
// by its successor, restarted), or every node at once (then all
// restarted). Once unsealed, every node serves every acknowledged write
// at the version it was acknowledged with: a store (or the log cache over
// it) that acknowledged an entry before writing it to its file would lose
// some. SIGKILL keeps what reached the kernel, so this does not test the
// fsyncs: a power cut would.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	t.Parallel()
	needBinary(t)
	for _, store := range []string{replication.LogStoreBoltDB, replication.LogStoreWAL} {
		for _, kill := range []string{"leader", "all"} {
			t.Run(store+"/kill-"+kill, func(t *testing.T) {
				c := startCluster(t, "-log-level=warn", "-raft-log-store="+store)
				ini := c.initAndUnseal(t, c.others(c.waitLeader(t, ""))[0])
				leader := c.waitLeader(t, "")
				var urls []string
				for _, n := range c.nodes {
					urls = append(urls, n.url)
				}
				cl, err := api.New(api.Config{Endpoints: urls, Token: c.token, Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()

				w := startCrashWriters(cl, 4)
				w.waitAcked(t, c, 40, time.Time{}, "before the kill")
				killed := time.Now()
				var down []*clusterNode
				if kill == "leader" {
					leader.kill()
					down = []*clusterNode{leader}
					// The survivors elect a leader and take writes again.
					w.waitAcked(t, c, 20, killed, "by the new leader")
				} else {
					for _, n := range c.nodes {
						n.kill()
					}
					down = c.nodes
				}
				acked, fails := w.halt()
				t.Logf("%d writes acknowledged, %d failed", len(acked), fails)

				c.restartAndUnseal(t, down, ini.UnsealKeysB64)
				c.waitUnsealed(t, c.nodes...)
				c.waitLeader(t, "")
				var maxIndex uint64
				for _, a := range acked {
					maxIndex = max(maxIndex, a.index)
				}
				for _, n := range c.nodes {
					checkAcked(t, c, n, acked, maxIndex)
				}
			})
		}
	}
}

// checkAcked reads every acknowledged write from node n alone, at its
// acknowledged version, once n has applied maxIndex.
func checkAcked(t *testing.T, c *testCluster, n *clusterNode, acked []ackedWrite, maxIndex uint64) {
	t.Helper()
	cl, err := api.New(api.Config{Endpoints: []string{n.url}, Token: c.token, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	read := &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MinIndex: maxIndex}
	var lost []string
	for _, a := range acked {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		g, err := cl.Get(ctx, &pb.GetRequest{Path: a.path, Version: a.version, Read: read})
		cancel()
		switch {
		case err != nil:
			lost = append(lost, fmt.Sprintf("%s v%d: %v", a.path, a.version, err))
		case g.GetData()["v"] != a.value || g.GetMetadata().GetVersion() != a.version:
			lost = append(lost, fmt.Sprintf("%s v%d: read %q at v%d, acknowledged %q", a.path, a.version, g.GetData()["v"], g.GetMetadata().GetVersion(), a.value))
		}
	}
	if len(lost) > 0 {
		t.Fatalf("node %s lost %d of %d acknowledged writes:\n%s\n%s", n.id, len(lost), len(acked), strings.Join(lost, "\n"), c.logs())
	}
}
