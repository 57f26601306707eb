package server

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
)

// gatedStream is the server side of a watch whose client reads only once
// open is closed: every Send before that waits, as on a connection whose
// flow-control window is full.
type gatedStream struct {
	grpc.ServerStream
	ctx     context.Context
	open    chan struct{}
	waiting chan struct{} // closed when a Send first waits
	events  chan *pb.WatchEvent
}

func (g *gatedStream) Context() context.Context { return g.ctx }

func (g *gatedStream) Send(ev *pb.WatchEvent) error {
	select {
	case <-g.open:
	default:
		select {
		case <-g.waiting:
		default:
			close(g.waiting)
		}
		select {
		case <-g.open:
		case <-g.ctx.Done():
			return g.ctx.Err()
		}
	}
	g.events <- ev
	return nil
}

// TestWatchSlowStreamCatchesUp holds a watch stream's sends while the node
// applies three times the feed's buffer of changes: the feed drops the
// stream's queue and switches it to the ring, never waiting for it, and
// the stream still gets every change under its prefix exactly once, in
// index order, then follows the feed again.
func TestWatchSlowStreamCatchesUp(t *testing.T) {
	x := newKVFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	put := func(path string) uint64 {
		t.Helper()
		r, err := x.kv.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Index
	}
	start := put("secret/before") // a watch from index 0 would begin with a progress event
	gs := &gatedStream{ctx: ctx, open: make(chan struct{}), waiting: make(chan struct{}), events: make(chan *pb.WatchEvent, 4*subBuffer)}
	done := make(chan error, 1)
	go func() {
		done <- x.kv.Watch(&pb.WatchRequest{Prefix: "secret/slow/", FromIndex: start}, gs)
	}()
	var want []uint64
	want = append(want, put("secret/slow/0"))
	select {
	case <-gs.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not try to send the first change")
	}
	for i := 1; i <= 3*subBuffer; i++ {
		want = append(want, put("secret/slow/"+strconv.Itoa(i)))
		put("secret/slower/" + strconv.Itoa(i)) // shares the prefix's letters, not its folder
	}
	feed := x.kv.watchFeed()
	last := x.f.AppliedIndex()
	waitFor(t, 10*time.Second, "the feed to hand out every change", func() bool { return feed.index.Load() >= last })
	lagging := 0
	feed.mu.Lock()
	for s := range feed.subs["secret/slow/"] {
		s.mu.Lock()
		if s.lagging {
			lagging++
		}
		s.mu.Unlock()
	}
	feed.mu.Unlock()
	if lagging != 1 {
		t.Fatalf("%d lagging subscribers, want the held stream switched to the ring", lagging)
	}

	close(gs.open)
	// Then a live one, through the feed again.
	want = append(want, put("secret/slow/live"))
	for i, idx := range want {
		select {
		case ev := <-gs.events:
			if ev.Type != pb.WatchEvent_CHANGE || ev.Index != idx {
				t.Fatalf("event %d: %v at %d (%s), want the change at %d", i, ev.Type, ev.Index, ev.Path, idx)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d of %d did not arrive", i, len(want))
		}
	}
	select {
	case ev := <-gs.events:
		t.Fatalf("an extra event: %v at %d (%s)", ev.Type, ev.Index, ev.Path)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the watch ended with %v, want its context's cancellation", err)
	}
}

// TestWatchFeedMatchesSubscribedPrefixesOnly: a change reaches the
// subscribers of every prefix of its path and no others, and the lengths
// the feed looks up follow subscriptions and their ends.
func TestWatchFeedMatchesSubscribedPrefixesOnly(t *testing.T) {
	f := newWatchFeed(nil, context.Background(), func() bool { return false })
	f.started = true // no run loop: publish is called directly
	subs := map[string]*subscriber{}
	for _, p := range []string{"secret/", "secret/a/", "secret/a/b", "secret/ab", "secret/z/", "kv/"} {
		subs[p] = f.subscribe(p)
		subs[p].lagging = false
	}
	extra := f.subscribe("secret/a/") // a second stream on one prefix
	extra.lagging = false
	if want := []int{3, 7, 9, 10}; !slices.Equal(f.lens, want) {
		t.Fatalf("lengths %v, want %v", f.lens, want)
	}
	f.publish([]fsm.Change{{Index: 7, Path: "secret/a/b/c", Op: "put"}})
	got := func(s *subscriber) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.pending) == 1 && s.pending[0].Index == 7
	}
	for p, s := range subs {
		want := strings.HasPrefix("secret/a/b/c", p)
		if got(s) != want {
			t.Errorf("subscriber of %q received it: %v, want %v", p, got(s), want)
		}
	}
	if !got(extra) {
		t.Error("the second stream on secret/a/ did not receive it")
	}
	for _, p := range []string{"secret/ab", "kv/"} {
		f.unsubscribe(subs[p])
	}
	f.unsubscribe(subs["secret/a/"]) // extra still watches it
	if want := []int{7, 9, 10}; !slices.Equal(f.lens, want) {
		t.Fatalf("lengths after unsubscribing %v, want %v", f.lens, want)
	}
	f.unsubscribe(extra)
	f.unsubscribe(extra) // twice: no effect
	if want := []int{7, 9, 10}; !slices.Equal(f.lens, want) || f.byLen[9] != 1 {
		t.Fatalf("lengths after the last stream of secret/a/ %v (%v), want %v with one prefix of 9 (secret/z/)", f.lens, f.byLen, want)
	}
	f.unsubscribe(subs["secret/z/"])
	if want := []int{7, 10}; !slices.Equal(f.lens, want) || len(f.byLen) != 2 {
		t.Fatalf("lengths after secret/z/ %v (%v), want %v", f.lens, f.byLen, want)
	}
}
