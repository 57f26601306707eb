package seal

import (
	"bytes"
	"crypto/subtle"
	"fmt"
)

// Quorum collects unseal key shares for an operation that a threshold of
// key holders must approve while the node stays unsealed (generate-root),
// apart from the node's own unseal progress. Like unsealing, it keeps up
// to three different shares for one index, so that a garbage share sent
// first cannot block the real one, and it proves the shares by opening
// the stored root key with them.
type Quorum struct {
	stored Stored
	shares [][]byte
}

// NewQuorum starts collecting shares for stored.
func NewQuorum(stored *Stored) (*Quorum, error) {
	if stored == nil {
		return nil, ErrNotInitialized
	}
	if err := stored.validate(); err != nil {
		return nil, err
	}
	return &Quorum{stored: Stored{Shares: stored.Shares, Threshold: stored.Threshold, WrappedRootKey: bytes.Clone(stored.WrappedRootKey)}}, nil
}

// Required is the number of shares (of different indexes) needed.
func (q *Quorum) Required() int { return q.stored.Threshold }

// Progress is the number of different share indexes held.
func (q *Quorum) Progress() int {
	if q.stored.Shares == 1 {
		return min(len(q.shares), 1)
	}
	return distinctIndexes(q.shares)
}

// Add submits one share. It returns done once a threshold of shares opens
// the stored root key; ErrWrongShares (and the shares are dropped) when a
// threshold is held but no set of them opens it; ErrInvalidShare or
// ErrDuplicateShare for a share that cannot count, leaving the rest.
func (q *Quorum) Add(share []byte) (done bool, err error) {
	cfg := q.stored.config()
	if len(share) != cfg.shareSize() {
		return false, fmt.Errorf("%w: it is %d bytes, this cluster's shares are %d", ErrInvalidShare, len(share), cfg.shareSize())
	}
	if cfg.Shares > 1 && share[KeySize] == 0 {
		return false, fmt.Errorf("%w: its index is 0", ErrInvalidShare)
	}
	sameIndex := 0
	for _, held := range q.shares {
		if subtle.ConstantTimeCompare(held, share) == 1 {
			return false, ErrDuplicateShare
		}
		if cfg.Shares > 1 && held[KeySize] == share[KeySize] {
			sameIndex++
		}
	}
	if sameIndex >= maxCandidatesPerIndex || len(q.shares) >= maxHeldShares {
		return false, fmt.Errorf("%w: too many different shares held for one index; cancel and start again", ErrDuplicateShare)
	}
	q.shares = append(q.shares, bytes.Clone(share))
	if q.Progress() < cfg.Threshold {
		return false, nil
	}
	rootKey, err := openRootKey(&q.stored, candidateSets(q.shares, cfg.Shares == 1, cfg.Threshold))
	clear(rootKey)
	q.Zero()
	if err != nil {
		return false, err
	}
	return true, nil
}

// Zero drops the held shares, zeroed.
func (q *Quorum) Zero() {
	for _, sh := range q.shares {
		clear(sh)
	}
	q.shares = nil
}
