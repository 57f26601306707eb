package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"coffer/internal/ports"

	"github.com/hashicorp/go-hclog"
)

// Config describes one Raft node. The zero value of every duration means the
// default of DefaultConfig.
type Config struct {
	// NodeID is this node's Raft server id; it must be stable across restarts.
	NodeID string `json:"node_id"`
	// DataDir is the node's data directory; Raft keeps raft/raft.db (stable
	// store, and the log with boltdb), raft/wal/ (the log with wal) and
	// raft/snapshots/ under it.
	DataDir string `json:"data_dir"`
	// RaftLogStore is where the Raft log is kept: LogStoreBoltDB or
	// LogStoreWAL; empty means DefaultLogStore. A data directory whose log
	// is in the other store has it moved across at start.
	RaftLogStore string `json:"raft_log_store,omitempty"`
	// BindAddr is the host:port the Raft transport listens on. Port 0 picks a
	// free port (tests).
	BindAddr string `json:"raft_addr"`
	// AdvertiseAddr is the host:port peers use to reach this node; empty
	// means the address the transport is bound to.
	AdvertiseAddr string `json:"raft_advertise,omitempty"`
	// TLS, when set, runs the Raft transport over mutual TLS (see
	// TransportTLS). Nil means plaintext.
	TLS *TransportTLS `json:"-"`
	// Network carries the Raft transport's connections; tests cut it to
	// partition the node. Nil means a plain one.
	Network *Network `json:"-"`
	// Bootstrap makes a node without Raft state bootstrap a one-voter
	// cluster of itself. A node that has state ignores it.
	Bootstrap bool `json:"-"`
	// Logger receives Raft's logs; nil discards them.
	Logger hclog.Logger `json:"-"`

	// HeartbeatTimeout, ElectionTimeout and LeaderLeaseTimeout are Raft's
	// failure-detection timings, tuned for a LAN.
	HeartbeatTimeout   time.Duration `json:"-"`
	ElectionTimeout    time.Duration `json:"-"`
	LeaderLeaseTimeout time.Duration `json:"-"`
	// readLease overrides how long a leader's read lease lasts (tests: a
	// node whose own Raft timers are slow, among peers that elect fast).
	readLease time.Duration
	// CommitTimeout bounds how long a follower waits before it learns the
	// commit index without new entries.
	CommitTimeout time.Duration `json:"-"`
	// SnapshotInterval and SnapshotThreshold decide when Raft snapshots the
	// state machine and truncates its log; TrailingLogs is how many entries
	// stay behind a snapshot for slow followers.
	SnapshotInterval  time.Duration `json:"-"`
	SnapshotThreshold uint64        `json:"-"`
	TrailingLogs      uint64        `json:"-"`
	// MaxAppendEntries bounds one replication batch (and one FSM batch).
	// Raft counts entries, not bytes: the server lowers it to its request
	// budget's worth of the largest entries.
	MaxAppendEntries int `json:"-"`
	// WALSegmentSize is the size of a raft-wal segment file with the wal
	// log store; 0 means 16 MiB. raft-wal frees compacted entries a whole
	// segment at a time and serves them until then, so tests that need a
	// follower to install a snapshot make it small.
	WALSegmentSize int `json:"-"`
	// SnapshotsRetained is how many snapshots stay on disk.
	SnapshotsRetained int `json:"-"`
	// SnapshotBytesPerEntry grows the snapshot threshold with the state:
	// Raft snapshots after max(SnapshotThreshold, last snapshot's size /
	// SnapshotBytesPerEntry) entries (snapthreshold.go); negative keeps
	// SnapshotThreshold fixed.
	SnapshotBytesPerEntry int `json:"-"`

	// APIAdvertise is the host:port clients and other nodes use for this
	// node's API; it is gossiped so that followers can find the leader's
	// API. The server fills it in from its own listener.
	APIAdvertise string `json:"-"`
	// HTTPAdvertise is the URL of the node's Vault-compatible HTTP API
	// (https://host:8200), empty when it serves none.
	HTTPAdvertise string `json:"-"`
	// Version is the coffer version, gossiped for operators.
	Version string `json:"-"`
	// Sealed is the sealed flag gossiped from the start (a node starts
	// sealed); SetSealed changes it.
	Sealed bool `json:"-"`

	// Gossip turns on memberlist gossip: discovery, failure detection and
	// (on the leader) reconciliation of gossip into Raft membership. Nil
	// means no gossip: a node that only ever talks to itself.
	Gossip *GossipConfig `json:"-"`
	// BootstrapExpect, when N > 0, makes a node without Raft state wait
	// until gossip shows N live nodes that all expect N and none has Raft
	// state, and then bootstrap Raft with all N as voters. It needs Gossip,
	// and excludes Bootstrap and ReadReplica.
	BootstrapExpect int `json:"bootstrap_expect,omitempty"`
	// ReadReplica makes this node a permanent non-voter: the leader adds it
	// to Raft but never promotes it. It needs Gossip.
	ReadReplica bool `json:"read_replica,omitempty"`

	// OnStorageFailure, when set, is told when the Raft log store cannot
	// write (disk full, I/O error). Raft refuses the entries (a leader
	// steps down, a follower does not acknowledge them), but would try
	// again and again, and a node with a full disk may win the next
	// election: the node should stop. It is called on Raft's goroutines
	// and must not block on Raft.
	OnStorageFailure func(error) `json:"-"`

	// CaughtUp, when set, tells the leader whether a non-voter has caught
	// up with the log and may be promoted to voter (the server asks that
	// node's API for its applied index). It must honour ctx. Nil means a
	// non-voter counts as caught up once it has been one for PromoteAfter
	// and the leader's heartbeats reach it.
	CaughtUp func(ctx context.Context, m Member) bool `json:"-"`
	// Admit, when set, tells the leader whether a live gossip member may
	// be added to Raft, or re-added at a new address (the server asks the
	// member's API, over mutual TLS, to prove a node certificate of the
	// cluster's CA). It must honour ctx. Nil admits every member.
	Admit func(ctx context.Context, m Member) bool `json:"-"`
	// PromoteAfter is how long a non-voter must have been one before the
	// leader promotes it (stabilisation).
	PromoteAfter time.Duration `json:"-"`
	// ReconcileInterval is how often the leader reconciles gossip into Raft
	// membership even when gossip reports no change.
	ReconcileInterval time.Duration `json:"-"`

	// onReconcile, when set (tests only), receives the outcome of every
	// reconciliation round.
	onReconcile func(reconcileReport)
}

