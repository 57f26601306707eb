package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// TestBenchPreload preloads keys into a dev server: every key of the range
// is written and none past it, -from resumes, and kv-read -no-prepopulate
// reads them without writing (reads of keys never written fail).
func TestBenchPreload(t *testing.T) {
	n := startDev(t)
	r := n.mustRun(t, "bench", "preload", "-keys=150", "-clients=32", "-value-size=64", "-format=json")
	m := hasKeys(t, r, "keys", "written", "keys_per_sec")
	if m["written"] != float64(150) {
		t.Fatalf("written %v, want 150: %s", m["written"], r)
	}
	// Resume: keys 150 … 199 only.
	r = n.mustRun(t, "bench", "preload", "-keys=200", "-from=150", "-clients=8", "-value-size=64", "-format=json")
	if m := hasKeys(t, r, "written", "from"); m["written"] != float64(50) || m["from"] != float64(150) {
		t.Fatalf("resumed preload: %s", r)
	}
	for _, k := range []string{"k0", "k149", "k150", "k199"} {
		n.mustRun(t, "kv", "get", "secret/bench/"+k)
	}
	if r := n.run(t, "kv", "get", "secret/bench/k200"); r.code == 0 {
		t.Fatalf("k200 exists after a preload of 200 keys: %s", r)
	}
	r = n.mustRun(t, "bench", "-clients=4", "-duration=300ms", "-keys=200", "-no-prepopulate", "-consistency=stale", "-format=json", "kv-read")
	m = hasKeys(t, r, "ops", "errors")
	if ops, _ := m["ops"].(float64); ops <= 0 {
		t.Fatalf("kv-read over the preloaded keys: no reads: %s", r)
	}
	if errs, _ := m["errors"].(map[string]any); len(errs) != 0 {
		t.Fatalf("kv-read over the preloaded keys: errors %v", errs)
	}
	if strings.Contains(r.stderr, "writing 200 keys") {
		t.Fatalf("-no-prepopulate wrote the keys: %s", r.stderr)
	}
	// Keys nobody wrote: every read fails, so -no-prepopulate wrote nothing.
	r = n.mustRun(t, "bench", "-clients=2", "-duration=200ms", "-keys=50", "-prefix=secret/none/", "-no-prepopulate", "-format=json", "kv-read")
	m = hasKeys(t, r, "ops", "errors")
	if errs, _ := m["errors"].(map[string]any); len(errs) == 0 || m["ops"] != float64(0) {
		t.Fatalf("kv-read of keys never written: ops %v errors %v, want only errors", m["ops"], m["errors"])
	}

	wantErr(t, n.run(t, "bench", "preload"), 1, "-keys")
	wantErr(t, n.run(t, "bench", "preload", "-keys=10", "-from=10"), 1, "-from=10")
	wantErr(t, n.run(t, "bench", "preload", "-keys=10", "-clients=0"), 1, "-clients")
	wantErr(t, n.run(t, "bench", "preload", "-keys=10", "-prefix=secret/x"), 1, "end with /")
	wantErr(t, n.run(t, "bench", "preload", "-keys=10", "extra"), 1, "")
}

// TestPreloadKeysResume: when a write fails for good, preloadKeys stops
// and its resume point has every index below it written; a second run from
// there writes the rest, each index once overall apart from those in
// flight at the stop.
func TestPreloadKeysResume(t *testing.T) {
	const keys, bad = 5000, 3217
	var mu sync.Mutex
	written := map[int]int{}
	failing := true
	put := func(_ context.Context, _, i int) error {
		mu.Lock()
		defer mu.Unlock()
		if i == bad && failing {
			return errors.New("disk full")
		}
		written[i]++
		return nil
	}
	next, err := preloadKeys(context.Background(), 0, keys, 64, io.Discard, put)
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), fmt.Sprint(bad)) {
		t.Fatalf("err %v, want the failed key's error", err)
	}
	if next > bad {
		t.Fatalf("resume point %d is past the failed key %d", next, bad)
	}
	for i := range next {
		if written[i] == 0 {
			t.Fatalf("key %d below the resume point %d was not written", i, next)
		}
	}
	failing = false
	if n, err := preloadKeys(context.Background(), next, keys, 64, io.Discard, put); err != nil || n != keys {
		t.Fatalf("resumed: %d, %v; want %d, nil", n, err, keys)
	}
	for i := range keys {
		if written[i] == 0 {
			t.Fatalf("key %d never written after the resume", i)
		}
	}

	// A cancelled context stops it with a resume point and "interrupted".
	ctx, cancel := context.WithCancel(context.Background())
	var calls sync.WaitGroup
	calls.Add(1)
	var once sync.Once
	next, err = preloadKeys(ctx, 0, keys, 8, io.Discard, func(ctx context.Context, _, i int) error {
		if i == 100 {
			once.Do(func() { cancel(); calls.Done() })
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	calls.Wait()
	if err == nil || !strings.Contains(err.Error(), "interrupted") || next > 100 {
		t.Fatalf("cancelled: next %d, err %v; want at most 100 and interrupted", next, err)
	}
}
