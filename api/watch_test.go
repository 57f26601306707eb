package api

import (
	"context"
	"slices"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
)

// nextEvent returns the next event that is not progress, failing after d.
func nextEvent(t *testing.T, ch <-chan WatchEvent, d time.Duration) WatchEvent {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if ev.Type != WatchProgress {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no watch event within %s", d)
		}
	}
}

// TestWatchResume: a watch follows a prefix; the node serving it is
// killed; the watch reconnects to another node and resumes after the last
// index it saw: every change arrives once, in order, none missed. A watch
// resuming from an index a restarted node no longer holds gets a
// WatchCompacted event, then goes on. Cancelling the context closes the
// channel.
func TestWatchResume(t *testing.T) {
	c := newTestCluster(t, 3)
	cl := c.client(t, Config{})
	watcher := c.client(t, Config{DownBackoff: 100 * time.Millisecond, MaxDownBackoff: 500 * time.Millisecond})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := watcher.Watch(ctx, "secret/w/", 0)
	if err != nil {
		t.Fatal(err)
	}
	// From 0: the first event is progress, from the serving node.
	var first WatchEvent
	select {
	case first = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no first event")
	}
	if first.Type != WatchProgress || first.NodeID == "" {
		t.Fatalf("first event %+v", first)
	}
	serving := c.Node(first.NodeID)

	var written []uint64
	put := func(path string) {
		t.Helper()
		resp, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "x"}})
		if err != nil {
			t.Fatalf("put %s: %v", path, err)
		}
		written = append(written, resp.Index)
	}
	var seen []uint64
	expect := func(path string) WatchEvent {
		t.Helper()
		ev := nextEvent(t, ch, 10*time.Second)
		if ev.Type != WatchChange || ev.Path != path || ev.Op != "put" {
			t.Fatalf("event %+v, want a put of %s", ev, path)
		}
		seen = append(seen, ev.Index)
		return ev
	}
	put("secret/w/a")
	put("secret/other") // not under the prefix
	put("secret/w/b")
	expect("secret/w/a")
	expect("secret/w/b")

	killedAt := time.Now()
	c.Kill(serving)
	for _, p := range []string{"secret/w/c", "secret/w/d", "secret/w/e"} {
		put(p)
	}
	var resumed WatchEvent
	for _, p := range []string{"secret/w/c", "secret/w/d", "secret/w/e"} {
		ev := expect(p)
		if p == "secret/w/c" {
			resumed = ev
		}
		if ev.NodeID == serving.ID {
			t.Fatalf("event %+v from the killed node %s", ev, serving.ID)
		}
	}
	t.Logf("killed %s; the watch resumed on %s, first change %s after the kill", serving.ID, resumed.NodeID, time.Since(killedAt).Round(time.Millisecond))
	want := slices.Clone(written)
	want = slices.Delete(want, 1, 2) // secret/other
	if !slices.Equal(seen, want) {
		t.Fatalf("changes seen at %v, written at %v", seen, want)
	}

	// The killed node comes back (sealed, then unsealed); its change ring
	// starts at its restart, so a watch from an older index there is told
	// the changes were compacted, and goes on from the new index.
	c.Restart(t, serving)
	c.Unseal(t, serving, 0)
	c.WaitForApplied(t, written[len(written)-1])
	only := c.client(t, Config{}, serving)
	cctx, ccancel := context.WithCancel(context.Background())
	defer ccancel()
	cch, err := only.Watch(cctx, "secret/w/", written[0])
	if err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, cch, 10*time.Second)
	if ev.Type != WatchCompacted || ev.Index < written[len(written)-1] {
		t.Fatalf("resume from before the restart: %+v, want compacted", ev)
	}
	put("secret/w/f")
	if ev := nextEvent(t, cch, 10*time.Second); ev.Type != WatchChange || ev.Path != "secret/w/f" || ev.Index != written[len(written)-1] {
		t.Fatalf("after compacted: %+v", ev)
	}
	ccancel()
	drain(t, cch)

	// The first watch got secret/w/f too, and closes when cancelled.
	expect("secret/w/f")
	cancel()
	drain(t, ch)
}

// drain waits until ch is closed.
func drain(t *testing.T, ch <-chan WatchEvent) {
	t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timer.C:
			t.Fatal("watch channel not closed after cancel")
		}
	}
}

// TestWatchFails: a watch whose stream is refused for good (a bad prefix)
// reports WatchFailed and closes.
func TestWatchFails(t *testing.T) {
	c := newTestCluster(t, 1)
	cl := c.client(t, Config{})
	ch, err := cl.Watch(context.Background(), "nomount/", 0)
	if err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, ch, 10*time.Second)
	if ev.Type != WatchFailed || ev.Err == nil {
		t.Fatalf("event %+v, want failed", ev)
	}
	t.Logf("failed watch: %v", ev.Err)
	drain(t, ch)
}
