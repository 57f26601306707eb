package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"
)

// Node is one member of the Raft cluster. It is safe for concurrent use.
type Node struct {
	cfg       Config
	logger    hclog.Logger
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore // the stable store, and the log store with boltdb
	logStore  raft.LogStore         // store or the WAL
	logCloser io.Closer             // the WAL; nil with boltdb
	logs      *logCache             // the newest entries of logStore, in memory
	lease     readLease             // this leader's read lease (lease.go)
	snapshots raft.SnapshotStore
	// raftPtr is raft once New has it, for the snapshot store's callback,
	// which may run before New returns.
	raftPtr atomic.Pointer[raft.Raft]

	gossip        *gossip      // nil without gossip
	clog          hclog.Logger // cluster membership and leader duties
	started       time.Time
	boot          string      // this start's Boot id (MemberMeta.Boot)
	preVote       bool        // Raft runs pre-vote before real elections
	sealed        atomic.Bool // as set by SetSealed
	hasState      atomic.Bool // this node has a Raft log or snapshot
	bootstrapDone atomic.Bool
	reconcileCh   chan struct{} // coalesced "reconcile now" for the leader duty

	notifyCh chan bool
	leader   atomic.Bool // true while this node is leader per NotifyCh
	// handingOver counts the leadership transfers in flight (transfer):
	// while one runs this node is no ready leader.
	handingOver atomic.Int32
	done        chan struct{}
	wg          sync.WaitGroup

	// lmu guards the leadership state (leadership.go).
	lmu      sync.Mutex
	term     *leaderTerm   // this node's current leadership, nil on a follower
	follow   *following    // the leader this node knows
	lchanged chan struct{} // closed and replaced at every leadership event

	// rmu guards removed: the servers an operator removed through this
	// node, kept out of Raft until they restart (removed.go).
	rmu     sync.Mutex
	removed map[string]*removal

	mu                sync.Mutex
	readyObservers    []func(ctx context.Context)
	observers         []func(isLeader bool)
	memberObservers   []func()
	lastBootstrapNote string
	closeOnce         sync.Once
	closeErr          error
}

// shutdownLeaveTimeout bounds the gossip leave that Shutdown performs.
const shutdownLeaveTimeout = 3 * time.Second

