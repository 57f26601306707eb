package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Node is one member of the Raft cluster. It is safe for concurrent use.
type Node struct {
	cfg       Config
	logger    hclog.Logger
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	snapshots raft.SnapshotStore

	notifyCh chan bool
	leader   atomic.Bool // true while this node is leader per NotifyCh
	done     chan struct{}
	wg       sync.WaitGroup

	mu        sync.Mutex
	observers []func(isLeader bool)
	closeOnce sync.Once
	closeErr  error
}

// New opens (or creates) the Raft state under cfg.DataDir, starts the
// transport and Raft, and bootstraps a one-voter cluster when cfg.Bootstrap is
// set and there is no existing state. fsm must be persistent: Raft does not
// restore a snapshot on start (NoSnapshotRestoreOnStart) and relies on the
// FSM skipping log entries it has already applied.
func New(cfg Config, fsm raft.BatchingFSM) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	logger := cfg.Logger.Named("raft")

	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("replication: create %s: %w", dir, err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("replication: open raft log %s: %w", filepath.Join(dir, "raft.db"), err)
	}
	n := &Node{cfg: cfg, logger: logger, store: store, notifyCh: make(chan bool, 16), done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			n.closeResources()
		}
	}()

	n.snapshots, err = raft.NewFileSnapshotStoreWithLogger(dir, cfg.SnapshotsRetained, logger.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("replication: open snapshot store: %w", err)
	}

	var advertise net.Addr
	if cfg.AdvertiseAddr != "" {
		advertise, err = net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("replication: advertise address %q: %w", cfg.AdvertiseAddr, err)
		}
	}
	n.transport, err = raft.NewTCPTransportWithLogger(cfg.BindAddr, advertise, 3, 10*time.Second, logger.Named("transport"))
	if err != nil {
		return nil, fmt.Errorf("replication: listen for raft on %s: %w", cfg.BindAddr, err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = logger
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = cfg.MaxAppendEntries
	// An unbuffered apply channel: with a buffered one, an Apply racing
	// Shutdown can park its future in the buffer where nothing ever answers
	// it. The leader still groups concurrent applies into one batch.
	rc.BatchApplyCh = false
	rc.NoSnapshotRestoreOnStart = true
	rc.NotifyCh = n.notifyCh
	rc.NoLegacyTelemetry = true

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(store, store, n.snapshots)
		if err != nil {
			return nil, fmt.Errorf("replication: inspect raft state: %w", err)
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter,
				ID:       rc.LocalID,
				Address:  n.transport.LocalAddr(),
			}}}
			if err := raft.BootstrapCluster(rc, store, store, n.snapshots, n.transport, conf); err != nil {
				return nil, fmt.Errorf("replication: bootstrap: %w", err)
			}
			logger.Info("bootstrapped a one-node cluster", "id", cfg.NodeID, "address", n.transport.LocalAddr())
		}
	}

	n.raft, err = raft.NewRaft(rc, fsm, store, store, n.snapshots, n.transport)
	if err != nil {
		return nil, fmt.Errorf("replication: start raft: %w", err)
	}
	n.wg.Add(1)
	go n.watchLeadership()
	ok = true
	return n, nil
}

// watchLeadership follows Config.NotifyCh, which unlike LeaderCh never drops
// a transition, and tells the observers.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case isLeader := <-n.notifyCh:
			n.leader.Store(isLeader)
			n.mu.Lock()
			obs := append([]func(bool){}, n.observers...)
			n.mu.Unlock()
			for _, f := range obs {
				f(isLeader)
			}
		}
	}
}

// OnLeadership registers f to be called, in order and on one goroutine, each
// time this node gains (true) or loses (false) leadership. f must not block
// for long.
func (n *Node) OnLeadership(f func(isLeader bool)) {
	n.mu.Lock()
	n.observers = append(n.observers, f)
	n.mu.Unlock()
}

