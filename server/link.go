package server

import (
	"context"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	pb "coffer/api/cofferpb"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"coffer/api/route"
	"coffer/replication"
)

// leaderLink is this node's link to the leader and its peers: forwarding
// of leader-only calls, the peer connections, read-index rounds for
// follower reads and status calls to peers. It is one component, so that
// every call to another node is made, watched and torn down the same way.
type leaderLink struct {
	nodeID string
	// self is this node's advertised API address.
	self   string
	raft   linkRaft
	state  appliedState
	conns  peerConns
	rounds readRounds
	logger hclog.Logger
	// stopCtx ends when the node stops.
	stopCtx context.Context
	// metrics counts forwarded calls and read-index rounds.
	metrics *nodeMetrics
	// leaderWaits counts the Status calls waiting for a new leader
	// (awaitOtherLeader).
	leaderWaits atomic.Int32
}

// IsLeader reports whether this node leads.
func (l *leaderLink) IsLeader() bool { return l.raft.IsLeader() }

// linkRaft is what the link needs of the Raft node: who leads, and a
// context that ends when this node stops following a leader.
type linkRaft interface {
	IsLeader() bool
	Leader() (id, addr string)
	Following() (leaderID string, changed <-chan struct{})
	FollowingContext(parent context.Context, leaderID string) (context.Context, context.CancelFunc)
	MemberByID(id string) (replication.Member, bool)
}

// appliedState is the state machine's applied index and the wait for it.
type appliedState interface {
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
}

// forwardedKey marks a call a follower passed on to the leader, so that the
// receiving node never forwards it again (one hop).
const forwardedKey = "x-coffer-forwarded-by"

// forwardHold bounds how long a follower waits for a leader to appear
// before it answers Unavailable ("no leader").
const forwardHold = 3 * time.Second

// whileLeader runs call under a context that also ends as soon as this
// node stops following leader id (replication's FollowingContext: an
// event, not a poll), and then returns Unavailable at once. A leader cut
// off by a partition may swallow packets without an answer: waiting out
// the call's deadline there cost writes and default reads on followers 3 s
// in the docker chaos suite, while the followers had elected a new leader
// within a second.
func (l *leaderLink) whileLeader(ctx context.Context, id string, call func(context.Context) error) error {
	cctx, cancel := l.raft.FollowingContext(ctx, id)
	defer cancel()
	err := call(cctx)
	if err != nil && ctx.Err() == nil && cctx.Err() != nil {
		return withMessage(replication.ErrNoLeader, "leader %s was replaced while the call was in flight: retry", id)
	}
	return err
}

// A Status call may wait for a new leader (awaitOtherLeader): for at most
// maxLeaderWait, and while no more than maxLeaderWaits others wait on this
// node; past that it is answered at once. Status needs no token, so a
// stranger's calls must not hold the node's goroutines for long.
const (
	maxLeaderWait  = 10 * time.Second
	maxLeaderWaits = 4096
)

// awaitOtherLeader returns once this node follows a leader other than
// notID (a leader, not an election in progress), or when d (at most
// maxLeaderWait) has passed, ctx has ended or the node stops. It is an
// event (Following's channel), not a poll: a client whose write is
// outstanding on notID learns of its successor the moment this node does.
func (l *leaderLink) awaitOtherLeader(ctx context.Context, notID string, d time.Duration) {
	if notID == "" || d <= 0 {
		return
	}
	if l.leaderWaits.Add(1) > maxLeaderWaits {
		l.leaderWaits.Add(-1)
		return
	}
	defer l.leaderWaits.Add(-1)
	t := time.NewTimer(min(d, maxLeaderWait))
	defer t.Stop()
	for {
		id, changed := l.raft.Following()
		if id != "" && id != notID {
			return
		}
		select {
		case <-changed:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		case <-l.stopCtx.Done():
			return
		}
	}
}

// leader returns the id and API address of the leader this node follows,
// from one reading of the leader (so a call to addr can be watched with
// whileLeader(id)); addr is "" while none is known or gossip has not
// brought its address yet.
func (l *leaderLink) leader() (id, addr string) {
	id, _ = l.raft.Following()
	if id == "" {
		return "", ""
	}
	if id == l.nodeID {
		return id, l.self
	}
	m, ok := l.raft.MemberByID(id)
	if !ok {
		return id, ""
	}
	return id, m.APIAddr
}

