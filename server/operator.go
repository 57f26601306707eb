package server

import (
	"context"
	"sync"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// operatorService implements the Operator API (membership and snapshots).
// Every call needs the root token.
type operatorService struct {
	pb.UnimplementedOperatorServer
	s *Server
}

// Members lists the gossip view of this node, with each member's Raft
// suffrage from the configuration.
func (o *operatorService) Members(ctx context.Context, _ *pb.MembersRequest) (*pb.MembersResponse, error) {
	if err := requireRoot(ctx); err != nil {
		return nil, err
	}
	s := o.s
	voters := map[string]bool{}
	if peers, err := s.raft.Configuration(); err == nil {
		for _, p := range peers {
			voters[p.ID] = p.Voter
		}
	}
	resp := &pb.MembersResponse{}
	for _, m := range s.raft.Members() {
		resp.Members = append(resp.Members, &pb.Member{
			Id:            m.ID,
			ApiAddress:    m.APIAddr,
			RaftAddress:   m.RaftAddr,
			GossipAddress: m.GossipAddr,
			Status:        m.Status,
			Sealed:        m.Sealed,
			Voter:         voters[m.ID],
			ReadReplica:   m.ReadReplica,
			Version:       m.Version,
		})
	}
	if len(resp.Members) == 0 {
		// No gossip (a single node): report this node alone.
		resp.Members = append(resp.Members, &pb.Member{
			Id:          s.cfg.NodeID,
			ApiAddress:  s.advertisedAPI(),
			RaftAddress: s.raft.Addr(),
			Status:      "alive",
			Sealed:      s.seal.Sealed(),
			Voter:       voters[s.cfg.NodeID],
			Version:     Version,
		})
	}
	return resp, nil
}

// ListPeers lists the Raft configuration; each peer's applied index comes
// from asking that peer (a peer that does not answer is marked unreachable).
func (o *operatorService) ListPeers(ctx context.Context, _ *pb.ListPeersRequest) (*pb.ListPeersResponse, error) {
	if err := requireRoot(ctx); err != nil {
		return nil, err
	}
	s := o.s
	peers, err := s.raft.Configuration()
	if err != nil {
		return nil, err
	}
	leaderID, _ := s.raft.Leader()
	resp := &pb.ListPeersResponse{CommitIndex: s.raft.CommitIndex()}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range peers {
		peer := &pb.Peer{Id: p.ID, Address: p.Address, Voter: p.Voter, Leader: p.ID == leaderID}
		resp.Peers = append(resp.Peers, peer)
		if p.ID == s.cfg.NodeID {
			peer.AppliedIndex, peer.Reachable = s.fsm.AppliedIndex(), true
			continue
		}
		m, ok := s.raft.MemberByID(p.ID)
		if !ok || m.APIAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := s.peerStatus(ctx, m.APIAddr)
			if err != nil {
				return
			}
			mu.Lock()
			peer.AppliedIndex, peer.Reachable = st.AppliedIndex, true
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Lag is measured against the most advanced state machine: applied
	// indexes skip noop and configuration entries, so the commit index
	// would show a lag that never closes.
	top := uint64(0)
	for _, p := range resp.Peers {
		top = max(top, p.AppliedIndex)
	}
	for _, p := range resp.Peers {
		if p.Reachable {
			p.Lag = top - p.AppliedIndex
		}
	}
	return resp, nil
}

// RemovePeer removes a server from the Raft configuration (leader only; a
// follower forwards it).
func (o *operatorService) RemovePeer(ctx context.Context, req *pb.RemovePeerRequest) (*pb.RemovePeerResponse, error) {
	if err := requireRoot(ctx); err != nil {
		return nil, err
	}
	s := o.s
	if req.Id == "" {
		return nil, invalidf("give the id of the peer to remove (see `coffer operator raft list-peers`)")
	}
	peers, err := s.raft.Configuration()
	if err != nil {
		return nil, err
	}
	found := false
	for _, p := range peers {
		found = found || p.ID == req.Id
	}
	if !found {
		return nil, withMessage(ErrNotFoundPeer, "no peer %q in the Raft configuration: see `coffer operator raft list-peers`", req.Id)
	}
	if req.Id == s.cfg.NodeID {
		return nil, invalidf("%s is the leader: run `coffer operator step-down` first, then remove it through another node", req.Id)
	}
	if err := s.raft.RemoveServer(ctx, req.Id); err != nil {
		return nil, err
	}
	s.logger.Info("removed raft peer by request", "peer", req.Id)
	return &pb.RemovePeerResponse{Index: s.raft.LastIndex()}, nil
}

// StepDown hands leadership to another voter and reports the new leader.
func (o *operatorService) StepDown(ctx context.Context, _ *pb.StepDownRequest) (*pb.StepDownResponse, error) {
	if err := requireRoot(ctx); err != nil {
		return nil, err
	}
	s := o.s
	// A transfer times out when the chosen follower does not win within an
	// election timeout (a slow disk or CPU): try again, a few times, while
	// this node still leads.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = s.raft.TransferLeadership(ctx); err == nil || !s.raft.IsLeader() || ctx.Err() != nil {
			break
		}
		s.logger.Warn("leadership transfer failed, trying again", "attempt", attempt+1, "error", err)
	}
	if err != nil && s.raft.IsLeader() {
		return nil, withMessage(replication.ErrTimeout, "leadership transfer did not complete (%v): check that another voter is up and caught up (`coffer operator raft list-peers`), then retry", err)
	}
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		id, changed := s.raft.Following()
		if id != "" && id != s.cfg.NodeID {
			s.logger.Info("stepped down", "new_leader", id)
			return &pb.StepDownResponse{NewLeaderId: id}, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, withMessage(replication.ErrNoLeader, "leadership moved but no new leader was seen within 5s: check `coffer status`")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
