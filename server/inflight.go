package server

import (
	"container/list"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"coffer/replication"
)

// The request-byte budget of a node (security review: a storm of 256 KiB
// writes took a leader to 4.4 GB). Every call but a health check takes its
// weight from the budget before the gateway sees it and gives it back when
// its handler returns; a write keeps it until Raft is done with its command,
// since the command stays in the leader's memory until then even when the
// caller gave up. A call that finds the budget spent waits at most
// admitWait, in arrival order, and is then refused with OVERLOADED; the
// bytes of the calls waiting are bounded by the budget too, and past that a
// call is refused at once, before gRPC reads its message.
const (
	// DefaultMaxInflightBytes is a node's budget when the configuration
	// gives none.
	DefaultMaxInflightBytes = 64 << 20
	// callFloor is the least a call weighs: what it costs a node beyond its
	// message (its goroutine, stream and buffers), so that a flood of tiny
	// calls is bounded as well.
	callFloor = 4 << 10
	// admitWait bounds how long a call waits for its bytes (or the call's
	// deadline, when sooner).
	admitWait = 500 * time.Millisecond
)

// unmeteredPrefix starts the methods that take nothing from the budget:
// the health service answers a liveness probe from memory, and a probe
// refused under load would get a busy node restarted.
const unmeteredPrefix = "/grpc.health.v1.Health/"

// inflight is a node's budget of request bytes in flight. The zero value
// is not usable: make one with newInflight.
type inflight struct {
	limit int64

	// mu guards the fields below.
	mu sync.Mutex
	// wait is admitWait (shorter in tests).
	wait time.Duration
	// used is the bytes of admitted calls, queued the bytes of the calls
	// in waiters (each a *waiter, first come first served).
	used, queued int64
	waiters      list.List
	peak         int64
	refused      uint64
}

// waiter is a call waiting for n bytes; ready is closed once they are its.
type waiter struct {
	n     int64
	ready chan struct{}
}

// newInflight returns a budget of limit bytes.
func newInflight(limit int64) *inflight {
	return &inflight{limit: limit, wait: admitWait}
}

// InflightStats is a node's request-byte budget at one moment.
type InflightStats struct {
	// Limit is the budget (Config.MaxInflightBytes).
	Limit int64
	// InUse is the bytes admitted calls hold now, Peak the most they have
	// held since the node started; neither ever exceeds Limit.
	InUse, Peak int64
	// Refused counts the calls refused with OVERLOADED.
	Refused uint64
}

// stats returns the budget's figures.
func (b *inflight) stats() InflightStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return InflightStats{Limit: b.limit, InUse: b.used, Peak: b.peak, Refused: b.refused}
}

// acquire takes n bytes (at least callFloor, at most the whole budget),
// waiting up to b.wait or ctx's end, and returns the grant that gives
// them back; a call it cannot admit gets ErrOverloaded, or ctx's error.
func (b *inflight) acquire(ctx context.Context, n int64) (*grant, error) {
	n = min(max(n, callFloor), b.limit)
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.used+n <= b.limit {
		b.take(n)
		b.mu.Unlock()
		return newGrant(b, n), nil
	}
	if b.queued+n > b.limit {
		b.refused++
		b.mu.Unlock()
		return nil, b.overloaded()
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	elem := b.waiters.PushBack(w)
	b.queued += n
	wait := b.wait
	b.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	var err error
	timedOut := false
	select {
	case <-w.ready:
		return newGrant(b, n), nil
	case <-timer.C:
		err, timedOut = b.overloaded(), true
	case <-ctx.Done():
		err = ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Admitted while giving up: keep it.
		return newGrant(b, n), nil
	default:
	}
	b.waiters.Remove(elem)
	b.queued -= n
	if timedOut {
		b.refused++
	}
	// The calls behind it may fit now.
	b.admitWaiters()
	return nil, err
}

// take counts n more bytes in use; b.mu is held.
func (b *inflight) take(n int64) {
	b.used += n
	b.peak = max(b.peak, b.used)
}

// release gives n bytes back and admits the waiters that fit.
func (b *inflight) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.admitWaiters()
}