// leaderKnown reports whether this node follows a leader other than
// itself (a call forwarded now has somewhere to go).
func (l *leaderLink) leaderKnown() bool {
	id, _ := l.raft.Following()
	return id != "" && id != l.nodeID
}

// wasForwarded reports whether the call came from another node.
func wasForwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(forwardedKey)) > 0
}

// forward sends a leader-only call to the leader and returns its answer
// with done set. An idempotent call (one with a request id) in flight to a
// leader this node stops following is abandoned and sent again to the next
// leader; any other call is sent once. While no leader is known it waits, with jittered retries,
// up to forwardHold (or the call's deadline); then it answers Unavailable.
// When this node becomes the leader meanwhile, it returns done false: the
// caller serves the call itself.
func (l *leaderLink) forward(ctx context.Context, r route.Route, req proto.Message) (reply any, done bool, err error) {
	if wasForwarded(ctx) {
		// One hop only: the node that sent it believed we lead.
		return nil, true, l.notLeaderError()
	}
	defer func() {
		if done {
			l.metrics.forwardedCall(r.Method, err)
		}
	}()
	if r.Idempotent {
		// The follower's own resends must not write twice.
		route.EnsureRequestID(req)
	}
	method := r.Method
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.Pairs(forwardedKey, l.nodeID)
	if auth := in.Get("authorization"); len(auth) > 0 {
		out.Set("authorization", auth...)
	}
	// The leader checks bindings to client addresses (bound CIDRs) against
	// the client's address, not this node's.
	if addr, ok := peerAddr(ctx); ok {
		out.Set(clientAddrKey, addr.String())
	}
	for k, v := range forwardMetadata(ctx) {
		out.Set(k, v)
	}
	octx := metadata.NewOutgoingContext(ctx, out)

	hold, cancel := context.WithTimeout(ctx, forwardHold)
	defer cancel()
	var lastErr error = l.notLeaderError()
	for attempt := 0; ; attempt++ {
		if l.raft.IsLeader() {
			return nil, false, nil
		}
		_, changed := l.raft.Following()
		id, addr := l.leader()
		if addr != "" && id != l.nodeID {
			conn, err := l.conns.conn(addr)
			if err != nil {
				return nil, true, err
			}
			reply, err := r.NewResponse()
			if err != nil {
				return nil, true, err
			}
			invoke := func(cctx context.Context) error { return conn.Invoke(cctx, method, req, reply) }
			if r.Idempotent {
				err = l.whileLeader(octx, id, invoke)
			} else {
				err = invoke(octx)
			}
			if err == nil {
				l.awaitApplied(ctx, reply)
				return reply, true, nil
			}
			if ctx.Err() != nil {
				return nil, true, ctx.Err()
			}
			lastErr = leaderError(addr, err)
			if !resendable(r, lastErr) {
				return nil, true, lastErr
			}
			l.logger.Debug("forward to leader failed, retrying", "method", method, "leader", addr, "error", err)
		}
		// Wait for the next leader (an event from Raft) or a short
		// pause, within the hold time.
		nextTry(hold, changed, attempt)
		if hold.Err() != nil {
			if ctx.Err() != nil {
				return nil, true, ctx.Err()
			}
			if unavailable(lastErr) {
				return nil, true, lastErr
			}
			return nil, true, withMessage(replication.ErrNoLeader, "no leader elected within %s: retry, or check that a quorum of nodes is up", forwardHold)
		}
	}
}

// forwardApplyWait bounds how long a follower waits to apply a write it
// forwarded before it answers.
const forwardApplyWait = 2 * time.Second

// awaitApplied waits until this node has applied the write the leader
// answered (its index or raft_index), so that the client's next call to
// this node sees it: a token revoked through a follower no longer opens
// it, a secret written through it reads back. A node that lags further
// answers anyway: the client can still pass the index (min_index,
// X-Vault-Index).
func (l *leaderLink) awaitApplied(ctx context.Context, reply proto.Message) {
	idx := replyIndex(reply)
	if idx == 0 || l.state.AppliedIndex() >= idx {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, forwardApplyWait)
	defer cancel()
	if err := l.state.WaitApplied(wctx, idx); err != nil {
		l.logger.Debug("answering a forwarded write before applying it", "index", idx, "applied", l.state.AppliedIndex())
	}
}