// Apply proposes cmd to the cluster and waits until it is committed and
// applied on this node, returning the FSM's response and the log index.
// It returns ErrNotLeader on a follower. When ctx ends first the write may
// still commit: callers retry with the same request id.
func (n *Node) Apply(ctx context.Context, cmd []byte) (any, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	select {
	case <-n.done:
		return nil, 0, ErrShutdown
	default:
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, 0, context.DeadlineExceeded
		}
	}
	f := n.raft.Apply(cmd, timeout)
	errCh := make(chan error, 1)
	go func() { errCh <- f.Error() }()
	select {
	case err := <-errCh:
		if err != nil {
			return nil, 0, translate(err)
		}
		return f.Response(), f.Index(), nil
	case <-ctx.Done():
		return nil, 0, ErrTimeout
	case <-n.done:
		return nil, 0, ErrShutdown
	}
}

// IsLeader reports whether this node is the leader right now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the id and Raft address of the leader this node knows, or
// empty strings when none is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// State is the Raft state as a lower-case word: leader, follower,
// candidate or shutdown.
func (n *Node) State() string {
	switch n.raft.State() {
	case raft.Leader:
		return "leader"
	case raft.Candidate:
		return "candidate"
	case raft.Follower:
		return "follower"
	}
	return "shutdown"
}

// Term is the current Raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// CommitIndex is the highest log index this node knows to be committed.
func (n *Node) CommitIndex() uint64 { return n.raft.CommitIndex() }

// LastIndex is the index of the last entry in this node's log.
func (n *Node) LastIndex() uint64 { return n.raft.LastIndex() }

// LastContact is when this node last heard from a leader; for the leader
// itself it is the present.
func (n *Node) LastContact() time.Time {
	if n.IsLeader() {
		return time.Now()
	}
	return n.raft.LastContact()
}

// Addr is the Raft address peers use to reach this node.
func (n *Node) Addr() string { return string(n.transport.LocalAddr()) }

// ID is this node's Raft server id.
func (n *Node) ID() string { return n.cfg.NodeID }

// WaitForLeader blocks until some leader is known, or ctx ends.
func (n *Node) WaitForLeader(ctx context.Context) error {
	obs := make(chan raft.Observation, 4)
	o := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(o)
	defer n.raft.DeregisterObserver(o)
	for {
		if id, _ := n.Leader(); id != "" {
			return nil
		}
		select {
		case <-obs:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-n.done:
			return ErrShutdown
		}
	}
}

// VerifyLeader confirms with a quorum that this node is still the leader.
func (n *Node) VerifyLeader(ctx context.Context) error {
	return n.wait(ctx, n.raft.VerifyLeader())
}

// Barrier waits until every entry committed before the call is applied to
// this node's FSM. Only the leader can issue it.
func (n *Node) Barrier(ctx context.Context) error {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return n.wait(ctx, n.raft.Barrier(timeout))
}

// Snapshot asks Raft to snapshot the FSM now and truncate its log.
func (n *Node) Snapshot(ctx context.Context) error {
	return n.wait(ctx, n.raft.Snapshot())
}

// Raft exposes the underlying *raft.Raft for tests and operator tooling
// inside this module.
func (n *Node) Raft() *raft.Raft { return n.raft }

// wait turns a raft future into a context-aware call.
func (n *Node) wait(ctx context.Context, f raft.Future) error {
	errCh := make(chan error, 1)
	go func() { errCh <- f.Error() }()
	select {
	case err := <-errCh:
		return translate(err)
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrShutdown
	}
}

// Shutdown stops Raft, the transport and the log store. It is idempotent;
// later calls return the first call's result.
func (n *Node) Shutdown() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.raft != nil {
			errs = append(errs, n.raft.Shutdown().Error())
		}
		close(n.done)
		n.wg.Wait()
		errs = append(errs, n.closeResources())
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// closeResources releases the transport and the log store.
func (n *Node) closeResources() error {
	var errs []error
	if n.transport != nil {
		errs = append(errs, n.transport.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}
