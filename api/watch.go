package api

import (
	"context"
	"errors"
	"io"
	mrand "math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// Back-off between two reconnects of a watch: jittered, from
// watchBackoff doubling up to maxWatchBackoff; reset once a stream
// delivers an event.
const (
	watchBackoff    = 50 * time.Millisecond
	maxWatchBackoff = 2 * time.Second
)

// WatchEventType says what a WatchEvent reports.
type WatchEventType int

const (
	// WatchChange: the secret at Path changed at Index (Op says how).
	WatchChange WatchEventType = iota + 1
	// WatchProgress: nothing under the prefix changed up to Index.
	WatchProgress
	// WatchCompacted: the node no longer kept the changes after the last
	// index seen, so some may have been missed: re-read what you follow.
	// The watch goes on from Index.
	WatchCompacted
	// WatchFailed: the watch stopped for good with Err (a non-retryable
	// error such as PermissionDenied or InvalidArgument). It is the last
	// event before the channel closes.
	WatchFailed
)

func (t WatchEventType) String() string {
	switch t {
	case WatchChange:
		return "change"
	case WatchProgress:
		return "progress"
	case WatchCompacted:
		return "compacted"
	case WatchFailed:
		return "failed"
	default:
		return "unknown"
	}
}

// WatchEvent is one event of Client.Watch. It carries no secret data: read
// what changed.
type WatchEvent struct {
	Type  WatchEventType
	Index uint64
	// Path, Op, Version and Versions describe a WatchChange (op is put,
	// delete, undelete, destroy, put_metadata or delete_metadata).
	Path     string
	Op       string
	Version  uint64
	Versions []uint64
	// NodeID and Endpoint name the node that sent the event.
	NodeID   string
	Endpoint string
	// Err is set on WatchFailed.
	Err error
}

// Watch follows changes to secrets under prefix ("secret/" for all) after
// fromIndex (0: from now). Events arrive in index order on the returned
// channel. When a stream fails (node down, sealed, shutting down) the
// watch reconnects to another endpoint and resumes after the last index it
// saw, so no change is missed or repeated; when the node no longer has the
// changes since then it delivers a WatchCompacted event and goes on from
// the event's index. The watch ends, and the channel closes, when ctx ends,
// when the client closes, or after a WatchFailed event. A caller that
// stops reading holds the stream back (no event is dropped); cancel ctx to
// stop.
func (c *Client) Watch(ctx context.Context, prefix string, fromIndex uint64) (<-chan WatchEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan WatchEvent, 16)
	ok := c.goBackground(func() {
		defer close(ch)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(c.bg, cancel)
		defer stop()
		c.watchLoop(wctx, prefix, fromIndex, func(ev WatchEvent) bool {
			select {
			case ch <- ev:
				return true
			case <-wctx.Done():
				return false
			}
		})
	})
	if !ok {
		return nil, ErrClosed
	}
	return ch, nil
}

// watchLoop runs one watch until ctx ends, emit returns false or a
// non-retryable error (emitted as WatchFailed) ends it.
func (c *Client) watchLoop(ctx context.Context, prefix string, from uint64, emit func(WatchEvent) bool) {
	failures := 0
	var last *endpoint
	for ctx.Err() == nil {
		ep := c.watchEndpoint(last)
		last = ep
		received, err := c.watchOnce(ctx, ep, prefix, &from, emit)
		if ctx.Err() != nil || errors.Is(err, errStopWatch) {
			return
		}
		if received {
			failures = 0
		}
		if err == nil {
			continue // compacted: resume at once from the new index
		}
		if !watchRetryable(err) {
			emit(WatchEvent{Type: WatchFailed, Err: err, Endpoint: ep.addr})
			return
		}
		if endpointDown(err, ep) {
			c.markDown(ep, err)
		}
		d := min(watchBackoff<<min(failures, 10), maxWatchBackoff)
		failures++
		d = d/2 + mrand.N(d/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watchEndpoint picks the endpoint for the next stream: the next healthy
// one round robin, another one than last when there is a choice.
func (c *Client) watchEndpoint(last *endpoint) *endpoint {
	eps, _ := c.candidates(policy{})
	for _, ep := range eps {
		if ep != last {
			return ep
		}
	}
	return eps[0]
}

// watchRetryable reports whether a watch stream's failure is worth a
// reconnect: anything but an answer that another node would give too.
func watchRetryable(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated,
		codes.FailedPrecondition, codes.NotFound, codes.Unimplemented:
		return false
	}
	return true
}

// watchOnce runs one stream on ep from *from, advancing *from with every
// event. It returns nil after a COMPACTED event (the server ends the
// stream), and the stream's error otherwise. received reports whether any
// event arrived.
func (c *Client) watchOnce(ctx context.Context, ep *endpoint, prefix string, from *uint64, emit func(WatchEvent) bool) (received bool, err error) {
	if err := c.ready(ctx, ep); err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancel(c.withToken(ctx))
	defer cancel()
	stream, err := pb.NewKVClient(ep.cc).Watch(sctx, &pb.WatchRequest{Prefix: prefix, FromIndex: *from})
	if err != nil {
		return false, c.explain(ctx, ep, err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The server ended the stream without a reason: resume
			// elsewhere.
			return received, status.Error(codes.Unavailable, "watch stream ended by the server: reconnecting")
		}
		if err != nil {
			if !received {
				err = c.explain(ctx, ep, err)
			}
			return received, err
		}
		received = true
		out := WatchEvent{
			Index: ev.Index, Path: ev.Path, Op: ev.Op, Version: ev.Version,
			Versions: ev.Versions, NodeID: ev.NodeId, Endpoint: ep.addr,
		}
		switch ev.Type {
		case pb.WatchEvent_CHANGE:
			out.Type = WatchChange
			*from = max(*from, ev.Index)
		case pb.WatchEvent_PROGRESS:
			out.Type = WatchProgress
			*from = max(*from, ev.Index)
		case pb.WatchEvent_COMPACTED:
			out.Type = WatchCompacted
			*from = ev.Index
		default:
			continue
		}
		ep.learn(ev.NodeId, ev.Index)
		if !emit(out) {
			return received, errStopWatch
		}
		if out.Type == WatchCompacted {
			return received, nil
		}
	}
}
