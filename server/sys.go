package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// fsmCommand is the state machine's command type.
type fsmCommand = fsmpb.Command

// Default seal configuration of init, as in Vault.
const (
	defaultShares    = 5
	defaultThreshold = 3
)

// Init creates the cluster's keys and root token once. The shares and the
// token are in the response only; the cluster stores the root key wrapped by
// the unseal key, the keyring wrapped by the root key and the token's hash.
func (s *Server) Init(ctx context.Context, req *pb.InitRequest) (*pb.InitResponse, error) {
	s.initMu.Lock()
	defer s.initMu.Unlock()
	cfg := seal.Config{Shares: int(req.SecretShares), Threshold: int(req.SecretThreshold)}
	if cfg.Shares == 0 && cfg.Threshold == 0 {
		cfg = seal.Config{Shares: defaultShares, Threshold: defaultThreshold}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	token := req.RootToken
	if token == "" {
		token = newToken()
	} else if len(token) > 128 || strings.ContainsAny(token, " \t\r\n") {
		return nil, invalidf("root token must be at most 128 characters without spaces")
	}
	if _, err := s.fsm.SysGet(sysSealKey); err == nil {
		return nil, ErrAlreadyInitialized
	}
	res, err := seal.Initialize(cfg)
	if err != nil {
		return nil, err
	}
	tk, tv := tokenEntry(token, []string{rootPolicy}, time.Now())
	_, err = s.apply(ctx, &fsmCommand{
		Op: fsmpb.Op_OP_SYS_PUT,
		Sys: []*fsmpb.SysEntry{
			{Key: sysSealKey, Value: res.Stored.Marshal()},
			{Key: sysKeyringKey, Value: res.WrappedKeyring},
			{Key: tk, Value: tv},
		},
		SysRequireAbsent: sysSealKey,
	})
	if errors.Is(err, fsm.ErrAlreadyExists) {
		return nil, ErrAlreadyInitialized
	}
	if err != nil {
		return nil, err
	}
	s.logger.Info("initialized", "shares", cfg.Shares, "threshold", cfg.Threshold)
	return &pb.InitResponse{Keys: res.Shares, RootToken: token}, nil
}

// storedSeal loads the replicated seal record, or nil before init.
func (s *Server) storedSeal() (*seal.Stored, error) {
	raw, err := s.fsm.SysGet(sysSealKey)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return seal.UnmarshalStored(raw)
}

// Unseal adds one key share to this node's progress, or resets it.
func (s *Server) Unseal(ctx context.Context, req *pb.UnsealRequest) (*pb.SealStatus, error) {
	stored, err := s.storedSeal()
	if err != nil {
		return nil, err
	}
	if req.Reset_ {
		s.seal.ResetProgress()
		return sealStatusPB(s.seal.Status(stored)), nil
	}
	if stored == nil {
		// This node may not have applied the init yet.
		stored, err = s.awaitInit(ctx)
		if err != nil {
			return nil, err
		}
	}
	if stored == nil {
		return nil, ErrNotInitialized
	}
	wrapped, err := s.fsm.SysGet(sysKeyringKey)
	if err != nil {
		return nil, fmt.Errorf("server: read keyring: %w", err)
	}
	wasSealed := s.seal.Sealed()
	st, err := s.seal.Unseal(stored, wrapped, req.Key)
	if err != nil {
		s.logger.Warn("unseal share rejected", "error", err)
		return nil, err
	}
	if wasSealed && !st.Sealed {
		s.logger.Info("unsealed", "key_term", st.Term)
		s.unsealedNode()
	}
	return sealStatusPB(st), nil
}

// Seal drops this node's keys. The node keeps replicating and voting.
func (s *Server) Seal(ctx context.Context, _ *pb.SealRequest) (*pb.SealStatus, error) {
	if err := requireRoot(ctx); err != nil {
		return nil, err
	}
	s.sealNode()
	s.logger.Info("sealed by request")
	stored, err := s.storedSeal()
	if err != nil {
		return nil, err
	}
	return sealStatusPB(s.seal.Status(stored)), nil
}

// Status reports the seal and Raft state of this node.
func (s *Server) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	stored, err := s.storedSeal()
	if err != nil {
		return nil, err
	}
	st := s.seal.Status(stored)
	leaderID, _ := s.raft.Leader()
	resp := &pb.StatusResponse{
		Seal:           sealStatusPB(st),
		NodeId:         s.cfg.NodeID,
		RaftState:      s.raft.State(),
		LeaderId:       leaderID,
		Term:           s.raft.Term(),
		AppliedIndex:   s.fsm.AppliedIndex(),
		CommitIndex:    s.raft.CommitIndex(),
		Version:        Version,
		KeyTerm:        st.Term,
		LastContactMs:  s.lastContactMs(),
		MemoryRssBytes: residentMemory(),
	}
	if leaderID == s.cfg.NodeID {
		resp.LeaderAddress = s.advertisedAPI()
	} else {
		_, resp.LeaderAddress = s.leader()
	}
	if stored == nil && !s.raft.IsLeader() && !wasForwarded(ctx) {
		// This node may not have applied the init yet (it just joined, or
		// it rebuilds its state): the leader knows whether the cluster is
		// initialized.
		if ls, err := s.leaderStatus(ctx); err == nil && ls.Seal.GetInitialized() {
			resp.Seal.Initialized = true
			resp.Seal.Threshold, resp.Seal.Shares = ls.Seal.GetThreshold(), ls.Seal.GetShares()
		}
	}
	return resp, nil
}

