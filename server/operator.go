package server

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// operatorServer is the Operator service: membership and snapshots.
// Every call needs the root token.
type operatorServer struct {
	pb.UnimplementedOperatorServer
	nodeID  string
	dataDir string
	raft    operatorRaft
	state   snapshotState
	keys    *keys
	link    *leaderLink
	logger  hclog.Logger
}

// operatorRaft is what the Operator service reads and changes of the Raft
// node.
type operatorRaft interface {
	IsLeader() bool
	Leader() (id, addr string)
	Following() (leaderID string, changed <-chan struct{})
	Addr() string
	CommitIndex() uint64
	LastIndex() uint64
	Configuration() ([]replication.Peer, error)
	Members() []replication.Member
	MemberByID(id string) (replication.Member, bool)
	RemoveServer(ctx context.Context, id string) error
	TransferLeadership(ctx context.Context) error
	Restore(meta *raft.SnapshotMeta, body io.Reader, timeout time.Duration) error
}

// snapshotState is the state machine as snapshots and status need it.
type snapshotState interface {
	AppliedIndex() uint64
	SysGet(key string) ([]byte, error)
	Snapshot() (raft.FSMSnapshot, error)
}

// Members lists the gossip view of this node, with each member's Raft
// suffrage from the configuration.
func (o *operatorServer) Members(ctx context.Context, _ *pb.MembersRequest) (*pb.MembersResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	voters := map[string]bool{}
	if peers, err := o.raft.Configuration(); err == nil {
		for _, p := range peers {
			voters[p.ID] = p.Voter
		}
	}
	resp := &pb.MembersResponse{}
	for _, m := range o.raft.Members() {
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
			Id:          o.nodeID,
			ApiAddress:  o.link.self,
			RaftAddress: o.raft.Addr(),
			Status:      "alive",
			Sealed:      o.keys.Sealed(),
			Voter:       voters[o.nodeID],
			Version:     Version,
		})
	}
	return resp, nil
}

// ListPeers lists the Raft configuration; each peer's applied index comes
// from asking that peer (a peer that does not answer is marked unreachable).
func (o *operatorServer) ListPeers(ctx context.Context, _ *pb.ListPeersRequest) (*pb.ListPeersResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	peers, err := o.raft.Configuration()
	if err != nil {
		return nil, err
	}
	leaderID, _ := o.raft.Leader()
	resp := &pb.ListPeersResponse{CommitIndex: o.raft.CommitIndex()}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range peers {
		peer := &pb.Peer{Id: p.ID, Address: p.Address, Voter: p.Voter, Leader: p.ID == leaderID}
		resp.Peers = append(resp.Peers, peer)
		if p.ID == o.nodeID {
			peer.AppliedIndex, peer.Reachable = o.state.AppliedIndex(), true
			continue
		}
		m, ok := o.raft.MemberByID(p.ID)
		if !ok || m.APIAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := o.link.peerStatus(ctx, m.APIAddr)
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
func (o *operatorServer) RemovePeer(ctx context.Context, req *pb.RemovePeerRequest) (*pb.RemovePeerResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if req.Id == "" {
		return nil, invalidf("give the id of the peer to remove (see `coffer operator raft list-peers`)")
	}
	peers, err := o.raft.Configuration()
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
	if req.Id == o.nodeID {
		return nil, invalidf("%s is the leader: run `coffer operator step-down` first, then remove it through another node", req.Id)
	}
	if err := o.raft.RemoveServer(ctx, req.Id); err != nil {
		return nil, err
	}
	o.logger.Info("removed raft peer by request", "peer", req.Id)
	return &pb.RemovePeerResponse{Index: o.raft.LastIndex()}, nil
}

// StepDown hands leadership to another voter and reports the new leader.
func (o *operatorServer) StepDown(ctx context.Context, _ *pb.StepDownRequest) (*pb.StepDownResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	// A transfer times out when the chosen follower does not win within an
	// election timeout (a slow disk or CPU): try again, a few times, while
	// this node still leads.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = o.raft.TransferLeadership(ctx); err == nil || !o.raft.IsLeader() || ctx.Err() != nil {
			break
		}
		o.logger.Warn("leadership transfer failed, trying again", "attempt", attempt+1, "error", err)
	}
	if err != nil && o.raft.IsLeader() {
		return nil, withMessage(replication.ErrTimeout, "leadership transfer did not complete (%v): check that another voter is up and caught up (`coffer operator raft list-peers`), then retry", err)
	}
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		id, changed := o.raft.Following()
		if id != "" && id != o.nodeID {
			o.logger.Info("stepped down", "new_leader", id)
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