// New opens (or creates) the Raft state under cfg.DataDir, starts the
// transport and Raft, and bootstraps a one-voter cluster when cfg.Bootstrap is
// set and there is no existing state. With cfg.Gossip it also starts gossip,
// joins the seeds in the background and, with cfg.BootstrapExpect, bootstraps
// together with the other expected nodes once gossip has found them all. fsm
// must be persistent: Raft does not restore a snapshot on start
// (NoSnapshotRestoreOnStart) and relies on the FSM skipping log entries it has
// already applied.
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
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(dir, "raft.db"),
		// Every commit stays fsynced; the free-page list is not written
		// with each one (bbolt rebuilds it when the file opens), which
		// keeps a batch's write small once compaction has freed pages.
		BoltOptions: &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true},
	})
	if err != nil {
		return nil, fmt.Errorf("replication: open raft store %s: %w", filepath.Join(dir, "raft.db"), err)
	}
	logStore, logCloser, err := openLogStore(dir, cfg.RaftLogStore, cfg.WALSegmentSize, store, logger)
	if err != nil {
		store.Close()
		return nil, err
	}
	logger.Info("raft log store", "store", cfg.RaftLogStore)
	n := &Node{
		cfg: cfg, logger: logger, clog: cfg.Logger.Named("cluster"), store: store, logStore: logStore, logCloser: logCloser, started: time.Now(), boot: newBoot(),
		notifyCh: make(chan bool, 16), reconcileCh: make(chan struct{}, 1), done: make(chan struct{}),
		follow: newFollowing(""), lchanged: make(chan struct{}), removed: make(map[string]*removal),
	}
	ok := false
	defer func() {
		if !ok {
			n.closeResources()
		}
	}()

	files, err := raft.NewFileSnapshotStoreWithLogger(dir, cfg.SnapshotsRetained, logger.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("replication: open snapshot store: %w", err)
	}
	n.snapshots = &sizingSnapshotStore{SnapshotStore: files, done: n.resizeSnapshots}

	network := cfg.Network
	if network == nil {
		network = &Network{}
	}
	stream, err := newStreamLayer(network, cfg.BindAddr, cfg.AdvertiseAddr, cfg.TLS, logger.Named("transport"))
	if err != nil {
		return nil, err
	}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  logger.Named("transport"),
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = raftLogger{logger}
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
	// The FSM is persistent: Raft need not restore the newest snapshot on
	// start, because the FSM skips entries it has applied already. That
	// holds only while the FSM is at least as new as that snapshot; when it
	// is not (fsm.db lost, or a restore interrupted), Raft restores it.
	rc.NoSnapshotRestoreOnStart = fsmCoversSnapshots(fsm, n.snapshots, logger)
	rc.NotifyCh = n.notifyCh
	rc.NoLegacyTelemetry = true

	has, err := raft.HasExistingState(logStore, store, n.snapshots)
	if err != nil {
		return nil, fmt.Errorf("replication: inspect raft state: %w", err)
	}
	n.hasState.Store(has)
	n.sealed.Store(cfg.Sealed)
	if cfg.Bootstrap {
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter,
				ID:       rc.LocalID,
				Address:  n.transport.LocalAddr(),
			}}}
			if err := raft.BootstrapCluster(rc, logStore, store, n.snapshots, n.transport, conf); err != nil {
				return nil, fmt.Errorf("replication: bootstrap: %w", err)
			}
			n.hasState.Store(true)
			logger.Info("bootstrapped a one-node cluster", "id", cfg.NodeID, "address", n.transport.LocalAddr())
		}
	}

	// Pre-vote (a candidate first asks whether it could win, without
	// raising terms) keeps a node that was cut off from disrupting the
	// cluster when it comes back. hashicorp/raft runs it only when the
	// transport supports it; say which it is.
	_, transportPreVote := any(n.transport).(raft.WithPreVote)
	n.preVote = transportPreVote && !rc.PreVoteDisabled
	if n.preVote {
		logger.Info("pre-vote enabled")
	} else {
		logger.Warn("pre-vote disabled: the transport does not support it")
	}

	var local MemberMeta
	if cfg.Gossip != nil {
		local = MemberMeta{
			ID: cfg.NodeID, APIAddr: cfg.APIAdvertise, HTTPURL: cfg.HTTPAdvertise, RaftAddr: n.Addr(), Sealed: cfg.Sealed, ReadReplica: cfg.ReadReplica,
			HasRaftState: n.hasState.Load(), BootstrapExpect: cfg.BootstrapExpect, Version: cfg.Version, Boot: n.boot,
		}
		worst := local
		worst.Sealed, worst.ReadReplica, worst.HasRaftState = true, true, true
		if size := len(encodeMeta(worst, true)); size > metaMaxSize {
			return nil, fmt.Errorf("replication: gossip metadata for this node takes %d bytes, over memberlist's %d: shorten the node id, addresses or version", size, metaMaxSize)
		}
	}

	// The newest entries stay in memory (logcache.go).
	n.logs = newLogCache(logStore, logCacheEntries, LogCacheBytes)
	n.logs.failed = cfg.OnStorageFailure
	n.raft, err = raft.NewRaft(rc, fsm, n.logs, store, n.snapshots, leaseTransport{noPipeline{n.transport}, &n.lease})
	if err != nil {
		return nil, fmt.Errorf("replication: start raft: %w", err)
	}
	n.raftPtr.Store(n.raft)
	n.resizeSnapshots(newestSnapshotSize(files))
	if cfg.Gossip != nil {
		n.gossip, err = newGossip(*cfg.Gossip, local, cfg.Logger.Named("gossip"))
		if err != nil {
			if serr := n.raft.Shutdown().Error(); serr != nil {
				logger.Warn("shutting raft down after gossip failed to start", "error", serr)
			}
			return nil, err
		}
		n.clog.Info("gossip started", "address", n.GossipAddr(), "seeds", cfg.Gossip.Join,
			"bootstrap_expect", cfg.BootstrapExpect, "read_replica", cfg.ReadReplica, "encrypted", cfg.Gossip.ClusterKey != nil)
	}
	// A blocking observer: no leader change is dropped. Its reader only
	// swaps a channel, and Raft stops observing before the reader stops
	// (Shutdown stops Raft, then closes done).
	leaders := make(chan raft.Observation, 16)
	n.raft.RegisterObserver(raft.NewObserver(leaders, true, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	}))
	n.wg.Add(2)
	go n.watchLeaders(leaders)
	go n.watchLeadership()
	if n.gossip != nil {
		n.gossip.start()
		n.wg.Add(1)
		go n.clusterLoop()
	}
	ok = true
	return n, nil
}