// replyIndex is the Raft index a write's answer carries in its index or
// raft_index field (0 when it has none).
func replyIndex(m proto.Message) uint64 {
	switch r := m.(type) {
	case interface{ GetIndex() uint64 }:
		return r.GetIndex()
	case interface{ GetRaftIndex() uint64 }:
		return r.GetRaftIndex()
	}
	return 0
}

// leaderError is the error of a call this node made to the leader at addr:
// the leader's own answer (a status with a reason) passes on unchanged; a
// failure to reach it becomes ErrLeaderUnreachable, so that the client
// does not take it for a failure to reach this node.
func leaderError(addr string, err error) error {
	if hasReason(err) {
		return err
	}
	if st, ok := status.FromError(err); ok {
		return withMessage(ErrLeaderUnreachable, "the leader at %s could not be reached: %s: retry", addr, st.Message())
	}
	return err
}

// resendable reports whether a forwarded call that failed with err may be
// sent again: an idempotent one after any Unavailable answer (its request
// id makes a second send return the first result); any other only when
// the answer proves it was not acted on (the node was not the leader, or
// sealed, or stopping), never after a lost answer or a commit that may
// have happened: an init sent twice would lose its key shares.
func resendable(r route.Route, err error) bool {
	if r.Idempotent {
		return unavailable(err)
	}
	return notActedOn(err)
}

// notActedOn reports whether err is an answer that proves the node did
// not act on the call: it was not the leader, or sealed, or stopping.
func notActedOn(err error) bool {
	switch reasonOf(toStatus(err)) {
	case pb.ErrorReason_NOT_LEADER, pb.ErrorReason_NO_LEADER, pb.ErrorReason_SEALED, pb.ErrorReason_SHUTTING_DOWN:
		return true
	}
	return false
}

// unavailable reports whether err becomes an Unavailable status: another
// node, or this one a moment later, may answer.
func unavailable(err error) bool { return status.Code(toStatus(err)) == codes.Unavailable }

// notLeaderError says who the leader is, when known.
func (l *leaderLink) notLeaderError() error {
	id, _ := l.raft.Leader()
	if id == "" {
		return withMessage(replication.ErrNoLeader, "no leader is known right now: retry shortly, or check that a quorum of nodes is up")
	}
	return withMessage(replication.ErrNotLeader, "node %s is not the leader (%s is): send the request to the leader", l.nodeID, id)
}

