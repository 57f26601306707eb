package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/replication"
	"coffer/seal"
)

// messageError gives a sentinel a user-facing message of its own while
// errors.Is still finds the sentinel.
type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.msg }
func (e *messageError) Unwrap() error { return e.err }

// withMessage wraps err with a message that replaces its text.
func withMessage(err error, format string, args ...any) error {
	return &messageError{msg: fmt.Sprintf(format, args...), err: err}
}

// notLeaderError says who the leader is, when known.
func (s *Server) notLeaderError() error {
	id, _ := s.raft.Leader()
	if id == "" {
		return withMessage(replication.ErrNoLeader, "no leader is known right now: retry shortly, or check that a quorum of nodes is up")
	}
	return withMessage(replication.ErrNotLeader, "node %s is not the leader (%s is): send the request to the leader", s.cfg.NodeID, id)
}

// minIndexWait bounds how long a read waits for its min_index: a node that
// lags further behind answers Unavailable so the client asks another one.
const minIndexWait = 5 * time.Second

// staleMinIndexWait is the same bound for stale reads.
const staleMinIndexWait = 500 * time.Millisecond

// beginRead admits a read at the consistency it asks for and returns the
// ReadMeta that describes the answer. It waits for opts.MinIndex first.
func (s *Server) beginRead(ctx context.Context, opts *pb.ReadOptions) (*pb.ReadMeta, error) {
	if s.seal.Sealed() {
		return nil, seal.ErrSealed
	}
	if opts == nil {
		opts = &pb.ReadOptions{}
	}
	if opts.MaxStalenessMs < 0 {
		return nil, invalidf("max_staleness must not be negative")
	}
	if opts.MinIndex > 0 && s.fsm.AppliedIndex() < opts.MinIndex {
		wait := minIndexWait
		if opts.Consistency == pb.Consistency_CONSISTENCY_STALE {
			// A stale read is asked for an answer now: a node that lags
			// says so quickly and the client asks another one.
			wait = staleMinIndexWait
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := s.fsm.WaitApplied(wctx, opts.MinIndex)
		cancel()
		if err != nil {
			return nil, withMessage(ErrMinIndex, "node %s has not applied index %d yet (at %d): retry, or read from another node", s.cfg.NodeID, opts.MinIndex, s.fsm.AppliedIndex())
		}
	}
	leader := s.raft.IsLeader()
	switch opts.Consistency {
	case pb.Consistency_CONSISTENCY_STALE:
		if !leader && opts.MaxStalenessMs > 0 {
			if ms := s.lastContactMs(); ms < 0 || ms > opts.MaxStalenessMs {
				return nil, ErrStale
			}
		}
	case pb.Consistency_CONSISTENCY_DEFAULT:
		if !leader {
			if err := s.readIndex(ctx, false); err != nil {
				return nil, err
			}
			break
		}
		if !s.raft.ReadyLeader() {
			return nil, withMessage(replication.ErrNoLeader, "node %s became leader and is still applying earlier entries: retry shortly", s.cfg.NodeID)
		}
	case pb.Consistency_CONSISTENCY_LINEARIZABLE:
		if !leader {
			if err := s.readIndex(ctx, true); err != nil {
				return nil, err
			}
			break
		}
		if !s.raft.ReadyLeader() {
			return nil, withMessage(replication.ErrNoLeader, "node %s became leader and is still applying earlier entries: retry shortly", s.cfg.NodeID)
		}
		// Once the leader is ready (its barrier applied every earlier
		// term's entry) every write it acknowledged is in its FSM, so
		// confirming leadership with a quorum is all a linearizable read
		// needs.
		if err := s.raft.VerifyLeader(ctx); err != nil {
			return nil, err
		}
	default:
		return nil, invalidf("unknown consistency %d: use stale, default or linearizable", opts.Consistency)
	}
	// A stale read is stale unless this node is a leader that has applied
	// every earlier term's entry (a new leader may still miss writes its
	// predecessor acknowledged).
	return s.readMeta(opts.Consistency == pb.Consistency_CONSISTENCY_STALE && !(leader && s.raft.ReadyLeader())), nil
}

// readMeta describes this node for a read response.
func (s *Server) readMeta(stale bool) *pb.ReadMeta {
	id, _ := s.raft.Leader()
	return &pb.ReadMeta{
		NodeId:        s.cfg.NodeID,
		AppliedIndex:  s.fsm.AppliedIndex(),
		LeaderId:      id,
		LastContactMs: max(s.lastContactMs(), 0),
		Stale:         stale,
	}
}

// decrypt opens a stored value, reloading the keyring once when the value
// uses a term this node has not loaded yet (a rotation it only replicated).
func (s *Server) decrypt(path string, ciphertext []byte) ([]byte, error) {
	pt, err := s.seal.Decrypt(path, ciphertext)
	if errors.Is(err, seal.ErrUnknownTerm) {
		if rerr := s.reloadKeyring(); rerr != nil {
			return nil, rerr
		}
		pt, err = s.seal.Decrypt(path, ciphertext)
	}
	return pt, err
}

// unixNano converts a time to nanoseconds, with the zero time as 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// afterRead sets the applied index of meta once the state has been read:
// an answer never holds data newer than the index it reports, so a client
// that passes it back as min_index never reads back in time.
func (s *Server) afterRead(meta *pb.ReadMeta) *pb.ReadMeta {
	if meta != nil {
		meta.AppliedIndex = s.fsm.AppliedIndex()
	}
	return meta
}
