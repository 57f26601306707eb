package server

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// clusterService is the node-to-node API (read index for follower reads).
type clusterService struct {
	pb.UnimplementedClusterServer
	s *Server
}

// ReadIndex answers a follower's read-index request: the index the
// follower must have applied before it answers a read from its own state.
// It is this leader's applied index, which covers every write the leader
// has acknowledged (noop and barrier entries never reach the FSM, so the
// commit index could name an entry a follower's FSM never reports).
func (c *clusterService) ReadIndex(ctx context.Context, req *pb.ReadIndexRequest) (*pb.ReadIndexResponse, error) {
	s := c.s
	if !s.raft.IsLeader() {
		return nil, s.notLeaderError()
	}
	if !s.raft.ReadyLeader() {
		return nil, withMessage(replication.ErrNoLeader, "node %s became leader and is still applying earlier entries: retry shortly", s.cfg.NodeID)
	}
	if req.Linearizable {
		if err := s.raft.VerifyLeader(ctx); err != nil {
			return nil, err
		}
	}
	return &pb.ReadIndexResponse{Index: s.fsm.AppliedIndex(), LeaderId: s.cfg.NodeID}, nil
}

// readIndex asks the leader for a read index on behalf of the caller (with
// the caller's token) and waits until this node has applied it. Concurrent
// callers with the same token share one request to the leader (see
// readRounds).
func (s *Server) readIndex(ctx context.Context, linearizable bool) error {
	in, _ := metadata.FromIncomingContext(ctx)
	key := roundKey{linearizable: linearizable}
	if auth := in.Get("authorization"); len(auth) == 1 {
		key.auth = auth[0]
	}
	r, start := s.rounds.join(key)
	if start {
		go s.runReadRounds(key)
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
	if err := s.fsm.WaitApplied(ctx, index); err != nil {
		return withMessage(ErrCatchingUp, "node %s could not catch up to the leader's index %d in time (at %d): retry, or read with -consistency=stale", s.cfg.NodeID, index, s.fsm.AppliedIndex())
	}
	return nil
}

// readIndexTimeout bounds one read-index request to the leader.
const readIndexTimeout = 3 * time.Second

// askReadIndex sends one read-index request to the leader.
func (s *Server) askReadIndex(key roundKey) (uint64, error) {
	id, addr := s.leader()
	if addr == "" || id == s.cfg.NodeID {
		return 0, s.notLeaderError()
	}
	conn, err := s.peers.conn(addr)
	if err != nil {
		return 0, err
	}
	out := metadata.Pairs(forwardedKey, s.cfg.NodeID)
	if key.auth != "" {
		out.Set("authorization", key.auth)
	}
	// Not the node's stop context: a graceful stop lets the reads in
	// flight finish, and they may be waiting for this round.
	ctx, cancel := context.WithTimeout(context.Background(), readIndexTimeout)
	defer cancel()
	var resp *pb.ReadIndexResponse
	err = s.whileLeader(metadata.NewOutgoingContext(ctx, out), id, func(cctx context.Context) error {
		var err error
		resp, err = pb.NewClusterClient(conn).ReadIndex(cctx, &pb.ReadIndexRequest{Linearizable: key.linearizable})
		return err
	})
	if err != nil {
		if s.stopCtx.Err() != nil {
			return 0, errShuttingDown // its connections are closing
		}
		if code := status.Code(err); code == codes.Canceled || code == codes.DeadlineExceeded {
			return 0, withMessage(ErrLeaderUnreachable, "the leader did not answer a read-index request within %s: retry, or read with -consistency=stale", readIndexTimeout)
		}
		return 0, leaderError(addr, err)
	}
	return resp.Index, nil
}

// runReadRounds sends the rounds of one key to the leader, one after the
// other, until no reader waits.
func (s *Server) runReadRounds(key roundKey) {
	for {
		r := s.rounds.take(key)
		if r == nil {
			return
		}
		r.index, r.err = s.askReadIndex(key)
		close(r.done)
	}
}

// readRounds coalesces the read-index requests of concurrent followers'
// readers. A reader joins the round that has not started yet; a round
// starts (one request to the leader) when the previous one ends, and
// answers every reader that joined it. Each reader therefore gets an index
// the leader read after the reader arrived, which is what makes the read
// linearizable, and a busy follower sends one request per leader round
// trip instead of one per read. Rounds are kept apart by token (the leader
// checks the token of the request) and by consistency.
type readRounds struct {
	mu     sync.Mutex
	queues map[roundKey]*roundQueue
}

// roundKey says which readers may share a round.
type roundKey struct {
	auth         string
	linearizable bool
}

// roundQueue is the round still open for readers of one key, and whether a
// runner is sending rounds for it.
type roundQueue struct {
	next    *readRound
	running bool
}

// readRound is one request to the leader; done is closed once index or err
// is set.
type readRound struct {
	done  chan struct{}
	index uint64
	err   error
}

// join returns the open round of key, and start true when no runner is
// sending rounds for key: the caller must then start one.
func (rr *readRounds) join(key roundKey) (r *readRound, start bool) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.queues == nil {
		rr.queues = make(map[roundKey]*roundQueue)
	}
	q := rr.queues[key]
	if q == nil {
		q = &roundQueue{}
		rr.queues[key] = q
	}
	if q.next == nil {
		q.next = &readRound{done: make(chan struct{})}
	}
	start = !q.running
	q.running = true
	return q.next, start
}

// take closes the open round of key to new readers and returns it, or
// returns nil, and forgets key, when no reader waits.
func (rr *readRounds) take(key roundKey) *readRound {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	q := rr.queues[key]
	r := q.next
	q.next = nil
	if r == nil {
		delete(rr.queues, key)
	}
	return r
}
