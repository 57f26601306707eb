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
	return &Quorum{stored: *stored.Clone()}, nil
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
	rootKey, done, err := q.add(share)
	clear(rootKey)
	return done, err
}

// add is Add, returning the opened root key once done (the caller zeroes
// it). The held shares are zeroed and dropped whenever a threshold was
// tried.
func (q *Quorum) add(share []byte) (rootKey []byte, done bool, err error) {
	cfg := q.stored.config()
	if len(share) != cfg.shareSize() {
		return nil, false, fmt.Errorf("%w: it is %d bytes, this cluster's shares are %d", ErrInvalidShare, len(share), cfg.shareSize())
	}
	if cfg.Shares > 1 && share[KeySize] == 0 {
		return nil, false, fmt.Errorf("%w: its index is 0", ErrInvalidShare)
	}
	sameIndex := 0
	for _, held := range q.shares {
		if subtle.ConstantTimeCompare(held, share) == 1 {
			return nil, false, ErrDuplicateShare
		}
		if cfg.Shares > 1 && held[KeySize] == share[KeySize] {
			sameIndex++
		}
	}
	if sameIndex >= maxCandidatesPerIndex || len(q.shares) >= maxHeldShares {
		return nil, false, fmt.Errorf("%w: too many different shares held for one index; cancel and start again", ErrDuplicateShare)
	}
	q.shares = append(q.shares, bytes.Clone(share))
	if q.Progress() < cfg.Threshold {
		return nil, false, nil
	}
	rootKey, err = openRootKey(&q.stored, candidateSets(q.shares, cfg.Shares == 1, cfg.Threshold))
	q.Zero()
	if err != nil {
		return nil, false, err
	}
	return rootKey, true, nil
}

// Zero drops the held shares, zeroed.
func (q *Quorum) Zero() {
	for _, sh := range q.shares {
		clear(sh)
	}
	q.shares = nil
}

// Rekey is a rekey in progress: it collects a threshold of the current
// operator key's shares (unseal shares, or recovery shares under the
// static seal) like Quorum, and once they open the root key it makes a
// new operator key, splits it under the new configuration and wraps the
// root key with it. The root key itself, and so the keyring and every
// value, stays as it is; the old shares open nothing once the new record
// is stored.
type Rekey struct {
	q   Quorum
	cfg Config
}

// RekeyResult is a finished rekey: the record to store in place of the
// old one, and the new shares, returned once (the caller hands them out
// and zeroes them).
type RekeyResult struct {
	Stored *Stored
	Shares [][]byte
}

// NewRekey starts a rekey of stored to the configuration cfg. Errors:
// ErrNotInitialized, ErrInvalidStored, and ErrInvalidConfig for cfg.
func NewRekey(stored *Stored, cfg Config) (*Rekey, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	q, err := NewQuorum(stored)
	if err != nil {
		return nil, err
	}
	return &Rekey{q: *q, cfg: cfg}, nil
}

// Config is the configuration the rekey makes.
func (r *Rekey) Config() Config { return r.cfg }

// Required is the number of current shares (of different indexes) needed.
func (r *Rekey) Required() int { return r.q.Required() }

// Progress is the number of different current share indexes held.
func (r *Rekey) Progress() int { return r.q.Progress() }

// Add submits one current share, with Quorum.Add's errors. Once a
// threshold opens the root key it returns the new record and shares; nil
// while more shares are needed.
func (r *Rekey) Add(share []byte) (*RekeyResult, error) {
	rootKey, done, err := r.q.add(share)
	defer clear(rootKey)
	if err != nil || !done {
		return nil, err
	}
	newKey := make([]byte, KeySize)
	defer clear(newKey)
	randRead(newKey)
	wrapped, err := wrap(newKey, rootKey, aadRootKey)
	if err != nil {
		return nil, err
	}
	var shares [][]byte
	if r.cfg.Shares == 1 {
		shares = [][]byte{bytes.Clone(newKey)}
	} else if shares, err = Split(newKey, r.cfg.Shares, r.cfg.Threshold); err != nil {
		return nil, err
	}
	next := r.q.stored.Clone()
	next.Shares, next.Threshold, next.WrappedRootKey = r.cfg.Shares, r.cfg.Threshold, wrapped
	return &RekeyResult{Stored: next, Shares: shares}, nil
}

// Zero drops the held shares, zeroed.
func (r *Rekey) Zero() { r.q.Zero() }
