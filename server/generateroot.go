package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"sync"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// rootTokenLen is the length of a generated token ("cof." and 26
// characters), and so of generate-root's one-time pad.
var rootTokenLen = len(newToken())

// rootGeneration is the generate-root attempt in progress on the leader
// (in memory, as in Vault: a new leader starts with none).
type rootGeneration struct {
	mu      sync.Mutex
	attempt *rootAttempt
	// limit bounds share submissions per caller address (apart from
	// unseal's, so that one cannot starve the other).
	limit *addrLimiter
}

type rootAttempt struct {
	nonce  string
	otp    []byte
	quorum *seal.Quorum
}

func (a *rootAttempt) zero() {
	clear(a.otp)
	a.quorum.Zero()
}

// GenerateRoot runs Vault's generate-root flow: init with a one-time pad,
// update with a threshold of unseal key shares and the attempt's nonce,
// and the new root token comes back XORed with the pad. The shares are
// proved by opening the stored root key; the token is stored like the
// initial one (hashed, sealed by the barrier).
func (y *sysServer) GenerateRoot(ctx context.Context, req *pb.GenerateRootRequest) (*pb.GenerateRootStatus, error) {
	g := &y.rootGen
	g.mu.Lock()
	defer g.mu.Unlock()
	status := func() *pb.GenerateRootStatus {
		st := &pb.GenerateRootStatus{OtpLength: uint32(rootTokenLen)}
		if a := g.attempt; a != nil {
			st.Started, st.Nonce = true, a.nonce
			st.Progress, st.Required = uint32(a.quorum.Progress()), uint32(a.quorum.Required())
		} else if stored, err := y.storedSeal(); err == nil && stored != nil {
			st.Required = uint32(stored.Threshold)
		}
		return st
	}
	switch req.GetAction() {
	case "", "status":
		return status(), nil
	case "cancel":
		if g.attempt != nil && subtle.ConstantTimeCompare([]byte(req.GetNonce()), []byte(g.attempt.nonce)) != 1 {
			return nil, invalidf("cancelling needs the nonce of the generate-root attempt in progress (-nonce)")
		}
		if g.attempt != nil {
			g.attempt.zero()
			g.attempt = nil
			y.logger.Info("generate-root attempt cancelled")
		}
		return status(), nil
	case "init":
		return y.generateRootInit(g, req, status)
	case "update":
		return y.generateRootUpdate(ctx, g, req, status)
	}
	return nil, invalidf("generate-root action %q is unknown: use status, init, update or cancel", req.GetAction())
}

func (y *sysServer) generateRootInit(g *rootGeneration, req *pb.GenerateRootRequest, status func() *pb.GenerateRootStatus) (*pb.GenerateRootStatus, error) {
	if y.keys.Sealed() {
		return nil, seal.ErrSealed
	}
	if g.attempt != nil {
		return nil, invalidf("a generate-root attempt is in progress: finish it, or cancel it (-cancel)")
	}
	otp, err := base64.StdEncoding.DecodeString(req.GetOtp())
	if err != nil || len(otp) != rootTokenLen {
		clear(otp)
		return nil, invalidf("the OTP must be base64 of %d random bytes (coffer operator generate-root -init makes one)", rootTokenLen)
	}
	stored, err := y.storedSeal()
	if err != nil {
		return nil, err
	}
	q, err := seal.NewQuorum(stored)
	if err != nil {
		clear(otp)
		return nil, err
	}
	g.attempt = &rootAttempt{nonce: rand.Text(), otp: otp, quorum: q}
	y.logger.Info("generate-root attempt started", "required", q.Required())
	return status(), nil
}

func (y *sysServer) generateRootUpdate(ctx context.Context, g *rootGeneration, req *pb.GenerateRootRequest, status func() *pb.GenerateRootStatus) (*pb.GenerateRootStatus, error) {
	if g.limit != nil && !g.limit.allow(ctx) {
		return nil, ErrRateLimited
	}
	a := g.attempt
	if a == nil {
		return nil, invalidf("no generate-root attempt is in progress: start one with -init")
	}
	if subtle.ConstantTimeCompare([]byte(req.GetNonce()), []byte(a.nonce)) != 1 {
		return nil, invalidf("the nonce does not match the generate-root attempt in progress")
	}
	if y.keys.Sealed() {
		return nil, seal.ErrSealed
	}
	done, err := a.quorum.Add(req.GetKey())
	if errors.Is(err, seal.ErrWrongShares) {
		y.logger.Warn("generate-root: the shares do not open this cluster's root key; progress reset")
	}
	if err != nil || !done {
		return status(), err
	}
	token := newToken()
	key, value, err := tokenEntry(y.keys, token, []string{rootPolicy}, time.Now())
	if err != nil {
		return nil, err
	}
	if _, err := y.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: key, Value: value}}}); err != nil {
		// The shares were good but the token was not stored: the attempt
		// stays, and the holders submit their shares again.
		return nil, err
	}
	enc := make([]byte, rootTokenLen)
	for i := range enc {
		enc[i] = token[i] ^ a.otp[i]
	}
	st := status()
	st.Complete, st.EncodedToken = true, base64.StdEncoding.EncodeToString(enc)
	a.zero()
	g.attempt = nil
	y.logger.Info("generate-root: a new root token was made")
	return st, nil
}
