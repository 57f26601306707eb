package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// rekeying is the rekey attempt in progress on the leader (in memory, as
// in Vault: a new leader starts with none).
type rekeying struct {
	mu      sync.Mutex
	attempt *rekeyAttempt
	// limit bounds share submissions per caller address (apart from
	// unseal's and generate-root's).
	limit *addrLimiter
}

type rekeyAttempt struct {
	nonce string
	rekey *seal.Rekey
	// expect is the seal record the attempt started from, byte for byte:
	// the new record replaces exactly it (OP_SYS_CAS).
	expect   []byte
	recovery bool
}

// rekeyOutcomeWait bounds how long the leader looks for the new record
// in its state after a write whose outcome its answer did not tell.
const rekeyOutcomeWait = 5 * time.Second

// Rekey runs Vault's rekey flow: init with the new share count and
// threshold, update with a threshold of the current shares and the
// attempt's nonce; the last one returns the new shares, once. The shares
// are proved by opening the stored root key; the new record (the root
// key wrapped by a new operator key) replaces the one the attempt started
// from, or nothing: a rekey or migration that won meanwhile makes this
// one fail.
func (y *sysServer) Rekey(ctx context.Context, req *pb.RekeyRequest) (*pb.RekeyStatus, error) {
	r := &y.rekey
	r.mu.Lock()
	defer r.mu.Unlock()
	switch req.GetAction() {
	case "", "status":
		return y.rekeyStatus(r), nil
	case "cancel":
		if r.attempt != nil && subtle.ConstantTimeCompare([]byte(req.GetNonce()), []byte(r.attempt.nonce)) != 1 {
			return nil, invalidf("cancelling needs the nonce of the rekey in progress (-nonce)")
		}
		if r.attempt != nil {
			r.attempt.rekey.Zero()
			r.attempt = nil
			y.logger.Info("rekey cancelled")
		}
		return y.rekeyStatus(r), nil
	case "init":
		return y.rekeyInit(r, req)
	case "update":
		return y.rekeyUpdate(ctx, r, req)
	}
	return nil, invalidf("rekey action %q is unknown: use status, init, update or cancel", req.GetAction())
}

// rekeyStatus describes the attempt in progress, or the stored
// configuration when there is none. r.mu must be held.
func (y *sysServer) rekeyStatus(r *rekeying) *pb.RekeyStatus {
	st := &pb.RekeyStatus{}
	if a := r.attempt; a != nil {
		cfg := a.rekey.Config()
		st.Started, st.Nonce = true, a.nonce
		st.Progress, st.Required = uint32(a.rekey.Progress()), uint32(a.rekey.Required())
		st.T, st.N, st.Recovery = uint32(cfg.Threshold), uint32(cfg.Shares), a.recovery
	} else if stored, err := y.storedSeal(); err == nil && stored != nil {
		st.Required = uint32(stored.Threshold)
		st.Recovery = stored.SealType() == seal.TypeStatic
	}
	if stored, err := y.storedSeal(); err == nil && stored != nil {
		st.KeyId = shareKeyID(stored)
	}
	return st
}

// shareKeyID names the operator key of a seal record without revealing
// it: a hash of the root key it wraps (ciphertext), so the holders of a
// set of shares can tell whether the cluster's record is theirs.
func shareKeyID(s *seal.Stored) string {
	sum := sha256.Sum256(s.WrappedRootKey)
	return hex.EncodeToString(sum[:8])
}

func (y *sysServer) rekeyInit(r *rekeying, req *pb.RekeyRequest) (*pb.RekeyStatus, error) {
	if y.keys.Sealed() {
		return nil, seal.ErrSealed
	}
	if r.attempt != nil {
		return nil, invalidf("a rekey is in progress: finish it, or cancel it (-cancel)")
	}
	cfg := seal.Config{Shares: int(req.GetSecretShares()), Threshold: int(req.GetSecretThreshold())}
	raw, err := y.store.SysGet(sysSealKey)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, ErrNotInitialized
	}
	if err != nil {
		return nil, err
	}
	stored, err := seal.UnmarshalStored(raw)
	if err != nil {
		return nil, err
	}
	rk, err := seal.NewRekey(stored, cfg)
	if err != nil {
		return nil, err
	}
	r.attempt = &rekeyAttempt{nonce: rand.Text(), rekey: rk, expect: raw, recovery: stored.SealType() == seal.TypeStatic}
	y.logger.Info("rekey started", "required", rk.Required(), "new_shares", cfg.Shares, "new_threshold", cfg.Threshold)
	return y.rekeyStatus(r), nil
}

