package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// sysServer is the Sys service: init, unseal, seal, status and key
// rotation.
type sysServer struct {
	pb.UnimplementedSysServer
	nodeID string
	// metrics renders this node's metrics (sys/metrics).
	metrics func() ([]byte, error)
	keys    *keys
	store   sysState
	props   proposer
	raft    sysRaft
	link    *leaderLink
	logger  hclog.Logger

	initMu   sync.Mutex
	rotateMu sync.Mutex
	// unseals limits unseal attempts per caller address.
	unseals *addrLimiter
	// insecure: the node runs without TLS (reported by Status).
	insecure bool
	// audit gives AuditHash the cluster's audit salt.
	audit *auditor
	// rootGen is the generate-root attempt in progress (leader).
	rootGen rootGeneration
	// rekey is the rekey attempt in progress (leader).
	rekey rekeying
	// nseal is this node's seal (Shamir or static) and its migration.
	nseal *nodeSeal
}

// sysState reads the replicated sys table and the applied index.
type sysState interface {
	SysGet(key string) ([]byte, error)
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
}

// sysRaft is what the Sys service reports of, and asks of, the Raft node.
type sysRaft interface {
	IsLeader() bool
	WaitReadyLeader(ctx context.Context) error
	Leader() (id, addr string)
	State() string
	Term() uint64
	CommitIndex() uint64
	LastContact() time.Time
	LeaderHTTPURL() string
}

// Default seal configuration of init, as in Vault.
const (
	defaultShares    = 5
	defaultThreshold = 3
)

// Init creates the cluster's keys and root token once. The shares and the
// token are in the response only; the cluster stores the root key wrapped by
// the unseal key, the keyring wrapped by the root key and the token's hash.
func (y *sysServer) Init(ctx context.Context, req *pb.InitRequest) (*pb.InitResponse, error) {
	y.initMu.Lock()
	defer y.initMu.Unlock()
	cfg := seal.Config{Shares: int(req.SecretShares), Threshold: int(req.SecretThreshold)}
	if y.nseal.static() && (req.RecoveryShares != 0 || req.RecoveryThreshold != 0) {
		cfg = seal.Config{Shares: int(req.RecoveryShares), Threshold: int(req.RecoveryThreshold)}
	}
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
	if _, err := y.store.SysGet(sysSealKey); err == nil {
		return nil, ErrAlreadyInitialized
	}
	var res *seal.InitResult
	var err error
	if y.nseal.static() {
		// The node that runs init (the leader) decides the seal: under the
		// static seal the record also holds the root key sealed by its
		// static key, and the shares are recovery shares.
		if p := y.nseal.keyProblem(); p != "" {
			return nil, withMessage(ErrAutoUnseal, "cannot initialize under the static seal: %s", p)
		}
		y.nseal.mu.Lock()
		res, err = seal.InitializeStatic(cfg, y.nseal.key)
		y.nseal.mu.Unlock()
	} else {
		res, err = seal.Initialize(cfg)
	}
	if err != nil {
		return nil, err
	}
	tk, tv, err := tokenEntry(res.Barrier, token, []string{rootPolicy}, time.Now())
	res.Barrier = nil
	if err != nil {
		return nil, err
	}
	_, err = y.props.propose(ctx, &fsmpb.Command{
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
	y.logger.Info("initialized", "shares", cfg.Shares, "threshold", cfg.Threshold, "seal", res.Stored.SealType())
	if y.nseal.static() {
		return &pb.InitResponse{RecoveryKeys: res.Shares, RootToken: token}, nil
	}
	return &pb.InitResponse{Keys: res.Shares, RootToken: token}, nil
}

// storedSeal loads the replicated seal record, or nil before init.
func (y *sysServer) storedSeal() (*seal.Stored, error) {
	raw, err := y.store.SysGet(sysSealKey)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return seal.UnmarshalStored(raw)
}

// Unseal adds one key share to this node's progress, or resets it. Before
// it takes the share, a node that hears from a leader catches up with it
// (bounded), so that a node that was down during a rekey refuses the old
// shares as every other node does; with no leader in reach it uses the
// record it holds.
func (y *sysServer) Unseal(ctx context.Context, req *pb.UnsealRequest) (*pb.SealStatus, error) {
	if !req.Reset_ && y.unseals != nil && !y.unseals.allow(ctx) {
		return nil, ErrRateLimited
	}
	if req.Reset_ {
		stored, err := y.storedSeal()
		if err != nil {
			return nil, err
		}
		y.keys.seal.ResetProgress()
		return y.sealStatusPB(y.keys.seal.Status(stored), stored), nil
	}
	if y.keys.Sealed() {
		if err := y.catchUpWithLeader(ctx); err != nil {
			return nil, err
		}
	}
	stored, err := y.storedSeal()
	if err != nil {
		return nil, err
	}
	if stored == nil {
		// This node may not have applied the init yet.
		stored, err = y.awaitInit(ctx)
		if err != nil {
			return nil, err
		}
	}
	if stored == nil {
		return nil, ErrNotInitialized
	}
	wasSealed := y.keys.seal.Sealed()
	if !wasSealed {
		return y.sealStatusPB(y.keys.seal.Status(stored), stored), nil
	}
	if err := y.unsealReady(stored, req.Migrate); err != nil {
		return nil, err
	}
	wrapped, err := y.store.SysGet(sysKeyringKey)
	if err != nil {
		return nil, fmt.Errorf("server: read keyring: %w", err)
	}
	st, err := y.keys.seal.Unseal(stored, wrapped, req.Key)
	if err != nil {
		y.logger.Warn("unseal share rejected", "error", err)
		return nil, err
	}
	if !st.Sealed {
		y.logger.Info("unsealed", "key_term", st.Term, "migrate", req.Migrate)
		if req.Migrate {
			y.unsealedForMigration()
		}
		y.keys.unsealedNode()
	}
	return y.sealStatusPB(st, stored), nil
}

// unsealCatchUpTimeout bounds how long an unseal looks for a leader and
// then waits to apply what the leader has applied.
const unsealCatchUpTimeout = 5 * time.Second

// catchUpWithLeader waits until this node has applied what the leader
// has applied, so that it unseals against the cluster's current seal record (a
// rekey or migration it missed while down). A leader has nothing to
// catch up with once ready. When no leader answers within the bound, the
// node goes on with its own record (quorum lost: the record cannot have
// changed without one, unless this node is the one cut off). A leader
// that answers but whose index is not reached in time fails the unseal
// with ErrCatchingUp: retry shortly.
func (y *sysServer) catchUpWithLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, unsealCatchUpTimeout)
	defer cancel()
	st, err := y.readyLeaderStatus(ctx)
	if err != nil {
		y.logger.Warn("unseal: no leader answered; unsealing against this node's own seal record, which may miss a rekey made while it was cut off", "error", err)
		return nil
	}
	if st == nil {
		return nil
	}
	// The leader's applied index, not its commit index: entries that are
	// not commands (Raft's configuration changes, no-ops) never move a
	// state machine's applied index, and a seal record the leader wrote
	// is applied there before its write answered.
	target := st.AppliedIndex
	if err := y.store.WaitApplied(ctx, target); err != nil {
		return withMessage(ErrCatchingUp, "node %s is still catching up with the leader (applied %d of %d) and may not hold the cluster's current seal record yet: retry the unseal shortly", y.nodeID, y.store.AppliedIndex(), target)
	}
	return nil
}

