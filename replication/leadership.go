package replication

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Leadership is owned here, once: the server asks this package whether it
// is a ready leader and for contexts that end when leadership (or the
// leader a follower follows) changes, instead of keeping epochs of its own.

// leaderTerm is one leadership of this node, from the notification that it
// won an election until the one that it lost it.
type leaderTerm struct {
	ctx    context.Context
	cancel context.CancelFunc
	// ready is closed once a Raft barrier succeeded in this term: the node
	// has applied every entry of earlier terms, so its own state holds
	// every write a previous leader acknowledged.
	ready chan struct{}
	// done is closed when the term's barrier and reconciliation goroutine
	// has returned.
	done chan struct{}
}

// following is the leader this node knows, until it changes: then ctx
// ends, which wakes whoever waits on Following and cancels every
// FollowingContext made for it, without a goroutine per call.
type following struct {
	id  string
	ctx context.Context
	end context.CancelFunc
}

// newFollowing begins following the leader id ("" for none).
func newFollowing(id string) *following {
	ctx, end := context.WithCancel(context.Background())
	return &following{id: id, ctx: ctx, end: end}
}

// dutyBarrierRetry is the pause between two failed barriers of a new
// leader.
const dutyBarrierRetry = 50 * time.Millisecond

// startTerm begins a leadership term: a barrier, then the ready
// observers and (with gossip) reconciliation, until the term ends. Only
// watchLeadership calls it.
func (n *Node) startTerm() {
	ctx, cancel := context.WithCancel(context.Background())
	t := &leaderTerm{ctx: ctx, cancel: cancel, ready: make(chan struct{}), done: make(chan struct{})}
	n.lmu.Lock()
	n.term = t
	n.signalLocked()
	n.lmu.Unlock()
	go func() {
		defer close(t.done)
		n.runTerm(t)
	}()
}

// endTerm ends the current term, if any, and waits for its goroutine.
// Only watchLeadership calls it.
func (n *Node) endTerm() {
	n.lmu.Lock()
	t := n.term
	n.term = nil
	n.signalLocked()
	n.lmu.Unlock()
	if t != nil {
		t.cancel()
		<-t.done
	}
}

// runTerm waits for a barrier, marks the term ready, starts the ready
// observers, and reconciles gossip into Raft until the term ends.
func (n *Node) runTerm(t *leaderTerm) {
	log := n.clog.Named("leader")
	for {
		bctx, cancel := context.WithTimeout(t.ctx, dutyBarrierTimeout)
		err := n.Barrier(bctx)
		cancel()
		if err == nil {
			break
		}
		if t.ctx.Err() != nil {
			return
		}
		log.Warn("barrier on the new leader failed: retrying before serving as leader", "error", err)
		timer := time.NewTimer(dutyBarrierRetry)
		select {
		case <-t.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
	n.lmu.Lock()
	close(t.ready)
	n.signalLocked()
	n.lmu.Unlock()
	log.Info("leader ready: every earlier entry is applied", "term", n.Term())
	n.mu.Lock()
	obs := append([]func(context.Context){}, n.readyObservers...)
	n.mu.Unlock()
	for _, f := range obs {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			f(t.ctx)
		}()
	}
	if n.gossip != nil {
		n.reconcileLoop(t.ctx)
	}
}

// OnReadyLeader registers f to run, on a goroutine of its own, each time
// this node becomes a ready leader (see ReadyLeader). ctx ends when that
// leadership ends (or the node shuts down); f must return soon after.
func (n *Node) OnReadyLeader(f func(ctx context.Context)) {
	n.mu.Lock()
	n.readyObservers = append(n.readyObservers, f)
	n.mu.Unlock()
}

// ReadyLeader reports whether this node is the leader, has applied every
// entry of earlier terms (its barrier succeeded) and is not handing
// leadership over (TransferLeadership, TransferLeadershipTo): only then
// may it answer reads from its own state as leader.
func (n *Node) ReadyLeader() bool {
	if n.handingOver.Load() > 0 {
		return false
	}
	_, ok := n.LeaderContext()
	return ok
}

// LeaderContext returns, on a ready leader, a context that ends when this
// leadership ends; ok is false on any other node.
func (n *Node) LeaderContext() (ctx context.Context, ok bool) {
	n.lmu.Lock()
	t := n.term
	n.lmu.Unlock()
	if t == nil || t.ctx.Err() != nil || !n.IsLeader() {
		return nil, false
	}
	select {
	case <-t.ready:
		return t.ctx, true
	default:
		return nil, false
	}
}

// WaitReadyLeader blocks until this node is a ready leader, or ctx ends.
func (n *Node) WaitReadyLeader(ctx context.Context) error {
	for {
		n.lmu.Lock()
		changed := n.lchanged
		n.lmu.Unlock()
		if n.ReadyLeader() {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-n.done:
			return ErrShutdown
		}
	}
}

// signalLocked wakes every WaitReadyLeader: a term started, became ready
// or ended, or the known leader changed. n.lmu must be held.
func (n *Node) signalLocked() {
	close(n.lchanged)
	n.lchanged = make(chan struct{})
}

// Following returns the id of the leader this node knows ("" for none)
// and a channel that is closed as soon as that changes: another leader,
// or none. A follower watches it to abandon a call in flight to a leader
// it no longer follows.
func (n *Node) Following() (leaderID string, changed <-chan struct{}) {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	return n.follow.id, n.follow.ctx.Done()
}

// FollowingContext returns a context that ends with parent, or as soon as
// this node stops following leaderID (the id Following returned): a call
// to that leader made under it is cancelled when the leader is replaced
// or lost, instead of waiting out its deadline on a leader that may
// swallow packets.
func (n *Node) FollowingContext(parent context.Context, leaderID string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	n.lmu.Lock()
	f := n.follow
	n.lmu.Unlock()
	if f.id != leaderID {
		cancel()
		return ctx, cancel
	}
	stop := context.AfterFunc(f.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// noteLeader records the leader this node knows now, waking whoever
// waits on a change.
func (n *Node) noteLeader() {
	id, _ := n.Leader()
	n.lmu.Lock()
	defer n.lmu.Unlock()
	if id == n.follow.id {
		return
	}
	n.follow.end()
	n.follow = newFollowing(id)
	n.signalLocked()
}

// watchLeaders follows Raft's leader observations (a blocking observer:
// none is dropped) until the node shuts down.
func (n *Node) watchLeaders(obs chan raft.Observation) {
	defer n.wg.Done()
	for {
		n.noteLeader()
		select {
		case <-obs:
		case <-n.done:
			return
		}
	}
}
