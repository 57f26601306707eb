package server

import (
	"context"
	mrand "math/rand/v2"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/replication"
)

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
func (s *Server) whileLeader(ctx context.Context, id string, call func(context.Context) error) error {
	cctx, cancel := s.raft.FollowingContext(ctx, id)
	defer cancel()
	err := call(cctx)
	if err != nil && ctx.Err() == nil && cctx.Err() != nil {
		return withMessage(replication.ErrNoLeader, "leader %s was replaced while the call was in flight: retry", id)
	}
	return err
}

// leader returns the id and API address of the leader this node follows,
// from one reading of the leader (so a call to addr can be watched with
// whileLeader(id)); addr is "" while none is known or gossip has not
// brought its address yet.
func (s *Server) leader() (id, addr string) {
	id, _ = s.raft.Following()
	if id == "" {
		return "", ""
	}
	if id == s.cfg.NodeID {
		return id, s.advertisedAPI()
	}
	m, ok := s.raft.MemberByID(id)
	if !ok {
		return id, ""
	}
	return id, m.APIAddr
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
func (s *Server) forward(ctx context.Context, r route.Route, req proto.Message) (reply any, done bool, err error) {
	if wasForwarded(ctx) {
		// One hop only: the node that sent it believed we lead.
		return nil, true, s.notLeaderError()
	}
	if r.Idempotent {
		// The follower's own resends must not write twice.
		route.EnsureRequestID(req)
	}
	method := r.Method
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.Pairs(forwardedKey, s.cfg.NodeID)
	if auth := in.Get("authorization"); len(auth) > 0 {
		out.Set("authorization", auth...)
	}
	octx := metadata.NewOutgoingContext(ctx, out)

	hold, cancel := context.WithTimeout(ctx, forwardHold)
	defer cancel()
	var lastErr error = s.notLeaderError()
	for attempt := 0; ; attempt++ {
		if s.raft.IsLeader() {
			return nil, false, nil
		}
		if id, addr := s.leader(); addr != "" && id != s.cfg.NodeID {
			conn, err := s.peers.conn(addr)
			if err != nil {
				return nil, true, err
			}
			reply, err := r.NewResponse()
			if err != nil {
				return nil, true, err
			}
			invoke := func(cctx context.Context) error { return conn.Invoke(cctx, method, req, reply) }
			if r.Idempotent {
				err = s.whileLeader(octx, id, invoke)
			} else {
				err = invoke(octx)
			}
			if err == nil {
				return reply, true, nil
			}
			if ctx.Err() != nil {
				return nil, true, ctx.Err()
			}
			lastErr = leaderError(addr, err)
			if !resendable(r, lastErr) {
				return nil, true, lastErr
			}
			s.logger.Debug("forward to leader failed, retrying", "method", method, "leader", addr, "error", err)
		}
		// No leader, or it could not take the call: poll again after a
		// short jittered pause (10-120 ms; the leader's address is known
		// locally from Raft and gossip, so a poll costs nothing), within
		// the hold time.
		pause := time.Duration(10+mrand.IntN(20)) * time.Millisecond << min(attempt, 2)
		t := time.NewTimer(pause)
		select {
		case <-hold.Done():
			t.Stop()
			if ctx.Err() != nil {
				return nil, true, ctx.Err()
			}
			if unavailable(lastErr) {
				return nil, true, lastErr
			}
			return nil, true, withMessage(replication.ErrNoLeader, "no leader elected within %s: retry, or check that a quorum of nodes is up", forwardHold)
		case <-t.C:
		}
	}
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
	switch reasonOf(toStatus(err)) {
	case pb.ErrorReason_NOT_LEADER, pb.ErrorReason_NO_LEADER, pb.ErrorReason_SEALED, pb.ErrorReason_SHUTTING_DOWN:
		return true
	}
	return false
}

// unavailable reports whether err becomes an Unavailable status: another
// node, or this one a moment later, may answer.
func unavailable(err error) bool { return status.Code(toStatus(err)) == codes.Unavailable }

// peerConns keeps one gRPC connection per peer API address. Once closed
// (the node stops) it opens no more: a call still in flight then would
// leave a connection nobody closes.
type peerConns struct {
	dial   func(ctx context.Context, addr string) (net.Conn, error)
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// conn returns the connection to addr, opening it on first use; after
// close it fails with errShuttingDown.
func (p *peerConns) conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errShuttingDown
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	if p.conns == nil {
		p.conns = make(map[string]*grpc.ClientConn)
	}
	// NewClient only fails on a malformed target; a gossiped address that
	// is malformed then fails every call with Unavailable.
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(p.dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	)
	if err != nil {
		c, _ = grpc.NewClient("passthrough:///invalid-address", grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.closed = true
}
