package replication

import (
	"context"
	"time"
)

// removal is a server an operator removed from Raft through this node.
type removal struct {
	boot  string    // the server's Boot when it was removed ("" when unknown)
	at    time.Time // when it was removed
	noted bool      // the reconciliation has said that it keeps the server out
}

// RemoveServer removes id from the Raft configuration at an operator's
// request. Leader only.
//
// Gossip may still show the server alive: it was killed a moment ago and
// gossip has not noticed yet, or it still runs. The reconciliation adds the
// live members missing from Raft, so it would bring the server back as a
// non-voter within a round. This node remembers the removal instead and
// keeps the server out of Raft until it starts again, which gossip shows as
// a new Boot. A server too old to send a Boot is kept out until gossip has
// seen it fail and come back.
//
// The memory is this node's: if leadership moves before gossip sees a killed
// server fail, the new leader may add it back, and it is removed again once
// it has been dead for the dead-server timeout.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	m, _ := n.MemberByID(id)
	n.rmu.Lock()
	n.removed[id] = &removal{boot: m.Boot, at: time.Now()}
	n.rmu.Unlock()
	return n.removeServer(ctx, id)
}

// keptOut reports whether m, a live member missing from Raft, is a server
// an operator removed that has not started again since, and whether this is
// the first round that keeps it out. A restarted server's removal is
// forgotten.
func (n *Node) keptOut(m Member) (out, first bool) {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	r, ok := n.removed[m.ID]
	if !ok {
		return false, false
	}
	restarted := m.Boot != r.boot
	if m.Boot == "" {
		restarted = m.Since.After(r.at) // alive again since it was removed
	}
	if restarted {
		delete(n.removed, m.ID)
		return false, false
	}
	first, r.noted = !r.noted, true
	return true, first
}

// pruneRemovals forgets the removals of servers that neither gossip
// (members) nor Raft (conf) knows any more.
func (n *Node) pruneRemovals(members map[string]Member, conf map[string]Peer) {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	for id := range n.removed {
		_, inGossip := members[id]
		_, inRaft := conf[id]
		if !inGossip && !inRaft {
			delete(n.removed, id)
		}
	}
}
