package replication

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

const (
	// caughtUpTimeout bounds one Config.CaughtUp call.
	caughtUpTimeout = 2 * time.Second
	// dutyBarrierTimeout bounds one attempt at the barrier that starts the
	// leader duties.
	dutyBarrierTimeout = 10 * time.Second
)

// reconcileLoop reconciles gossip into Raft membership on every
// membership change and every ReconcileInterval until ctx (the leadership
// term) ends. It runs on a ready leader only.
func (n *Node) reconcileLoop(ctx context.Context) {
	log := n.clog.Named("reconcile")
	log.Info("leader duties started: reconciling gossip into raft membership")
	defer log.Info("leader duties stopped")

	rs := newReconcileState()
	o := raft.NewObserver(rs.obs, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(o)
	defer n.raft.DeregisterObserver(o)

	tick := time.NewTicker(n.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		n.reconcile(ctx, rs)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.reconcileCh:
		}
	}
}

// reconcileState is what one leader term remembers between rounds.
type reconcileState struct {
	nonvoterSince map[string]time.Time // when this leader first saw a server as a non-voter
	unknownSince  map[string]time.Time // when this leader first missed a server in gossip
	unreachable   map[string]bool      // heartbeats to the server are failing
	quorumWarned  map[string]bool      // removal refused for quorum, said so at warn level
	reachWarned   map[string]bool      // kept as reachable, said so at warn level
	refusedWarned map[string]bool      // not admitted to raft, said so at warn level
	obs           chan raft.Observation
}

func newReconcileState() *reconcileState {
	return &reconcileState{
		nonvoterSince: make(map[string]time.Time),
		unknownSince:  make(map[string]time.Time),
		unreachable:   make(map[string]bool),
		quorumWarned:  make(map[string]bool),
		reachWarned:   make(map[string]bool),
		refusedWarned: make(map[string]bool),
		obs:           make(chan raft.Observation, 256),
	}
}

// drainHeartbeats folds the heartbeat observations queued since the last
// round into unreachable.
func (rs *reconcileState) drainHeartbeats() {
	for {
		select {
		case o := <-rs.obs:
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				rs.unreachable[string(d.PeerID)] = true
			case raft.ResumedHeartbeatObservation:
				delete(rs.unreachable, string(d.PeerID))
			}
		default:
			return
		}
	}
}

// admitTimeout bounds one Config.Admit call.
const admitTimeout = 2 * time.Second

// admits asks Config.Admit whether m may be added to Raft.
func (n *Node) admits(ctx context.Context, m Member) bool {
	if n.cfg.Admit == nil {
		return true
	}
	actx, cancel := context.WithTimeout(ctx, admitTimeout)
	defer cancel()
	return n.cfg.Admit(actx, m)
}

// reconcileReport is the outcome of one round (for tests and logs).
type reconcileReport struct {
	Added, Promoted, Removed []string
	// Waiting are non-voters not promoted yet: stabilising, not caught up
	// or unreachable over Raft.
	Waiting []string
	// Replicas are read replicas, left as non-voters.
	Replicas []string
	// Refused are live members Config.Admit did not admit to Raft.
	Refused []string
	// KeptOut are live members an operator removed from Raft that have
	// not restarted since (RemoveServer).
	KeptOut []string
	// KeptReachable are servers gossip reports dead or unknown while the
	// leader's Raft heartbeats still reach them: kept.
	KeptReachable []string
	// KeptForQuorum are servers due for removal but kept because the
	// remaining voters would not have a healthy quorum.
	KeptForQuorum []string
}