// Rotate adds a data-key term, replicates the new keyring and installs it.
func (s *Server) Rotate(ctx context.Context, _ *pb.RotateRequest) (*pb.RotateResponse, error) {
	if err := requireRoot(ctx); err != nil {
		return nil, err
	}
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	if !s.raft.IsLeader() {
		return nil, s.notLeaderError()
	}
	wrapped, term, err := s.seal.Rotate()
	if err != nil {
		return nil, err
	}
	r, err := s.apply(ctx, &fsmCommand{
		Op:  fsmpb.Op_OP_SYS_PUT,
		Sys: []*fsmpb.SysEntry{{Key: sysKeyringKey, Value: wrapped}},
	})
	if err != nil {
		return nil, err
	}
	if err := s.seal.InstallKeyring(wrapped); err != nil {
		return nil, err
	}
	s.logger.Info("rotated data key", "key_term", term)
	return &pb.RotateResponse{Term: term, Index: r.Index}, nil
}

// reloadKeyring installs the newest replicated keyring.
func (s *Server) reloadKeyring() error {
	wrapped, err := s.fsm.SysGet(sysKeyringKey)
	if err != nil {
		return err
	}
	return s.seal.InstallKeyring(wrapped)
}

// DevInfo is what a dev server prints at start: the single unseal key and
// the root token.
type DevInfo struct {
	UnsealKey []byte
	RootToken string
}

// DevInit initializes a fresh dev node with one key share (and rootToken
// when non-empty) and unseals it. It waits for the node to lead first.
func (s *Server) DevInit(ctx context.Context, rootToken string) (*DevInfo, error) {
	if err := s.WaitLeaderReady(ctx); err != nil {
		return nil, err
	}
	res, err := s.Init(ctx, &pb.InitRequest{SecretShares: 1, SecretThreshold: 1, RootToken: rootToken})
	if err != nil {
		return nil, err
	}
	if _, err := s.Unseal(ctx, &pb.UnsealRequest{Key: res.Keys[0]}); err != nil {
		return nil, err
	}
	return &DevInfo{UnsealKey: res.Keys[0], RootToken: res.RootToken}, nil
}

func sealStatusPB(st seal.Status) *pb.SealStatus {
	return &pb.SealStatus{
		Initialized: st.Initialized,
		Sealed:      st.Sealed,
		Shares:      uint32(st.Shares),
		Threshold:   uint32(st.Threshold),
		Progress:    uint32(st.Progress),
	}
}

// lastContactMs is the time since this node heard from the leader; 0 on
// the leader.
func (s *Server) lastContactMs() int64 {
	if s.raft.IsLeader() {
		return 0
	}
	lc := s.raft.LastContact()
	if lc.IsZero() {
		return -1
	}
	return time.Since(lc).Milliseconds()
}

// awaitInit gives a follower the chance to apply an init its leader has
// committed but it has not applied yet (just after init, when it joined,
// or while it rebuilds its state after a machine crash): it waits for a
// leader to be known, asks it whether the cluster is initialized and at
// which index, and waits for that index. It returns nil when the leader
// says the cluster is not initialized, ErrCatchingUp when it cannot tell
// or has not caught up in time.
func (s *Server) awaitInit(ctx context.Context) (*seal.Stored, error) {
	ctx, cancel := context.WithTimeout(ctx, awaitInitTimeout)
	defer cancel()
	var st *pb.StatusResponse
	err := s.untilLeaderAnswers(ctx, func() (err error) {
		if s.raft.IsLeader() {
			// A ready leader has applied every earlier entry: its own
			// state is the answer.
			st = nil
			return s.raft.WaitReadyLeader(ctx)
		}
		st, err = s.leaderStatus(ctx)
		return err
	})
	if err != nil {
		return nil, withMessage(ErrCatchingUp, "node %s has no seal configuration yet and could not ask a leader whether the cluster is initialized (%v): retry once a leader is elected", s.cfg.NodeID, err)
	}
	if st == nil {
		return s.storedSeal()
	}
	if !st.Seal.GetInitialized() {
		return nil, nil
	}
	if err := s.fsm.WaitApplied(ctx, st.AppliedIndex); err != nil {
		return nil, withMessage(ErrCatchingUp, "node %s is still catching up with the leader (applied %d of %d): retry the unseal shortly", s.cfg.NodeID, s.fsm.AppliedIndex(), st.AppliedIndex)
	}
	return s.storedSeal()
}

// awaitInitTimeout bounds awaitInit.
const awaitInitTimeout = 5 * time.Second

// leaderStatus asks the current leader for its status.
func (s *Server) leaderStatus(ctx context.Context) (*pb.StatusResponse, error) {
	id, addr := s.leader()
	if addr == "" || id == s.cfg.NodeID {
		return nil, s.notLeaderError()
	}
	return s.peerStatus(ctx, addr)
}

// peerStatus asks the node at API address addr for its status, within a
// second. The call is marked as forwarded, so the peer answers from its
// own state and never asks on.
func (s *Server) peerStatus(ctx context.Context, addr string) (*pb.StatusResponse, error) {
	conn, err := s.peers.conn(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs(forwardedKey, s.cfg.NodeID))
	return pb.NewSysClient(conn).Status(ctx, &pb.StatusRequest{})
}

// leaderRetry is the pause before asking a known leader again after it
// did not answer.
const leaderRetry = 100 * time.Millisecond

// untilLeaderAnswers calls f until it succeeds or ctx ends, and returns
// f's last error. Between two calls it waits for the leader to change (no
// leader known yet, or another one elected), or leaderRetry when the same
// leader did not answer.
func (s *Server) untilLeaderAnswers(ctx context.Context, f func() error) error {
	for {
		id, changed := s.raft.Following()
		err := f()
		if err == nil {
			return nil
		}
		var retry <-chan time.Time
		var t *time.Timer
		if id != "" {
			t = time.NewTimer(leaderRetry)
			retry = t.C
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-retry:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return err
		}
	}
}
