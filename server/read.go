package server

import (
	"context"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/replication"
	"coffer/seal"
)

// readGate admits reads at the consistency they ask for (DESIGN.md §4)
// and describes how each was answered (ReadMeta).
type readGate struct {
	nodeID string
	sealed interface{ Sealed() bool }
	raft   readRaft
	state  appliedState
	index  readIndexer
	// metrics counts the reads admitted.
	metrics *nodeMetrics
}

// readRaft is what a read needs of the Raft node.
type readRaft interface {
	IsLeader() bool
	ReadyLeader() bool
	VerifyLeader(ctx context.Context) error
	ConfirmLeader(ctx context.Context) error
	LeaseHeld() bool
	ReadIndex() uint64
	Leader() (id, addr string)
	LastContact() time.Time
}

// readIndexer brings a follower up to the leader's index before a read.
type readIndexer interface {
	readIndex(ctx context.Context, linearizable bool) error
}

// minIndexWait bounds how long a read waits for its min_index: a node that
// lags further behind answers Unavailable so the client asks another one.
const minIndexWait = 5 * time.Second

// staleMinIndexWait is the same bound for stale reads.
const staleMinIndexWait = 500 * time.Millisecond

// begin admits a read at the consistency it asks for and returns the
// ReadMeta that describes the answer. It waits for opts.MinIndex first.
func (g *readGate) begin(ctx context.Context, opts *pb.ReadOptions) (*pb.ReadMeta, error) {
	if g.sealed.Sealed() {
		return nil, seal.ErrSealed
	}
	if opts == nil {
		opts = &pb.ReadOptions{}
	}
	if opts.MaxStalenessMs < 0 {
		return nil, invalidf("max_staleness must not be negative")
	}
	if opts.MinIndex > 0 && g.state.AppliedIndex() < opts.MinIndex {
		wait := minIndexWait
		if opts.Consistency == pb.Consistency_CONSISTENCY_STALE {
			// A stale read is asked for an answer now: a node that lags
			// says so quickly and the client asks another one.
			wait = staleMinIndexWait
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := g.state.WaitApplied(wctx, opts.MinIndex)
		cancel()
		if err != nil {
			return nil, withMessage(ErrMinIndex, "node %s has not applied index %d yet (at %d): retry, or read from another node", g.nodeID, opts.MinIndex, g.state.AppliedIndex())
		}
	}
	leader := g.raft.IsLeader()
	switch opts.Consistency {
	case pb.Consistency_CONSISTENCY_STALE:
		if !leader && opts.MaxStalenessMs > 0 {
			if ms := lastContactMs(g.raft); ms < 0 || ms > opts.MaxStalenessMs {
				return nil, ErrStale
			}
		}
	case pb.Consistency_CONSISTENCY_DEFAULT:
		if !leader {
			if err := g.index.readIndex(ctx, false); err != nil {
				return nil, err
			}
			break
		}
		// The leader answers from its own state while it holds its read
		// lease; once the lease lapsed (it was frozen, cut off, or its
		// quorum is slow) it first confirms its leadership with a quorum.
		if err := g.leaderRead(ctx, g.raft.ConfirmLeader); err != nil {
			return nil, err
		}
	case pb.Consistency_CONSISTENCY_LINEARIZABLE:
		if !leader {
			if err := g.index.readIndex(ctx, true); err != nil {
				return nil, err
			}
			break
		}
		if err := g.leaderRead(ctx, g.raft.VerifyLeader); err != nil {
			return nil, err
		}
	default:
		return nil, invalidf("unknown consistency %d: use stale, default or linearizable", opts.Consistency)
	}
	// A stale read is stale unless this node is a leader that has applied
	// every earlier term's entry (a new leader may still miss writes its
	// predecessor acknowledged), holds its read lease (a leader woken from
	// a freeze may have a successor already), and has applied its commit
	// index (a follower may already have applied and served an entry the
	// leader's state machine has not reached: the chaos suite read a
	// version back in time so).
	stale := opts.Consistency == pb.Consistency_CONSISTENCY_STALE && !(leader && g.raft.ReadyLeader() && g.raft.LeaseHeld() && g.leaderCaughtUp())
	g.metrics.readAdmitted(opts.Consistency, stale)
	return g.readMeta(stale), nil
}

// leaderReadWait bounds how long a read on the leader waits for its own
// state machine to apply the read index.
const leaderReadWait = 5 * time.Second

// leaderRead admits a read on the leader: once it is ready (its barrier
// applied every earlier term's entry), it takes the read index (the
// committed index, which may be ahead of its own applied index: followers
// may already have applied and served those entries), confirms its
// leadership with confirm, and waits until its state machine applied the
// read index.
func (g *readGate) leaderRead(ctx context.Context, confirm func(context.Context) error) error {
	if !g.raft.ReadyLeader() {
		return withMessage(replication.ErrNoLeader, "node %s became leader and is still applying earlier entries: retry shortly", g.nodeID)
	}
	idx := g.raft.ReadIndex()
	if err := confirm(ctx); err != nil {
		return err
	}
	if g.state.AppliedIndex() >= idx {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, leaderReadWait)
	defer cancel()
	if err := g.state.WaitApplied(wctx, idx); err != nil {
		return withMessage(ErrCatchingUp, "leader %s has not applied its committed index %d yet (at %d): retry", g.nodeID, idx, g.state.AppliedIndex())
	}
	return nil
}

// leaderCaughtUp reports whether this node's state machine has applied
// the commit index (the read index a leader would take now).
func (g *readGate) leaderCaughtUp() bool {
	idx := g.raft.ReadIndex()
	return g.state.AppliedIndex() >= idx
}

// readMeta describes this node for a read response.
func (g *readGate) readMeta(stale bool) *pb.ReadMeta {
	id, _ := g.raft.Leader()
	return &pb.ReadMeta{
		NodeId:        g.nodeID,
		AppliedIndex:  g.state.AppliedIndex(),
		LeaderId:      id,
		LastContactMs: max(lastContactMs(g.raft), 0),
		Stale:         stale,
	}
}

// unixNano converts a time to nanoseconds, with the zero time as 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// finish sets the applied index of meta once the state has been read:
// an answer never holds data newer than the index it reports, so a client
// that passes it back as min_index never reads back in time.
func (g *readGate) finish(meta *pb.ReadMeta) *pb.ReadMeta {
	if meta != nil {
		meta.AppliedIndex = g.state.AppliedIndex()
	}
	return meta
}

// contactRaft says whether this node leads and when it last heard from
// the leader.
type contactRaft interface {
	IsLeader() bool
	LastContact() time.Time
}

// lastContactMs is the time since this node heard from the leader; 0 on
// the leader, -1 when it never heard from one.
func lastContactMs(r contactRaft) int64 {
	if r.IsLeader() {
		return 0
	}
	lc := r.LastContact()
	if lc.IsZero() {
		return -1
	}
	return time.Since(lc).Milliseconds()
}