// Seal drops this node's keys. The node keeps replicating and voting.
func (y *sysServer) Seal(ctx context.Context, _ *pb.SealRequest) (*pb.SealStatus, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if y.nseal.static() {
		y.nseal.mu.Lock()
		y.nseal.sealedByRequest = true
		y.nseal.mu.Unlock()
	}
	y.keys.sealNode()
	y.logger.Info("sealed by request")
	stored, err := y.storedSeal()
	if err != nil {
		return nil, err
	}
	return y.sealStatusPB(y.keys.seal.Status(stored), stored), nil
}

// Status reports the seal and Raft state of this node; asked to, it first
// waits for a leader other than the one named (awaitOtherLeader).
func (y *sysServer) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	y.link.awaitOtherLeader(ctx, req.GetWaitForLeaderNot(), time.Duration(req.GetWaitMs())*time.Millisecond)
	stored, err := y.storedSeal()
	if err != nil {
		return nil, err
	}
	st := y.keys.seal.Status(stored)
	leaderID, _ := y.raft.Leader()
	resp := &pb.StatusResponse{
		Seal:           y.sealStatusPB(st, stored),
		NodeId:         y.nodeID,
		RaftState:      y.raft.State(),
		LeaderId:       leaderID,
		Term:           y.raft.Term(),
		AppliedIndex:   y.store.AppliedIndex(),
		CommitIndex:    y.raft.CommitIndex(),
		Version:        Version,
		KeyTerm:        st.Term,
		LastContactMs:  lastContactMs(y.raft),
		MemoryRssBytes: residentMemory(),
		Insecure:       y.insecure,
	}
	_, resp.LeaderAddress = y.link.leader()
	resp.LeaderHttpAddress = y.raft.LeaderHTTPURL()
	if stored == nil && !y.raft.IsLeader() && !wasForwarded(ctx) {
		// This node may not have applied the init yet (it just joined, or
		// it rebuilds its state): the leader knows whether the cluster is
		// initialized.
		if ls, err := y.link.leaderStatus(ctx); err == nil && ls.Seal.GetInitialized() {
			resp.Seal.Initialized = true
			resp.Seal.Threshold, resp.Seal.Shares = ls.Seal.GetThreshold(), ls.Seal.GetShares()
		}
	}
	return resp, nil
}