// GossipConfig configures memberlist gossip. The zero value of every timing
// means memberlist's LAN default.
type GossipConfig struct {
	// BindAddr is the host:port gossip listens on (TCP and UDP). Port 0
	// picks a free port (tests).
	BindAddr string
	// AdvertiseAddr is the host or host:port peers use to reach this node's
	// gossip, for containers and NAT (listen on 0.0.0.0, tell peers
	// "coffer1"). A host name is resolved once at start. Empty means the
	// bound address.
	AdvertiseAddr string
	// Join lists seed nodes (host:port). While this node knows no other live
	// member, it keeps trying them in the background with backoff.
	Join []string
	// ClusterKey, when set, must be exactly 32 bytes: gossip is encrypted and
	// authenticated with AES-256-GCM, and a node with another key (or none)
	// cannot join. Nil means gossip in the clear.
	ClusterKey []byte

	// ProbeInterval, ProbeTimeout, GossipInterval, SuspicionMult and
	// PushPullInterval tune memberlist's failure detector and
	// dissemination; zero means memberlist's LAN default.
	ProbeInterval    time.Duration
	ProbeTimeout     time.Duration
	GossipInterval   time.Duration
	SuspicionMult    int
	PushPullInterval time.Duration

	// DeadServerTimeout is how long a member must have been dead (or
	// unknown to gossip) before the leader removes it from Raft.
	DeadServerTimeout time.Duration
}

// DefaultDeadServerTimeout is how long a member must be dead before the
// leader removes it from Raft, unless GossipConfig says otherwise.
const DefaultDeadServerTimeout = 30 * time.Second

// Gossip defaults.
const (
	defaultGossipBindAddr    = ports.GossipAddr
	defaultPromoteAfter      = 2 * time.Second
	defaultReconcileInterval = 5 * time.Second
)

// withDefaults returns a copy of g with every zero field filled in.
func (g GossipConfig) withDefaults() GossipConfig {
	if g.BindAddr == "" {
		g.BindAddr = defaultGossipBindAddr
	}
	if g.DeadServerTimeout == 0 {
		g.DeadServerTimeout = DefaultDeadServerTimeout
	}
	return g
}

// Validate reports the first gossip field that cannot work, naming it.
func (g GossipConfig) Validate() error {
	g = g.withDefaults()
	if _, _, err := splitHostPort(g.BindAddr); err != nil {
		return fmt.Errorf("replication: gossip address %q: %w: use host:port", g.BindAddr, err)
	}
	if g.ClusterKey != nil && len(g.ClusterKey) != 32 {
		return fmt.Errorf("replication: cluster key has %d bytes: it must be exactly 32 (base64 of 32 random bytes)", len(g.ClusterKey))
	}
	for _, j := range g.Join {
		if j == "" {
			return errors.New("replication: empty join address: use host:port")
		}
	}
	switch {
	case g.ProbeInterval < 0, g.ProbeTimeout < 0, g.GossipInterval < 0, g.PushPullInterval < 0, g.SuspicionMult < 0:
		return errors.New("replication: gossip timings must not be negative")
	case g.DeadServerTimeout < 0:
		return fmt.Errorf("replication: dead server timeout %s is negative", g.DeadServerTimeout)
	}
	return nil
}

