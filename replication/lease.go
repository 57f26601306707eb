package replication

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// A leader answers default reads from its own state while it holds a read
// lease, and must not otherwise. Raft's own lease check (LeaderLeaseTimeout)
// is no guard for reads: it runs on a timer, and a leader whose process was
// frozen (SIGSTOP, docker pause, a VM stall) for longer than an election
// wakes up still believing it leads, with every timer overdue. Until its
// next heartbeat answer tells it of the higher term it would answer reads
// from a state that misses every write the new leader acknowledged
// meanwhile.
//
// The lease here is proved, not assumed: it runs from the moment this
// leader SENT the newest AppendEntries that a quorum of voters accepted in
// its term. A follower that accepted one at time t rejects every vote
// request until its heartbeat timeout has passed since t (hashicorp/raft
// refuses votes while it knows a leader), so no other leader can be elected
// before t + HeartbeatTimeout. The lease ends a margin earlier, at
// t + leaseFraction × LeaderLeaseTimeout (at most the heartbeat timeout).
// A pause, a partition or a slow network all let the lease lapse, and the
// leader then confirms with a quorum (VerifyLeader) before it answers.

// leaseFraction is the part of LeaderLeaseTimeout a read lease lasts: the
// rest is a margin for clock rate differences between nodes.
const leaseFraction = 0.9

// readLease records, per follower, when this leader sent the newest
// AppendEntries the follower accepted in the leader's current term.
type readLease struct {
	mu      sync.Mutex
	term    uint64
	contact map[raft.ServerID]time.Time
}

// accepted notes that follower id accepted an AppendEntries of term that
// was sent at sent.
func (l *readLease) accepted(id raft.ServerID, term uint64, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if term < l.term {
		return
	}
	if term > l.term || l.contact == nil {
		l.term = term
		l.contact = make(map[raft.ServerID]time.Time)
	}
	if sent.After(l.contact[id]) {
		l.contact[id] = sent
	}
}

// since returns the start of the lease of a leader of term whose voters are
// voters (self included, counted as in contact now): the send time of the
// newest AppendEntries a quorum accepted. It is the zero time when no
// quorum accepted one in term.
func (l *readLease) since(self raft.ServerID, term uint64, voters []raft.ServerID, now time.Time) time.Time {
	times := make([]time.Time, 0, len(voters))
	l.mu.Lock()
	for _, id := range voters {
		switch {
		case id == self:
			times = append(times, now)
		case l.term == term:
			times = append(times, l.contact[id])
		default:
			times = append(times, time.Time{})
		}
	}
	l.mu.Unlock()
	if len(times) == 0 {
		return time.Time{}
	}
	// Newest first: the quorum-th newest contact is the newest that a
	// quorum of voters shares.
	slices.SortFunc(times, func(a, b time.Time) int { return b.Compare(a) })
	return times[len(times)/2]
}

// leaseTransport is the transport Raft uses; it notes in the read lease
// every AppendEntries (heartbeats included) a follower accepted.
type leaseTransport struct {
	noPipeline
	lease *readLease
}

// AppendEntries sends args to the follower and, when the follower accepted
// this leader's term, notes the time the request was sent: an answer read
// after a pause still dates from before it.
func (t leaseTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	sent := time.Now()
	err := t.noPipeline.AppendEntries(id, target, args, resp)
	if err == nil && resp.Term == args.Term {
		t.lease.accepted(id, args.Term, sent)
	}
	return err
}

// LeaseHeld reports whether this node is the leader and holds a read
// lease: a quorum of voters accepted an AppendEntries it sent less than
// the lease duration ago, so no other node can lead yet. A leader that
// does not hold it (after a pause, a partition, or a slow quorum) must
// confirm its leadership (VerifyLeader) before it answers from its own
// state; ConfirmLeader does that.
func (n *Node) LeaseHeld() bool {
	if !n.IsLeader() {
		return false
	}
	term := n.raft.CurrentTerm()
	conf := n.raft.GetConfiguration()
	if conf.Error() != nil {
		return false
	}
	self := raft.ServerID(n.cfg.NodeID)
	voters := make([]raft.ServerID, 0, len(conf.Configuration().Servers))
	isVoter := false
	for _, s := range conf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s.ID)
			isVoter = isVoter || s.ID == self
		}
	}
	if !isVoter {
		return false
	}
	now := time.Now()
	since := n.lease.since(self, term, voters, now)
	if since.IsZero() || now.Sub(since) >= n.leaseDuration() {
		return false
	}
	// The term must not have moved while the contacts were read.
	return n.raft.CurrentTerm() == term && n.IsLeader()
}

// leaseDuration is how long a read lease lasts from the quorum's contact.
func (n *Node) leaseDuration() time.Duration {
	if n.cfg.readLease > 0 {
		return n.cfg.readLease
	}
	return time.Duration(leaseFraction * float64(n.cfg.LeaderLeaseTimeout))
}

// ConfirmLeader returns nil when this node may answer a read from its own
// state as leader right now: it holds the read lease, or else a quorum has
// just confirmed its leadership (VerifyLeader). Call ReadIndex before it,
// and wait for the state machine to apply that index after it.
func (n *Node) ConfirmLeader(ctx context.Context) error {
	if n.LeaseHeld() {
		return nil
	}
	if !n.IsLeader() {
		return ErrNotLeader
	}
	return n.VerifyLeader(ctx)
}

// ReadIndex is the index a read must wait for the state machine to apply
// (WaitApplied) so that it sees every write committed so far, as far as
// this node knows: the newest entry the state machine is handed (a command
// or a configuration change) at or below Raft's commit index. Raft's noop
// and barrier entries never reach the state machine, whose applied index
// would never name them. On a leader that then confirms its leadership
// (ConfirmLeader, VerifyLeader) it covers every write acknowledged by any
// node before the call: the applied index would not, since followers apply
// an entry as soon as they learn it is committed, which may be before the
// leader's own state machine has.
func (n *Node) ReadIndex() uint64 {
	return n.logs.lastFSMIndex(n.raft.CommitIndex())
}
