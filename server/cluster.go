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
// It is the committed index (replication's ReadIndex: the newest entry at
// or below it that the state machine sees), not this leader's applied
// index, which may lag entries other followers already applied and
// served. The leader confirms its leadership first: with a quorum for a
// linearizable read, or its read lease for a default one (so that a
// leader woken from a freeze does not hand out an index from before the
// writes of its successor).
func (c *clusterServer) ReadIndex(ctx context.Context, req *pb.ReadIndexRequest) (*pb.ReadIndexResponse, error) {
	if !c.raft.IsLeader() {
		return nil, c.link.notLeaderError()
	}
	if !c.raft.ReadyLeader() {
		return nil, withMessage(replication.ErrNoLeader, "node %s became leader and is still applying earlier entries: retry shortly", c.nodeID)
	}
	idx := c.raft.ReadIndex()
	confirm := c.raft.ConfirmLeader
	if req.Linearizable {
		confirm = c.raft.VerifyLeader
	}
	if err := confirm(ctx); err != nil {
		return nil, err
	}
	return &pb.ReadIndexResponse{Index: idx, LeaderId: c.nodeID}, nil
}