// splitHostPort splits host:port and parses the port.
func splitHostPort(hp string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}

// DefaultConfig returns the production defaults: timings for a LAN that
// elect a new leader well under a second after the old one dies.
func DefaultConfig() Config {
	return Config{
		BindAddr:           ports.RaftAddr,
		RaftLogStore:       DefaultLogStore,
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 300 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		// Raft checks every 2-4 s whether SnapshotThreshold entries piled
		// up: under a sustained write load the log (and the bbolt pages a
		// compaction walks, which count in a node's RSS) stays near 25,000
		// entries instead of hundreds of thousands. 4096 entries kept
		// behind a snapshot (etcd keeps 5,000) let a follower that missed
		// a second of writes catch up from the log; one that missed more
		// gets the snapshot, a few MiB. 10240 kept 3-6 MiB more of
		// raft.db mapped per node for no measured gain.
		SnapshotInterval:      2 * time.Second,
		SnapshotThreshold:     8192,
		TrailingLogs:          4096,
		MaxAppendEntries:      256,
		SnapshotsRetained:     2,
		SnapshotBytesPerEntry: DefaultSnapshotBytesPerEntry,
	}
}

// withDefaults fills every zero field from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = d.LeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = d.CommitTimeout
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.SnapshotBytesPerEntry == 0 {
		// A threshold set on purpose (tests, an operator) stays fixed.
		c.SnapshotBytesPerEntry = d.SnapshotBytesPerEntry
		if c.SnapshotThreshold != 0 {
			c.SnapshotBytesPerEntry = -1
		}
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.MaxAppendEntries == 0 {
		c.MaxAppendEntries = d.MaxAppendEntries
	}
	if c.SnapshotsRetained == 0 {
		c.SnapshotsRetained = d.SnapshotsRetained
	}
	if c.RaftLogStore == "" {
		c.RaftLogStore = DefaultLogStore
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.PromoteAfter == 0 {
		c.PromoteAfter = defaultPromoteAfter
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = defaultReconcileInterval
	}
	if c.Gossip != nil {
		g := c.Gossip.withDefaults()
		c.Gossip = &g
	}
	return c
}

// Validate reports the first field that cannot work, naming it.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.NodeID == "":
		return errors.New("replication: node id is empty: set -node-id")
	case c.DataDir == "":
		return errors.New("replication: data directory is empty: set -data-dir")
	case !ValidLogStore(c.RaftLogStore):
		return fmt.Errorf("replication: raft log store %q is not one of %s, %s: set -raft-log-store to one of them", c.RaftLogStore, LogStoreWAL, LogStoreBoltDB)
	case c.LeaderLeaseTimeout > c.HeartbeatTimeout:
		return fmt.Errorf("replication: leader lease timeout %s exceeds heartbeat timeout %s: lower it", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	case c.ElectionTimeout < c.HeartbeatTimeout:
		return fmt.Errorf("replication: election timeout %s is below heartbeat timeout %s: raise it", c.ElectionTimeout, c.HeartbeatTimeout)
	case c.MaxAppendEntries > 1024:
		return fmt.Errorf("replication: max append entries %d is above Raft's limit of 1024", c.MaxAppendEntries)
	case c.BootstrapExpect < 0:
		return fmt.Errorf("replication: bootstrap expect %d is negative", c.BootstrapExpect)
	case c.BootstrapExpect > 0 && c.Gossip == nil:
		return errors.New("replication: bootstrap expect needs gossip: set a gossip address and -join")
	case c.BootstrapExpect > 0 && c.Bootstrap:
		return errors.New("replication: bootstrap expect and one-node bootstrap exclude each other: drop one")
	case c.BootstrapExpect > 0 && c.ReadReplica:
		return errors.New("replication: a read replica never votes, so it cannot expect to bootstrap: drop -bootstrap-expect or -read-replica")
	case c.ReadReplica && c.Bootstrap:
		return errors.New("replication: a read replica cannot bootstrap a cluster: drop -read-replica or the bootstrap")
	case c.ReadReplica && c.Gossip == nil:
		return errors.New("replication: a read replica is found through gossip: set a gossip address and -join")
	case c.PromoteAfter < 0:
		return fmt.Errorf("replication: promote-after %s is negative", c.PromoteAfter)
	case c.ReconcileInterval < 0:
		return fmt.Errorf("replication: reconcile interval %s is negative", c.ReconcileInterval)
	}
	if c.Gossip != nil {
		if err := c.Gossip.Validate(); err != nil {
			return err
		}
	}
	if n := len(encodeMeta(c.worstCaseMeta(), true)); n > metaMaxSize {
		return fmt.Errorf("replication: gossip metadata for this node takes %d bytes, over memberlist's %d: shorten the node id, addresses or version", n, metaMaxSize)
	}
	return nil
}