// Rotate adds a data-key term, replicates the new keyring and installs it.
func (y *sysServer) Rotate(ctx context.Context, _ *pb.RotateRequest) (*pb.RotateResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	y.rotateMu.Lock()
	defer y.rotateMu.Unlock()
	if !y.raft.IsLeader() {
		return nil, y.link.notLeaderError()
	}
	wrapped, term, err := y.keys.seal.Rotate()
	if err != nil {
		return nil, err
	}
	r, err := y.props.propose(ctx, &fsmpb.Command{
		Op:  fsmpb.Op_OP_SYS_PUT,
		Sys: []*fsmpb.SysEntry{{Key: sysKeyringKey, Value: wrapped}},
	})
	if err != nil {
		return nil, err
	}
	if err := y.keys.seal.InstallKeyring(wrapped); err != nil {
		return nil, err
	}
	y.logger.Info("rotated data key", "key_term", term)
	return &pb.RotateResponse{Term: term, Index: r.Index}, nil
}

// sealStatusPB is the node's seal status: its seal type (Vault's type and
// recovery_seal), whether a migration is pending, and why a sealed node
// stays sealed when shares would not help.
func (y *sysServer) sealStatusPB(st seal.Status, stored *seal.Stored) *pb.SealStatus {
	out := &pb.SealStatus{
		Initialized:  st.Initialized,
		Sealed:       st.Sealed,
		Shares:       uint32(st.Shares),
		Threshold:    uint32(st.Threshold),
		Progress:     uint32(st.Progress),
		Type:         y.nseal.typ,
		RecoverySeal: y.nseal.static(),
		Migration:    y.nseal.pending(stored),
	}
	if st.Sealed {
		out.Message = y.sealMessage(stored)
	}
	return out
}

// readyLeaderStatus waits, within ctx, until a leader answers: the
// leader's status, or nil when this node is the leader and ready (a ready
// leader has applied every earlier entry: its own state is the answer).
func (y *sysServer) readyLeaderStatus(ctx context.Context) (*pb.StatusResponse, error) {
	var st *pb.StatusResponse
	err := y.link.untilLeaderAnswers(ctx, func() (err error) {
		if y.raft.IsLeader() {
			st = nil
			return y.raft.WaitReadyLeader(ctx)
		}
		st, err = y.link.leaderStatus(ctx)
		return err
	})
	return st, err
}

// awaitInit gives a follower the chance to apply an init its leader has
// committed but it has not applied yet (just after init, when it joined,
// or while it rebuilds its state after a machine crash): it waits for a
// leader to be known, asks it whether the cluster is initialized and at
// which index, and waits for that index. It returns nil when the leader
// says the cluster is not initialized, ErrCatchingUp when it cannot tell
// or has not caught up in time.
func (y *sysServer) awaitInit(ctx context.Context) (*seal.Stored, error) {
	ctx, cancel := context.WithTimeout(ctx, awaitInitTimeout)
	defer cancel()
	st, err := y.readyLeaderStatus(ctx)
	if err != nil {
		return nil, withMessage(ErrCatchingUp, "node %s has no seal configuration yet and could not ask a leader whether the cluster is initialized (%v): retry once a leader is elected", y.nodeID, err)
	}
	if st == nil {
		return y.storedSeal()
	}
	if !st.Seal.GetInitialized() {
		return nil, nil
	}
	if err := y.store.WaitApplied(ctx, st.AppliedIndex); err != nil {
		return nil, withMessage(ErrCatchingUp, "node %s is still catching up with the leader (applied %d of %d): retry the unseal shortly", y.nodeID, y.store.AppliedIndex(), st.AppliedIndex)
	}
	return y.storedSeal()
}

// awaitInitTimeout bounds awaitInit.
const awaitInitTimeout = 5 * time.Second

// AuditHash returns input as the audit log writes it (HMAC-SHA256 under
// the cluster's salt), to search the logs for a value.
func (y *sysServer) AuditHash(_ context.Context, req *pb.AuditHashRequest) (*pb.AuditHashResponse, error) {
	if len(req.GetInput()) > MaxRequestSize {
		return nil, tooLargef("the input is too large")
	}
	h, err := y.audit.hash(req.GetInput())
	if err != nil {
		return nil, err
	}
	return &pb.AuditHashResponse{Hash: h}, nil
}
