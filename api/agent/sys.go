package agent

import (
	"context"
	"time"

	pb "coffer/api/cofferpb"
)

// RaftState is the raft_state Sys.Status reports for an agent.
const RaftState = "agent"

// sysServer is the agent's coffer.v1.Sys: Status reports the agent, the
// seal calls belong to nodes.
type sysServer struct {
	pb.UnimplementedSysServer
	a *Agent
}

// Status reports the agent (see the package documentation): never sealed,
// raft_state "agent", and what it knows of the cluster.
func (s *sysServer) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	a := s.a
	st := &pb.StatusResponse{
		Seal:      &pb.SealStatus{Initialized: true, Sealed: false},
		NodeId:    a.cfg.NodeID,
		RaftState: RaftState,
		Version:   a.cfg.Version,
	}
	for _, ep := range a.client.EndpointStates() {
		st.AppliedIndex = max(st.AppliedIndex, ep.AppliedIndex)
		if ep.Leader {
			st.LeaderId, st.LeaderAddress = ep.NodeID, ep.Address
		}
	}
	last := a.started
	if ns := a.lastContact.Load(); ns != 0 {
		last = time.Unix(0, ns)
	}
	st.LastContactMs = time.Since(last).Milliseconds()
	return st, nil
}

// Init is a node's call.
func (s *sysServer) Init(context.Context, *pb.InitRequest) (*pb.InitResponse, error) {
	return nil, ErrNotANode
}

// Unseal is a node's call.
func (s *sysServer) Unseal(context.Context, *pb.UnsealRequest) (*pb.SealStatus, error) {
	return nil, ErrNotANode
}

// Seal is a node's call.
func (s *sysServer) Seal(context.Context, *pb.SealRequest) (*pb.SealStatus, error) {
	return nil, ErrNotANode
}

// Rotate is a node's call.
func (s *sysServer) Rotate(context.Context, *pb.RotateRequest) (*pb.RotateResponse, error) {
	return nil, ErrNotANode
}
