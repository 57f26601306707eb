package server

import (
	"context"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// clusterServer is the node-to-node API (read index for follower reads).
type clusterServer struct {
	pb.UnimplementedClusterServer
	nodeID string
	raft   readRaft
	state  appliedState
	link   leaderCheck
}

// ReadIndex answers a follower's read-index request: the index the
// follower must have applied before it answers a read from its own state.
// It is this leader's applied index, which covers every write the leader
// has acknowledged (noop and barrier entries never reach the FSM, so the
// commit index could name an entry a follower's FSM never reports).
func (c *clusterServer) ReadIndex(ctx context.Context, req *pb.ReadIndexRequest) (*pb.ReadIndexResponse, error) {
	if !c.raft.IsLeader() {
		return nil, c.link.notLeaderError()
	}
	if !c.raft.ReadyLeader() {
		return nil, withMessage(replication.ErrNoLeader, "node %s became leader and is still applying earlier entries: retry shortly", c.nodeID)
	}
	if req.Linearizable {
		if err := c.raft.VerifyLeader(ctx); err != nil {
			return nil, err
		}
	}
	return &pb.ReadIndexResponse{Index: c.state.AppliedIndex(), LeaderId: c.nodeID}, nil
}