// admitWaiters admits waiting calls in arrival order while the first one
// fits; b.mu is held.
func (b *inflight) admitWaiters() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*waiter)
		if b.used+w.n > b.limit {
			return
		}
		b.take(w.n)
		b.queued -= w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// full reports whether a call would be refused at once: the calls waiting
// hold as many bytes as the budget.
func (b *inflight) full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.queued+callFloor > b.limit
}

// overloaded is the refusal of a call; it names the budget, which is no
// secret.
func (b *inflight) overloaded() error {
	return withMessage(ErrOverloaded, "server: this node holds %d MiB of requests in flight, all its -max-inflight-bytes allows: retry after a back-off, or on another node", b.limit>>20)
}

// tap refuses a new call before gRPC reads its message while the budget
// and its queue are spent: such a call would be refused anyway, after
// costing the node its message's bytes.
func (b *inflight) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if strings.HasPrefix(info.FullMethodName, unmeteredPrefix) || !b.full() {
		return ctx, nil
	}
	b.mu.Lock()
	b.refused++
	b.mu.Unlock()
	return ctx, toStatus(b.overloaded())
}

// unary admits a unary call by the size of its decoded request. Its grant
// travels in the context, so that a write can hold it until Raft is done
// with the command (see holdGrant).
func (b *inflight) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, unmeteredPrefix) {
		return handler(ctx, req)
	}
	var n int64
	if m, ok := req.(proto.Message); ok {
		n = int64(proto.Size(m))
	}
	g, err := b.acquire(ctx, n)
	if err != nil {
		return nil, toStatus(err)
	}
	defer g.release()
	return handler(context.WithValue(ctx, grantKey{}, g), req)
}

// stream admits a stream whose client sends messages (a snapshot upload)
// for the largest message it may send, held while it runs. A stream whose
// client sends one request (watch, snapshot save) takes nothing: its
// request is small, and a watch lives for hours.
func (b *inflight) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !info.IsClientStream || strings.HasPrefix(info.FullMethod, unmeteredPrefix) {
		return handler(srv, ss)
	}
	g, err := b.acquire(ss.Context(), MaxRequestSize)
	if err != nil {
		return toStatus(err)
	}
	defer g.release()
	return handler(srv, ss)
}

// grant is bytes taken from a budget, given back when the last holder
// releases it.
type grant struct {
	b    *inflight
	n    int64
	refs atomic.Int32
}

func newGrant(b *inflight, n int64) *grant {
	g := &grant{b: b, n: n}
	g.refs.Store(1)
	return g
}

// release drops one hold; the last gives the bytes back.
func (g *grant) release() {
	if g.refs.Add(-1) == 0 {
		g.b.release(g.n)
	}
}

type grantKey struct{}

// holdGrant makes the call's grant (if ctx carries one) outlive the call
// until Raft is done with the command proposed under the returned context:
// Apply may return when the caller gives up, while the command is still in
// the leader's memory.
func holdGrant(ctx context.Context) context.Context {
	g, ok := ctx.Value(grantKey{}).(*grant)
	if !ok {
		return ctx
	}
	g.refs.Add(1)
	return replication.WithApplyDone(ctx, g.release)
}

// minReplicationBatch is the fewest entries a replication batch may hold,
// whatever the request budget: fewer would cost small writes their
// batching.
const minReplicationBatch = 16

// replicationBatch bounds a replication batch (Raft's MaxAppendEntries:
// the entries of one AppendEntries call, of one leader's log write and of
// one state machine batch) to the request budget's worth of the largest
// entries, and to limit (0: replication's default). A follower back from
// downtime catches up one batch at a time, and holds each whole, decoded
// and again in its log store's write buffer; 256 entries of 1 MiB took a
// node past a 256 MiB memory limit every time it came back.
func replicationBatch(limit int, budget int64) int {
	if limit <= 0 {
		limit = replication.DefaultConfig().MaxAppendEntries
	}
	n := max(int(budget/MaxRequestSize), minReplicationBatch)
	return min(n, limit)
}
