package server

import (
	"context"

	"google.golang.org/grpc/metadata"

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
	if !s.leaderReady.Load() {
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
// the caller's token) and waits until this node has applied it.
func (s *Server) readIndex(ctx context.Context, linearizable bool) error {
	addr := s.raft.LeaderAPIAddr()
	if addr == "" {
		return s.notLeaderError()
	}
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.Pairs(forwardedKey, s.cfg.NodeID)
	if auth := in.Get("authorization"); len(auth) > 0 {
		out.Set("authorization", auth...)
	}
	conn, err := s.peers.conn(addr)
	if err != nil {
		return err
	}
	resp, err := pb.NewClusterClient(conn).ReadIndex(metadata.NewOutgoingContext(ctx, out), &pb.ReadIndexRequest{Linearizable: linearizable})
	if err != nil {
		return err
	}
	if err := s.fsm.WaitApplied(ctx, resp.Index); err != nil {
		return withMessage(replication.ErrTimeout, "node %s could not catch up to the leader's index %d in time (at %d): retry, or read with -consistency=stale", s.cfg.NodeID, resp.Index, s.fsm.AppliedIndex())
	}
	return nil
}
