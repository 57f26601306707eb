package replication

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// stateCheckInterval is how often a node checks whether it got Raft state.
const stateCheckInterval = 500 * time.Millisecond

// clusterLoop follows gossip: after every change it tells the observers, lets
// the leader reconcile, and (bootstrap_expect) checks whether the cluster can
// be bootstrapped. A ticker catches what gossip does not announce: this node
// receiving its first Raft entries.
func (n *Node) clusterLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(stateCheckInterval)
	defer tick.Stop()
	n.maybeBootstrap()
	for {
		select {
		case <-n.done:
			return
		case <-n.gossip.changed:
			n.refreshRaftState()
			n.maybeBootstrap()
			signal(n.reconcileCh)
			n.mu.Lock()
			obs := append([]func(){}, n.memberObservers...)
			n.mu.Unlock()
			for _, f := range obs {
				f()
			}
		case <-tick.C:
			n.refreshRaftState()
			n.maybeBootstrap()
		}
	}
}

// refreshRaftState notices that this node got Raft state (it was bootstrapped
// or the leader replicated to it) and gossips it, so that nobody bootstraps
// around it.
func (n *Node) refreshRaftState() {
	if n.hasState.Load() || n.raft.LastIndex() == 0 {
		return
	}
	n.hasState.Store(true)
	n.gossip.setLocal(func(m *MemberMeta) { m.HasRaftState = true })
	n.clog.Info("this node now has raft state", "last_index", n.raft.LastIndex())
}

// maybeBootstrap implements bootstrap_expect (DESIGN.md §10): once gossip
// shows exactly N live members that all expect N and none has Raft state, this
// node bootstraps Raft with all N as voters, sorted by id. Every one of them
// does the same with the same configuration, which hashicorp/raft accepts; a
// member that already has Raft state means a cluster exists, and its leader
// will add this node instead.
func (n *Node) maybeBootstrap() {
	want := n.cfg.BootstrapExpect
	if want == 0 || n.bootstrapDone.Load() {
		return
	}
	if n.hasState.Load() {
		n.bootstrapDone.Store(true)
		return
	}
	var voters []Member
	for _, m := range n.Members() { // sorted by id
		if m.Status != StatusAlive {
			continue
		}
		if m.HasRaftState {
			n.bootstrapDone.Store(true)
			n.clog.Info("a member already has raft state: not bootstrapping; the leader will add this node", "member", m.ID)
			return
		}
		if m.ReadReplica || m.BootstrapExpect == 0 {
			continue // joins later, added by the leader
		}
		if m.BootstrapExpect != want {
			n.bootstrapNote(fmt.Sprintf("member %s expects %d nodes, this node %d: not bootstrapping until every node is given the same -bootstrap-expect", m.ID, m.BootstrapExpect, want))
			return
		}
		if m.RaftAddr == "" {
			return
		}
		voters = append(voters, m)
	}
	switch {
	case len(voters) < want:
		n.clog.Debug("waiting for members before bootstrapping", "seen", len(voters), "expect", want)
		return
	case len(voters) > want:
		n.bootstrapNote(fmt.Sprintf("%d live nodes expect %d: not bootstrapping, as they could not agree on who belongs; start exactly %d with -bootstrap-expect", len(voters), want, want))
		return
	}
	conf := raft.Configuration{}
	ids := make([]string, 0, len(voters))
	for _, m := range voters {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.RaftAddr)})
		ids = append(ids, m.ID)
	}
	err := n.raft.BootstrapCluster(conf).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		n.clog.Warn("bootstrap failed: retrying on the next membership change", "error", err)
		return
	}
	n.bootstrapDone.Store(true)
	n.hasState.Store(true)
	n.gossip.setLocal(func(m *MemberMeta) { m.HasRaftState = true })
	if err != nil {
		n.clog.Info("raft state appeared before bootstrapping: not bootstrapping", "error", err)
		return
	}
	n.clog.Info("bootstrapped the cluster", "voters", ids)
}

// bootstrapNote logs why bootstrapping waits, once per distinct reason.
func (n *Node) bootstrapNote(msg string) {
	n.mu.Lock()
	seen := n.lastBootstrapNote == msg
	n.lastBootstrapNote = msg
	n.mu.Unlock()
	if !seen {
		n.clog.Error(msg)
	}
}