func (y *sysServer) rekeyUpdate(ctx context.Context, r *rekeying, req *pb.RekeyRequest) (*pb.RekeyStatus, error) {
	if r.limit != nil && !r.limit.allow(ctx) {
		return nil, ErrRateLimited
	}
	a := r.attempt
	if a == nil {
		return nil, invalidf("no rekey is in progress: start one with -init")
	}
	if subtle.ConstantTimeCompare([]byte(req.GetNonce()), []byte(a.nonce)) != 1 {
		return nil, invalidf("the nonce does not match the rekey in progress: use the nonce -init or -status printed")
	}
	if y.keys.Sealed() {
		return nil, seal.ErrSealed
	}
	res, err := a.rekey.Add(req.GetKey())
	if errors.Is(err, seal.ErrWrongShares) {
		y.logger.Warn("rekey: the shares do not open this cluster's root key; progress reset")
		return nil, withMessage(seal.ErrWrongShares, "the shares do not open this cluster's root key (one of them is wrong or from another cluster): the rekey's progress was reset to 0; submit a threshold of the current shares again with the same nonce")
	}
	if err != nil || res == nil {
		if err != nil {
			return nil, err
		}
		return y.rekeyStatus(r), nil
	}
	defer func() {
		for _, sh := range res.Shares {
			clear(sh)
		}
	}()
	// The shares were consumed: whatever happens below, this attempt is
	// over.
	r.attempt = nil
	next := res.Stored.Marshal()
	out, err := y.props.propose(ctx, &fsmpb.Command{
		Op:        fsmpb.Op_OP_SYS_CAS,
		SysExpect: []*fsmpb.SysEntry{{Key: sysSealKey, Value: a.expect}},
		Sys:       []*fsmpb.SysEntry{{Key: sysSealKey, Value: next}},
	})
	if errors.Is(err, fsm.ErrCASMismatch) {
		return nil, withMessage(fsm.ErrCASMismatch, "the seal record changed while the rekey ran (another rekey or a seal migration won): the old shares still hold; start the rekey again")
	}
	var index uint64
	unknown := false
	if err == nil {
		index = out.Index
	} else if index = y.awaitRecord(ctx, next); index == 0 {
		// The entry may still commit (a new leader keeps what a quorum
		// holds): dropping the new shares now could leave nobody able to
		// unseal. They go back to the caller with the outcome unknown.
		unknown = true
		y.logger.Warn("rekey: the new seal record's outcome is unknown; the new shares were returned with a warning: keep the old ones too", "error", err)
	}
	cfg := a.rekey.Config()
	st := &pb.RekeyStatus{
		Started: true, Nonce: a.nonce, Complete: !unknown, Progress: uint32(a.rekey.Required()), Required: uint32(a.rekey.Required()),
		T: uint32(cfg.Threshold), N: uint32(cfg.Shares), Recovery: a.recovery, Index: index,
		OutcomeUnknown: unknown, KeyId: shareKeyID(res.Stored),
	}
	for _, sh := range res.Shares {
		st.Keys = append(st.Keys, append([]byte(nil), sh...))
	}
	if !unknown {
		y.logger.Info("rekeyed: the old shares no longer open the root key", "shares", cfg.Shares, "threshold", cfg.Threshold, "index", index)
	}
	return st, nil
}

// awaitRecord looks, for a bounded time, for the record next in this
// node's state after a write whose answer was lost (a leadership change
// while it committed): the index it was applied at, or 0 when it did not
// show up, and the old record stands.
func (y *sysServer) awaitRecord(ctx context.Context, next []byte) uint64 {
	ctx, cancel := context.WithTimeout(ctx, rekeyOutcomeWait)
	defer cancel()
	for {
		idx := y.store.AppliedIndex()
		if raw, err := y.store.SysGet(sysSealKey); err == nil && subtle.ConstantTimeCompare(raw, next) == 1 {
			return idx
		}
		if err := y.store.WaitApplied(ctx, idx+1); err != nil {
			return 0
		}
	}
}
