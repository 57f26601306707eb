package server

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	"coffer/fsm"
)

// The change feed of a node: one goroutine reads each applied batch's
// changes from the FSM's ring once and hands each change to the watch
// streams whose prefix it falls under, so that a batch costs the node one
// ring read and wakes only the streams it concerns (with 10,000 streams,
// each waking on every batch to scan the ring itself took a third of the
// node's CPU, and its allocations most of the garbage collector's).
//
// The feed never waits for a stream: a stream that falls subBuffer changes
// behind is switched to catching up from the ring on its own (as a stream
// resuming from an index does), and rejoins the feed once it has.
const (
	// subBuffer bounds the changes waiting for one stream.
	subBuffer = 256
	// feedBatch is how many changes the feed reads from the ring at once.
	feedBatch = 1024
)

// feedStore is what the feed reads of the FSM.
type feedStore interface {
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
	ChangesSince(from uint64, prefix string, max int) ([]fsm.Change, error)
}

// watchFeed is a node's change feed. Make one with newWatchFeed; it starts
// with its first subscriber and runs until stop ends or the FSM closes.
type watchFeed struct {
	store  feedStore
	stop   context.Context
	sealed func() bool
	// index is the applied index up to which every change has been
	// handed to the subscribers (or they were switched to catching up).
	index atomic.Uint64
	// closed is closed when the feed stops.
	closed chan struct{}

	// mu guards the fields below.
	mu      sync.Mutex
	started bool
	subs    map[string]map[*subscriber]struct{} // by prefix
	// lens are the lengths of the prefixes in subs, ascending, each once,
	// and byLen how many prefixes have each: publish looks a path up at
	// those lengths only.
	lens  []int
	byLen map[int]int
}

func newWatchFeed(store feedStore, stop context.Context, sealed func() bool) *watchFeed {
	return &watchFeed{store: store, stop: stop, sealed: sealed, closed: make(chan struct{}), subs: map[string]map[*subscriber]struct{}{}, byLen: map[int]int{}}
}

// subscriber is one watch stream's place in the feed.
type subscriber struct {
	prefix string
	// wake holds a token when there is something to look at.
	wake chan struct{}

	// mu guards the fields below.
	mu      sync.Mutex
	pending []fsm.Change
	// lagging: changes were dropped (or it just subscribed), catch up
	// from the ring.
	lagging bool
}

// subscribe adds a stream watching prefix. It starts lagging, so that its
// first look is at the ring from the index it resumes after.
func (f *watchFeed) subscribe(prefix string) *subscriber {
	s := &subscriber{prefix: prefix, wake: make(chan struct{}, 1), lagging: true}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.started {
		f.started = true
		f.index.Store(f.store.AppliedIndex())
		go f.run()
	}
	set := f.subs[prefix]
	if set == nil {
		set = map[*subscriber]struct{}{}
		f.subs[prefix] = set
		if f.byLen[len(prefix)]++; f.byLen[len(prefix)] == 1 {
			i, _ := slices.BinarySearch(f.lens, len(prefix))
			f.lens = slices.Insert(f.lens, i, len(prefix))
		}
	}
	set[s] = struct{}{}
	return s
}

// unsubscribe removes s.
func (f *watchFeed) unsubscribe(s *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	set, ok := f.subs[s.prefix]
	if !ok {
		return
	}
	delete(set, s)
	if len(set) == 0 {
		delete(f.subs, s.prefix)
		if f.byLen[len(s.prefix)]--; f.byLen[len(s.prefix)] == 0 {
			delete(f.byLen, len(s.prefix))
			i, _ := slices.BinarySearch(f.lens, len(s.prefix))
			f.lens = slices.Delete(f.lens, i, i+1)
		}
	}
}

// run is the feed: it waits for each applied batch and hands its changes
// out.
func (f *watchFeed) run() {
	defer close(f.closed)
	next := f.index.Load()
	for {
		if err := f.store.WaitApplied(f.stop, next+1); err != nil {
			return // the node stops, or its FSM closed
		}
		for {
			applied := f.store.AppliedIndex()
			changes, err := f.store.ChangesSince(next, "", feedBatch)
			if errors.Is(err, fsm.ErrCompacted) || err != nil {
				// The ring moved on past the feed (a restore): every
				// stream looks at the ring itself, and learns there.
				f.lagAll()
				next = max(next, applied)
				f.index.Store(next)
				break
			}
			f.publish(changes)
			if len(changes) == feedBatch {
				next = changes[len(changes)-1].Index
				f.index.Store(next)
				continue
			}
			next = max(next, applied)
			f.index.Store(next)
			break
		}
		if f.sealed() {
			// Every stream ends on a sealed node, not only those
			// with changes.
			f.wakeAll()
		}
	}
}

// publish hands each change to the subscribers of every prefix of its
// path, looking up only the lengths some stream watches.
func (f *watchFeed) publish(changes []fsm.Change) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range changes {
		c := &changes[i]
		for _, n := range f.lens {
			if n > len(c.Path) {
				break
			}
			for s := range f.subs[c.Path[:n]] {
				s.push(c)
			}
		}
	}
}

// lagAll switches every subscriber to catching up from the ring.
func (f *watchFeed) lagAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, set := range f.subs {
		for s := range set {
			s.mu.Lock()
			s.lagging = true
			clear(s.pending)
			s.pending = s.pending[:0]
			s.mu.Unlock()
			s.poke()
		}
	}
}

// wakeAll wakes every subscriber.
func (f *watchFeed) wakeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, set := range f.subs {
		for s := range set {
			s.poke()
		}
	}
}

// push queues c for s, or switches s to catching up when its queue is full.
func (s *subscriber) push(c *fsm.Change) {
	s.mu.Lock()
	switch {
	case s.lagging:
	case len(s.pending) >= subBuffer:
		s.lagging = true
		clear(s.pending)
		s.pending = s.pending[:0]
	default:
		s.pending = append(s.pending, *c)
	}
	s.mu.Unlock()
	s.poke()
}

// poke wakes s's stream, if it is not awake already.
func (s *subscriber) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take returns the changes queued for s, giving it buf (emptied) to queue
// the next ones in, and whether s must catch up from the ring first; from
// then on, changes are queued again.
func (s *subscriber) take(buf []fsm.Change) (changes []fsm.Change, lagging bool) {
	clear(buf)
	s.mu.Lock()
	defer s.mu.Unlock()
	changes, s.pending = s.pending, buf[:0]
	lagging, s.lagging = s.lagging, false
	return changes, lagging
}
