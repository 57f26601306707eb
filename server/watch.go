package server

import (
	"errors"
	"fmt"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/seal"
)

// watchProgressEvery is how often an idle watch sends a progress event, so
// that the client can resume close to the present after a reconnect.
const watchProgressEvery = 5 * time.Second

// Watch streams changes under a prefix as this node applies them.
func (k *kvServer) Watch(req *pb.WatchRequest, stream pb.KV_WatchServer) error {
	prefix := req.Prefix
	if prefix == "" {
		prefix = DefaultMount
	}
	if _, _, err := splitMount(prefix); err != nil {
		return err
	}
	if strings.ContainsRune(prefix, 0) || len(prefix) > MaxPathLen {
		return invalidf("invalid watch prefix: it must be a path prefix under %s of at most %d bytes", DefaultMount, MaxPathLen)
	}
	ctx := stream.Context()
	from := req.FromIndex
	if from == 0 {
		from = k.store.AppliedIndex()
		if err := stream.Send(&pb.WatchEvent{Type: pb.WatchEvent_PROGRESS, Index: from, NodeId: k.nodeID}); err != nil {
			return err
		}
	}
	guard, _ := ctx.Value(streamGuardKey{}).(*streamGuard)
	w := &watchStream{k: k, stream: stream, guard: guard, prefix: prefix, from: from}
	feed := k.watchFeed()
	sub := feed.subscribe(prefix)
	defer feed.unsubscribe(sub)
	// One timer for the stream's life: a stream that sent nothing for
	// watchProgressEvery sends a progress event (and checks its token).
	timer := time.NewTimer(watchProgressEvery)
	defer timer.Stop()
	lastSent := time.Now()
	idle := false
	var buf []fsm.Change
	for {
		if k.keys.Sealed() {
			return seal.ErrSealed
		}
		// Every change up to seen was queued for this stream before
		// take, or take says to catch up from the ring.
		seen := feed.index.Load()
		changes, lagging := sub.take(buf)
		sent, compacted := 0, false
		var err error
		if lagging {
			sent, compacted, err = w.catchUp()
		} else {
			sent, err = w.send(changes)
			w.from = max(w.from, seen)
		}
		buf = nil
		if cap(changes) <= 16 {
			buf = changes // reused; a burst's larger array is let go
		}
		if err != nil {
			return err
		}
		if compacted {
			return nil // the client resumes from the COMPACTED event's index
		}
		now := time.Now()
		if sent > 0 {
			lastSent, idle = now, false
		}
		if idle {
			if guard != nil {
				if err := guard.valid(); err != nil {
					return err
				}
			}
			// Idle: tell the client how far it has seen.
			if err := stream.Send(&pb.WatchEvent{Type: pb.WatchEvent_PROGRESS, Index: w.from, NodeId: k.nodeID}); err != nil {
				return err
			}
			lastSent, idle = now, false
			timer.Reset(watchProgressEvery)
		}
		select {
		case <-sub.wake:
		case <-timer.C:
			if wait := watchProgressEvery - time.Since(lastSent); wait > 0 {
				timer.Reset(wait) // it sent since: not idle yet
			} else {
				idle = true
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-feed.closed: // the node stops (stopCtx), or its FSM closed
			return fmt.Errorf("%w: node is shutting down", errShuttingDown)
		}
	}
}

// watchFeed returns the node's change feed, made on first use.
func (k *kvServer) watchFeed() *watchFeed {
	k.feedOnce.Do(func() { k.feed = newWatchFeed(k.store, k.stopCtx, k.keys.Sealed) })
	return k.feed
}

// watchStream is one Watch call's state.
type watchStream struct {
	k      *kvServer
	stream pb.KV_WatchServer
	guard  *streamGuard
	prefix string
	// from is the index up to which the client has seen every change.
	from uint64
}

// catchUp sends the changes after w.from from the ring, as a stream that
// resumes does. A ring that no longer holds them gets the client a
// COMPACTED event, after which the stream ends (compacted).
func (w *watchStream) catchUp() (sent int, compacted bool, err error) {
	for {
		applied := w.k.store.AppliedIndex()
		changes, err := w.k.store.ChangesSince(w.from, w.prefix, 256)
		if errors.Is(err, fsm.ErrCompacted) {
			return sent, true, w.stream.Send(&pb.WatchEvent{Type: pb.WatchEvent_COMPACTED, Index: applied, NodeId: w.k.nodeID})
		}
		if err != nil {
			return sent, false, err
		}
		n, err := w.send(changes)
		sent += n
		if err != nil {
			return sent, false, err
		}
		if len(changes) == 256 {
			continue // more to send
		}
		w.from = max(w.from, applied)
		return sent, false, nil
	}
}

// send sends the changes after w.from that the stream's token may see.
func (w *watchStream) send(changes []fsm.Change) (int, error) {
	if len(changes) == 0 || changes[len(changes)-1].Index <= w.from {
		return 0, nil
	}
	if w.guard != nil {
		// A token revoked or expired since the watch began ends it.
		if err := w.guard.valid(); err != nil {
			return 0, err
		}
	}
	sent := 0
	for i := range changes {
		c := &changes[i]
		if c.Index <= w.from {
			continue // already sent (read from the ring as well)
		}
		w.from = c.Index
		if w.guard != nil && !w.guard.allowed(c.Path) {
			// Outside what the token may list (a longer name that
			// shares the prefix, a denied sub-tree): not its to see.
			continue
		}
		if err := w.stream.Send(&pb.WatchEvent{
			Type: pb.WatchEvent_CHANGE, Index: c.Index, Path: c.Path, Op: c.Op,
			Version: c.Version, Versions: c.Versions, NodeId: w.k.nodeID,
		}); err != nil {
			return sent, err
		}
		sent++
	}
	return sent, nil
}