// reconcile makes one pass: add live members missing from Raft as non-voters,
// promote caught-up non-voters that are not read replicas, and remove at most
// one server that left, or has been dead or unknown for DeadServerTimeout and
// is unreachable over Raft, if the remaining voters keep a healthy quorum.
func (n *Node) reconcile(ctx context.Context, rs *reconcileState) {
	log := n.clog.Named("reconcile")
	rs.drainHeartbeats()
	peers, err := n.configuration(ctx)
	if err != nil {
		log.Debug("reading the raft configuration", "error", err)
		return
	}
	members := make(map[string]Member)
	for _, m := range n.Members() {
		members[m.ID] = m
	}
	conf := make(map[string]Peer, len(peers))
	for _, p := range peers {
		conf[p.ID] = p
	}
	self := n.cfg.NodeID
	now := time.Now()
	var rep reconcileReport

	for id := range rs.nonvoterSince {
		if p, ok := conf[id]; !ok || p.Voter {
			delete(rs.nonvoterSince, id)
		}
	}
	for id := range rs.unknownSince {
		if _, ok := members[id]; ok || conf[id].ID == "" {
			delete(rs.unknownSince, id)
		}
	}
	for id := range rs.unreachable {
		if conf[id].ID == "" {
			delete(rs.unreachable, id)
		}
	}
	n.pruneRemovals(members, conf)

	// Live members missing from Raft join as non-voters; a known server
	// whose Raft address changed (a new container IP) is re-added with its
	// suffrage.
	for _, m := range sortedMembers(members) {
		if m.Status != StatusAlive || m.RaftAddr == "" || m.ID == self {
			continue
		}
		p, ok := conf[m.ID]
		if !ok {
			if out, first := n.keptOut(m); out {
				if first {
					log.Info("not adding back a server an operator removed: it rejoins when it restarts", "id", m.ID, "raft_address", m.RaftAddr)
				}
				rep.KeptOut = append(rep.KeptOut, m.ID)
				continue
			}
		}
		if (!ok || p.Address != m.RaftAddr) && !n.admits(ctx, m) {
			if !rs.refusedWarned[m.ID] {
				rs.refusedWarned[m.ID] = true
				log.Warn("not adding a gossip member to raft: it did not prove a node certificate of this cluster's CA", "id", m.ID, "raft_address", m.RaftAddr, "api_address", m.APIAddr)
			}
			rep.Refused = append(rep.Refused, m.ID)
			continue
		}
		delete(rs.refusedWarned, m.ID)
		switch {
		case !ok:
			if err := n.AddNonvoter(ctx, m.ID, m.RaftAddr); err != nil {
				if ctx.Err() == nil {
					log.Warn("adding a member as non-voter", "id", m.ID, "address", m.RaftAddr, "error", err)
				}
				return
			}
			log.Info("added a member to raft as non-voter", "id", m.ID, "address", m.RaftAddr, "read_replica", m.ReadReplica)
			conf[m.ID] = Peer{ID: m.ID, Address: m.RaftAddr}
			rs.nonvoterSince[m.ID] = now
			delete(rs.unreachable, m.ID)
			rep.Added = append(rep.Added, m.ID)
		case p.Address != m.RaftAddr:
			add := n.AddNonvoter
			if p.Voter {
				add = n.AddVoter
			}
			if err := add(ctx, m.ID, m.RaftAddr); err != nil {
				if ctx.Err() == nil {
					log.Warn("updating a server's raft address", "id", m.ID, "address", m.RaftAddr, "error", err)
				}
				return
			}
			log.Info("updated a server's raft address", "id", m.ID, "old_address", p.Address, "address", m.RaftAddr)
			p.Address = m.RaftAddr
			conf[m.ID] = p
			delete(rs.unreachable, m.ID)
		}
	}

	// Non-voters that are live, not read replicas, stable for PromoteAfter,
	// reachable over Raft and caught up become voters.
	for _, p := range sortedPeers(conf) {
		if p.Voter {
			continue
		}
		m, ok := members[p.ID]
		if !ok || m.Status != StatusAlive {
			continue
		}
		if m.ReadReplica {
			rep.Replicas = append(rep.Replicas, p.ID)
			continue
		}
		since, ok := rs.nonvoterSince[p.ID]
		if !ok {
			since = now
			rs.nonvoterSince[p.ID] = now
		}
		if now.Sub(since) < n.cfg.PromoteAfter || rs.unreachable[p.ID] {
			rep.Waiting = append(rep.Waiting, p.ID)
			continue
		}
		if n.cfg.CaughtUp != nil {
			cctx, cancel := context.WithTimeout(ctx, caughtUpTimeout)
			caughtUp := n.cfg.CaughtUp(cctx, m)
			cancel()
			if !caughtUp {
				rep.Waiting = append(rep.Waiting, p.ID)
				continue
			}
		}
		if err := n.AddVoter(ctx, p.ID, p.Address); err != nil {
			if ctx.Err() == nil {
				log.Warn("promoting a non-voter", "id", p.ID, "error", err)
			}
			return
		}
		log.Info("promoted a non-voter to voter", "id", p.ID, "address", p.Address)
		p.Voter = true
		conf[p.ID] = p
		delete(rs.nonvoterSince, p.ID)
		rep.Promoted = append(rep.Promoted, p.ID)
	}

	// At most one removal per round, and only while the voters left keep a
	// healthy (gossip-alive) quorum.
	dead := n.cfg.Gossip.DeadServerTimeout
	for _, p := range sortedPeers(conf) {
		if p.ID == self {
			continue
		}
		m, known := members[p.ID]
		var reason string
		switch {
		case known && m.Status == StatusLeft:
			reason = "left the cluster"
		case known && m.Status == StatusDead && now.Sub(m.Since) >= dead:
			reason = fmt.Sprintf("dead for %s", now.Sub(m.Since).Round(time.Millisecond))
		case !known:
			since, ok := rs.unknownSince[p.ID]
			if !ok {
				since = now
				rs.unknownSince[p.ID] = now
			}
			if now.Sub(since) >= dead {
				reason = fmt.Sprintf("unknown to gossip for %s", now.Sub(since).Round(time.Millisecond))
			}
		}
		if reason == "" {
			continue
		}
		if m.Status != StatusLeft && !rs.unreachable[p.ID] {
			// Gossip alone is not enough: a server whose heartbeats
			// succeed is working (only its gossip port may be cut off).
			rep.KeptReachable = append(rep.KeptReachable, p.ID)
			if !rs.reachWarned[p.ID] {
				rs.reachWarned[p.ID] = true
				log.Warn("not removing a server gossip reports failed: raft still reaches it; check its gossip port", "id", p.ID, "reason", reason)
			}
			continue
		}
		if !quorumAfterRemoval(conf, members, self, p.ID) {
			rep.KeptForQuorum = append(rep.KeptForQuorum, p.ID)
			if !rs.quorumWarned[p.ID] {
				rs.quorumWarned[p.ID] = true
				log.Warn("not removing a failed server: the remaining voters would not have a healthy quorum", "id", p.ID, "reason", reason)
			}
			continue
		}
		if err := n.removeServer(ctx, p.ID); err != nil {
			if ctx.Err() == nil {
				log.Warn("removing a server", "id", p.ID, "error", err)
			}
			return
		}
		log.Info("removed a server from raft", "id", p.ID, "reason", reason, "voter", p.Voter)
		delete(rs.quorumWarned, p.ID)
		delete(rs.reachWarned, p.ID)
		rep.Removed = append(rep.Removed, p.ID)
		break
	}

	if h := n.cfg.onReconcile; h != nil {
		h(rep)
	}
}

// quorumAfterRemoval reports whether, with id removed, the voters that are
// alive in gossip (this node counts as alive) are a majority of the voters
// left.
func quorumAfterRemoval(conf map[string]Peer, members map[string]Member, self, id string) bool {
	remaining, healthy := 0, 0
	for _, p := range conf {
		if !p.Voter || p.ID == id {
			continue
		}
		remaining++
		if p.ID == self || members[p.ID].Status == StatusAlive {
			healthy++
		}
	}
	return healthy >= remaining/2+1
}

func sortedMembers(m map[string]Member) []Member {
	out := make([]Member, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func sortedPeers(m map[string]Peer) []Peer {
	out := make([]Peer, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.ID, b.ID) })
	return out
}