// readIndex asks the leader for a read index on behalf of the caller (with
// the caller's token) and waits until this node has applied it. Concurrent
// callers with the same token share one request to the leader (see
// readRounds).
func (l *leaderLink) readIndex(ctx context.Context, linearizable bool) error {
	in, _ := metadata.FromIncomingContext(ctx)
	key := roundKey{linearizable: linearizable}
	if auth := in.Get("authorization"); len(auth) == 1 {
		key.auth = auth[0]
	}
	r, start := l.rounds.join(key)
	if start {
		go l.runReadRounds(key)
	}
	var index uint64
	select {
	case <-r.done:
		if r.err != nil {
			return r.err
		}
		index = r.index
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := l.state.WaitApplied(ctx, index); err != nil {
		return withMessage(ErrCatchingUp, "node %s could not catch up to the leader's index %d in time (at %d): retry, or read with -consistency=stale", l.nodeID, index, l.state.AppliedIndex())
	}
	return nil
}

// readIndexTimeout bounds one read-index request to the leader.
const readIndexTimeout = 3 * time.Second

// askReadIndex asks the leader for a read index. Two moments of a leader
// change are waited out, within readIndexTimeout, rather than answered
// with an error: a leader Raft knows whose address gossip has not brought
// yet (a node that has just restarted hears the leader's heartbeats
// first), and an answer that proves the node asked no longer leads (or is
// sealed or stopping): it asks again at the next leader. With no leader
// known, or one that cannot be reached, it answers at once, so that the
// client asks another node.
func (l *leaderLink) askReadIndex(key roundKey) (uint64, error) {
	// Not the node's stop context: a graceful stop lets the reads in
	// flight finish, and they may be waiting for this round.
	ctx, cancel := context.WithTimeout(context.Background(), readIndexTimeout)
	defer cancel()
	out := metadata.Pairs(forwardedKey, l.nodeID)
	if key.auth != "" {
		out.Set("authorization", key.auth)
	}
	octx := metadata.NewOutgoingContext(ctx, out)
	var lastErr error
	for attempt := 0; ; attempt++ {
		id, addr := l.leader()
		_, changed := l.raft.Following()
		if id == l.nodeID {
			return 0, l.notLeaderError() // it leads now: the caller asks again
		}
		if addr == "" {
			if known, _ := l.raft.Leader(); known == "" || known == l.nodeID {
				return 0, l.notLeaderError()
			}
		} else {
			conn, err := l.conns.conn(addr)
			if err != nil {
				return 0, err
			}
			var resp *pb.ReadIndexResponse
			err = l.whileLeader(octx, id, func(cctx context.Context) error {
				var err error
				resp, err = pb.NewClusterClient(conn).ReadIndex(cctx, &pb.ReadIndexRequest{Linearizable: key.linearizable})
				return err
			})
			switch {
			case err == nil:
				return resp.Index, nil
			case l.stopCtx.Err() != nil:
				return 0, errShuttingDown // its connections are closing
			case ctx.Err() != nil:
				return 0, withMessage(ErrLeaderUnreachable, "the leader did not answer a read-index request within %s: retry, or read with -consistency=stale", readIndexTimeout)
			}
			if lastErr = leaderError(addr, err); !notActedOn(lastErr) {
				return 0, lastErr
			}
		}
		nextTry(ctx, changed, attempt)
		if ctx.Err() != nil {
			if lastErr != nil {
				return 0, lastErr
			}
			return 0, l.notLeaderError()
		}
	}
}

// nextTry waits before another try at the leader: until this node follows
// another leader (changed), a short jittered pause passes (10-120 ms,
// longer with each attempt: gossip brings a leader's address, and a
// leader its readiness, without an event to wait on), or ctx ends.
func nextTry(ctx context.Context, changed <-chan struct{}, attempt int) {
	t := time.NewTimer(time.Duration(10+mrand.IntN(20)) * time.Millisecond << min(attempt, 2))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-changed:
	case <-t.C:
	}
}

// runReadRounds sends the rounds of one key to the leader, one after the
// other, until no reader waits.
func (l *leaderLink) runReadRounds(key roundKey) {
	for {
		r := l.rounds.take(key)
		if r == nil {
			return
		}
		began := time.Now()
		r.index, r.err = l.askReadIndex(key)
		l.metrics.readRound(time.Since(began), r.err)
		close(r.done)
	}
}

// leaderStatus asks the current leader for its status.
func (l *leaderLink) leaderStatus(ctx context.Context) (*pb.StatusResponse, error) {
	id, addr := l.leader()
	if addr == "" || id == l.nodeID {
		return nil, l.notLeaderError()
	}
	return l.peerStatus(ctx, addr)
}

// peerStatus asks the node at API address addr for its status, within a
// second. The call is marked as forwarded, so the peer answers from its
// own state and never asks on.
func (l *leaderLink) peerStatus(ctx context.Context, addr string) (*pb.StatusResponse, error) {
	conn, err := l.conns.conn(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs(forwardedKey, l.nodeID))
	return pb.NewSysClient(conn).Status(ctx, &pb.StatusRequest{})
}

// leaderRetry is the pause before asking a known leader again after it
// did not answer.
const leaderRetry = 100 * time.Millisecond

// untilLeaderAnswers calls f until it succeeds or ctx ends, and returns
// f's last error. Between two calls it waits for the leader to change (no
// leader known yet, or another one elected), or leaderRetry when the same
// leader did not answer.
func (l *leaderLink) untilLeaderAnswers(ctx context.Context, f func() error) error {
	for {
		id, changed := l.raft.Following()
		err := f()
		if err == nil {
			return nil
		}
		var retry <-chan time.Time
		var t *time.Timer
		if id != "" {
			t = time.NewTimer(leaderRetry)
			retry = t.C
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-retry:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return err
		}
	}
}
