package replication

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Peer is one server in the Raft configuration.
type Peer struct {
	ID      string
	Address string
	// Voter is false for non-voters (new members still catching up, read
	// replicas).
	Voter bool
}

// Members returns every node this node's gossip knows, itself included,
// sorted by id. Without gossip it is just this node.
func (n *Node) Members() []Member {
	if n.gossip == nil {
		return []Member{{MemberMeta: n.soloMeta(), Status: StatusAlive, Since: n.started}}
	}
	return n.gossip.members()
}

// soloMeta is this node's metadata when there is no gossip.
func (n *Node) soloMeta() MemberMeta {
	return MemberMeta{
		ID: n.cfg.NodeID, APIAddr: n.cfg.APIAdvertise, HTTPURL: n.cfg.HTTPAdvertise, RaftAddr: n.Addr(), Sealed: n.sealed.Load(),
		ReadReplica: n.cfg.ReadReplica, HasRaftState: n.hasState.Load() || n.raft.LastIndex() > 0,
		BootstrapExpect: n.cfg.BootstrapExpect, Version: n.cfg.Version, Boot: n.boot,
	}
}

// MemberByID returns the member with id as gossip knows it.
func (n *Node) MemberByID(id string) (Member, bool) {
	for _, m := range n.Members() {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// LeaderAPIAddr returns the API address of the current Raft leader, taken from
// its gossiped metadata, or "" when no leader or no address is known.
func (n *Node) LeaderAPIAddr() string { return n.leaderMember().APIAddr }

// LeaderHTTPURL returns the URL of the current leader's HTTP API, taken
// from its gossiped metadata, or "" when no leader or no URL is known.
func (n *Node) LeaderHTTPURL() string { return n.leaderMember().HTTPURL }

// leaderMember is the current leader as gossip knows it (the zero Member
// when no leader or no member is known).
func (n *Node) leaderMember() Member {
	id, _ := n.Leader()
	if id == "" {
		return Member{}
	}
	m, _ := n.MemberByID(id)
	return m
}

// GossipAddr returns the ip:port this node gossips on, or "" without gossip.
func (n *Node) GossipAddr() string {
	if n.gossip == nil {
		return ""
	}
	return n.gossip.addr
}

// SetSealed records whether this node is sealed and gossips it when it
// changed (Config.Sealed is the value before the first call).
func (n *Node) SetSealed(sealed bool) {
	n.sealed.Store(sealed)
	if n.gossip != nil {
		n.gossip.setLocal(func(m *MemberMeta) { m.Sealed = sealed })
	}
}

// OnMembershipChange registers f to be called, on one goroutine, after gossip
// reports a member joining, leaving, failing or changing its metadata. Calls
// are coalesced; f must not block.
func (n *Node) OnMembershipChange(f func()) {
	n.mu.Lock()
	n.memberObservers = append(n.memberObservers, f)
	n.mu.Unlock()
}

// Leave announces to the gossip cluster that this node leaves, waiting up to
// timeout for the announcement to go out. The leader then removes this node
// from Raft at once. Raft keeps running until Shutdown. Without gossip it does
// nothing.
func (n *Node) Leave(timeout time.Duration) error {
	if n.gossip == nil {
		return nil
	}
	return n.gossip.leave(timeout)
}

// Configuration returns the servers of the latest Raft configuration this
// node knows, sorted by id.
func (n *Node) Configuration() ([]Peer, error) {
	return n.configuration(context.Background())
}

func (n *Node) configuration(ctx context.Context) ([]Peer, error) {
	f := n.raft.GetConfiguration()
	if err := n.wait(ctx, f); err != nil {
		return nil, err
	}
	servers := f.Configuration().Servers
	peers := make([]Peer, 0, len(servers))
	for _, s := range servers {
		peers = append(peers, Peer{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.ID, b.ID) })
	return peers, nil
}

// AddVoter adds id at addr to the Raft configuration as a voter, or promotes
// it when it is already a non-voter, or updates its address. Leader only.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	return n.wait(ctx, n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, raftTimeout(ctx)))
}

// AddNonvoter adds id at addr to the Raft configuration as a non-voter: it
// receives the log but does not vote. Leader only.
func (n *Node) AddNonvoter(ctx context.Context, id, addr string) error {
	return n.wait(ctx, n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, raftTimeout(ctx)))
}

// removeServer removes id from the Raft configuration. Leader only.
func (n *Node) removeServer(ctx context.Context, id string) error {
	return n.wait(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, raftTimeout(ctx)))
}

// TransferLeadership hands leadership to the most up-to-date voter and
// returns once this node has stepped down. It returns ErrNotLeader on a
// follower.
func (n *Node) TransferLeadership(ctx context.Context) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	return n.transfer(ctx, n.raft.LeadershipTransfer)
}

// TransferLeadershipTo hands leadership to the voter id and returns once this
// node has stepped down. It returns ErrNotLeader on a follower and
// ErrUnknownServer when id is not another voter of the configuration.
func (n *Node) TransferLeadershipTo(ctx context.Context, id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	peers, err := n.configuration(ctx)
	if err != nil {
		return err
	}
	for _, p := range peers {
		if p.ID == id && p.Voter && id != n.cfg.NodeID {
			return n.transfer(ctx, func() raft.Future {
				return n.raft.LeadershipTransferToServer(raft.ServerID(p.ID), raft.ServerAddress(p.Address))
			})
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknownServer, id)
}

// transfer runs the leadership transfer start begins and waits for it
// like wait. From before it begins until Raft has answered it (even when
// ctx ended first), ReadyLeader is false: the target is elected without
// waiting for an election timeout and may commit writes before this node
// hears of its term, so a read answered meanwhile from this node's own
// state, or a read index it handed a follower, could miss them. Readers
// are told to retry (no ready leader) instead.
func (n *Node) transfer(ctx context.Context, start func() raft.Future) error {
	n.handingOver.Add(1)
	return n.waitThen(ctx, start(), func() {
		n.handingOver.Add(-1)
		// Wake WaitReadyLeader: a failed transfer leaves a ready leader.
		n.lmu.Lock()
		n.signalLocked()
		n.lmu.Unlock()
	})
}

// raftTimeout is how long a Raft call may wait to be enqueued, from ctx.
func raftTimeout(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return 10 * time.Second
}