// watchLeadership follows Config.NotifyCh, which unlike LeaderCh never drops
// a transition: it starts a leadership term on gaining leadership (a
// barrier, then the ready observers and reconciliation), ends it on losing
// it, and tells the observers.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	defer n.endTerm()
	for {
		select {
		case <-n.done:
			return
		case isLeader := <-n.notifyCh:
			n.leader.Store(isLeader)
			n.endTerm()
			if isLeader {
				n.startTerm()
			}
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
// still commit: callers retry with the same request id. The function ctx
// carries from WithApplyDone runs once Raft is done with cmd.
func (n *Node) Apply(ctx context.Context, cmd []byte) (any, uint64, error) {
	done := applyDone(ctx)
	if err := ctx.Err(); err != nil {
		done()
		return nil, 0, err
	}
	select {
	case <-n.done:
		done()
		return nil, 0, ErrShutdown
	default:
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			done()
			return nil, 0, context.DeadlineExceeded
		}
	}
	f := n.raft.Apply(cmd, timeout)
	// Raft answers every command but one it committed and had not yet
	// handed to the FSM when it shut down: the goroutine waiting for that
	// one stays (testcluster.LeakOptions), while Apply returns ErrShutdown.
	errCh := make(chan error, 1)
	go func() {
		err := f.Error()
		done()
		errCh <- err
	}()
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

type applyDoneKey struct{}

// WithApplyDone returns ctx carrying f, which Apply under it calls exactly
// once when Raft is done with the command: applied, refused, or dropped
// with a lost leadership or a shutdown. That may be after Apply returned,
// when ctx ended first: until then the command is in the leader's memory,
// and a caller that budgets memory keeps counting it.
func WithApplyDone(ctx context.Context, f func()) context.Context {
	return context.WithValue(ctx, applyDoneKey{}, f)
}

// applyDone returns the function ctx carries from WithApplyDone, or one
// that does nothing.
func applyDone(ctx context.Context) func() {
	if f, ok := ctx.Value(applyDoneKey{}).(func()); ok {
		return f
	}
	return func() {}
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
	f := n.raft.VerifyLeader()
	endsAtShutdown(f, n.done)
	return n.wait(ctx, f)
}

// endsAtShutdown makes future f answer once done is closed, when Raft
// left it a way to (the ShutdownCh of its futures, hashicorp/raft#390) but
// did not use it; it reports whether it did. VerifyLeader is such a
// future: it is queued on a buffered channel, even by a Raft shutting down
// (its select may pick the buffer), and once Raft's main loop has exited
// nothing answers it. A goroutine waiting on its Error() then waits
// forever: one leaked per linearizable read racing a shutdown. done is
// closed after Raft has shut down, so only such a future is cut short.
// The field is only read by Error(), which runs after this returns.
func endsAtShutdown(f raft.Future, done chan struct{}) bool {
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return false
	}
	ch := v.Elem().FieldByName("ShutdownCh")
	if !ch.IsValid() || !ch.CanSet() || ch.Type() != reflect.TypeOf(done) || !ch.IsNil() {
		return false
	}
	ch.Set(reflect.ValueOf(done))
	return true
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

// Restore installs a snapshot of the state machine on every node through
// Raft (an operator's restore): meta.Index places it in the log.
func (n *Node) Restore(meta *raft.SnapshotMeta, body io.Reader, timeout time.Duration) error {
	return translate(n.raft.Restore(meta, body, timeout))
}

// Raft exposes the underlying *raft.Raft for tests and operator tooling
// inside this module.
func (n *Node) Raft() *raft.Raft { return n.raft }

// wait turns a raft future into a context-aware call.
func (n *Node) wait(ctx context.Context, f raft.Future) error {
	return n.waitThen(ctx, f, nil)
}

// waitThen is wait, and runs then (when set) once Raft has answered f,
// even when ctx ended or the node stopped first.
func (n *Node) waitThen(ctx context.Context, f raft.Future, then func()) error {
	errCh := make(chan error, 1)
	go func() {
		err := f.Error()
		if then != nil {
			then()
		}
		errCh <- err
	}()
	select {
	case err := <-errCh:
		return translate(err)
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrShutdown
	}
}

// Shutdown stops Raft and gossip and closes the transport and the log
// store. It does not leave gossip: a node that stops (to restart, or
// because it is told to) stays a Raft member, and the leader removes it only
// after DeadServerTimeout and only while quorum stays healthy. Call Leave
// first to decommission it. It does not transfer leadership either: callers
// that want no write gap call TransferLeadership first. It is idempotent;
// later calls return the first call's result.
func (n *Node) Shutdown() error {
	return n.shutdown(false)
}

// kill stops the node like a crash would, as far as peers can tell (tests).
func (n *Node) kill() error {
	return n.shutdown(false)
}

func (n *Node) shutdown(leave bool) error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.gossip != nil && leave {
			// Logged by leave; not being able to say goodbye does not
			// make the shutdown fail.
			_ = n.gossip.leave(shutdownLeaveTimeout)
		}
		if n.raft != nil {
			errs = append(errs, n.raft.Shutdown().Error())
		}
		if n.gossip != nil {
			errs = append(errs, n.gossip.stop())
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
		// Close the pooled outbound connections too: the peers' handlers
		// of those connections exit only when they see them close.
		n.transport.CloseStreams()
		errs = append(errs, n.transport.Close())
	}
	if n.logCloser != nil {
		errs = append(errs, n.logCloser.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}

// appliedIndexer is implemented by a persistent FSM that knows the last
// log index it applied.
type appliedIndexer interface{ AppliedIndex() uint64 }

// fsmCoversSnapshots reports whether the FSM already holds the state of the
// newest snapshot, so Raft may skip restoring it on start.
func fsmCoversSnapshots(fsm raft.FSM, snaps raft.SnapshotStore, logger hclog.Logger) bool {
	ai, ok := fsm.(appliedIndexer)
	if !ok {
		return false
	}
	list, err := snaps.List()
	if err != nil || len(list) == 0 {
		return err == nil
	}
	if ai.AppliedIndex() >= list[0].Index {
		return true
	}
	logger.Warn("state machine is older than the newest snapshot; restoring the snapshot", "fsm_applied", ai.AppliedIndex(), "snapshot_index", list[0].Index)
	return false
}

// noPipeline is the network transport without pipelined AppendEntries.
// hashicorp/raft v1.8.0's pipeline over the TCP transport can deadlock:
// a pipelined send blocks for ever while its response decoder is stuck, so
// the follower never gets new entries again (while its heartbeats keep it
// from starting an election) and the old leader's Shutdown hangs. Found by
// TestLeadershipChurn (about 1 run in 10-30); without the pipeline raft
// sends one batch at a time per follower, still batching entries.
type noPipeline struct{ *raft.NetworkTransport }

// AppendEntriesPipeline reports that pipelining is not supported, so raft
// falls back to synchronous AppendEntries.
func (noPipeline) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}
