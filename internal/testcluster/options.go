package testcluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/replication"
)

// Options changes the shape of a Cluster. The zero value gives the fast
// test timings of FastRaft, gossip probes every 100ms, dead members kept
// for a minute and logs at info level.
type Options struct {
	// Raft holds the nodes' Raft timings. When its HeartbeatTimeout is
	// zero the nodes run with FastRaft(); otherwise Raft is used as given,
	// and its zero fields take replication's defaults. The identity and
	// address fields are set by the harness.
	Raft replication.Config
	// DeadServerTimeout is how long a member must be dead before the
	// leader removes it from Raft. Zero means one minute: nobody is
	// removed while a test has it down.
	DeadServerTimeout time.Duration
	// LogLevel is the level of the nodes' logs, which go to t.Log. Zero
	// (hclog.NoLevel) means hclog.Info; hclog.Off silences them.
	LogLevel hclog.Level
	// Standalone runs a one-node cluster without gossip (neither join
	// seeds nor bootstrap_expect), as `coffer server` runs without -join.
	// The size must be 1. Otherwise every node gossips and the first ones
	// bootstrap together with bootstrap_expect = size.
	Standalone bool
	// LeaderTimeout bounds WaitForLeader and WaitForNewLeader. Zero means
	// 10s.
	LeaderTimeout time.Duration
	// Tap, when set, sees every byte every node writes to its peers
	// (replication.Network.Tap); it must be safe for concurrent use.
	Tap func(p []byte)
	// MaxInflightBytes is each node's request-byte budget
	// (server.Config.MaxInflightBytes). Zero means the server's default.
	MaxInflightBytes int64
	// LeaseIntentWindow is each node's server.Config.LeaseIntentWindow
	// and MaxLeases its -max-leases (zero: the server's defaults).
	LeaseIntentWindow time.Duration
	MaxLeases         int64
	// Metrics serves each node's Prometheus metrics on a free loopback
	// port (Node.MetricsURL).
	Metrics bool
	// AuditFiles gives each node an audit file, Node.AuditFile(), in its
	// data directory (server.Config.AuditFiles); AuditTimeout is the
	// nodes' -audit-timeout (zero: the server's default).
	AuditFiles   bool
	AuditTimeout time.Duration
	// TLS runs the nodes with certificates of a CA made for the cluster
	// (CertsDir): TLS on the API, mutual TLS between nodes. The harness's
	// own connections present the client certificate "root".
	TLS bool
	// HTTP makes every node serve the Vault-compatible HTTP API too, on an
	// address of its own (Node.HTTPAddr, Node.HTTPURL).
	HTTP bool
	// LogTap, when set, also receives every line the nodes log (at
	// LogLevel and above), also after the test's end; it must be safe for
	// concurrent use. Tests that look for what must never be logged read
	// it.
	LogTap io.Writer
	// SnapshotInterval schedules snapshots on every node
	// (server.Config.Snapshots), each into its own Node.SnapshotDir(),
	// keeping SnapshotRetain (zero: the server's default).
	SnapshotInterval time.Duration
	SnapshotRetain   int
	// SnapshotSharedDir, when set, is the one snapshot directory of every
	// node instead of their own.
	SnapshotSharedDir string
	// StaticSeal runs every node under the static seal with one random
	// key (Cluster.SealKey): the nodes unseal themselves, and Init keeps
	// the recovery shares in Cluster.Shares.
	StaticSeal bool
	// RaftLogStore is the nodes' Raft log store (replication.LogStoreWAL
	// or LogStoreBoltDB). Empty means Raft.RaftLogStore, and when that is
	// empty too, $COFFER_TEST_RAFT_LOG_STORE, so that a whole suite runs
	// on either store; unset, the server's default.
	RaftLogStore string
}

// EnvRaftLogStore names the Raft log store of every cluster whose Options
// name none: wal or boltdb.
const EnvRaftLogStore = "COFFER_TEST_RAFT_LOG_STORE"

// Defaults of Options.
const (
	defaultDeadServerTimeout = time.Minute
	defaultLeaderTimeout     = 10 * time.Second
	// shutdownTimeout bounds a node's graceful gRPC stop.
	shutdownTimeout = 2 * time.Second
)

// FastRaft returns the fast Raft timings of the tests: 150ms heartbeat and
// election timeouts, a 100ms leader lease, non-voters promoted after
// 300ms and membership reconciled every 200ms.
func FastRaft() replication.Config {
	return replication.Config{
		HeartbeatTimeout:   150 * time.Millisecond,
		ElectionTimeout:    150 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		PromoteAfter:       300 * time.Millisecond,
		ReconcileInterval:  200 * time.Millisecond,
	}
}

// fastGossip returns the memberlist timings of every test cluster: a dead
// node is noticed within a few hundred milliseconds.
func fastGossip() replication.GossipConfig {
	return replication.GossipConfig{
		ProbeInterval:    100 * time.Millisecond,
		ProbeTimeout:     50 * time.Millisecond,
		GossipInterval:   50 * time.Millisecond,
		SuspicionMult:    2,
		PushPullInterval: time.Second,
	}
}

// withDefaults returns o with every zero field filled in, or an error when
// the options cannot describe a cluster of size nodes.
func (o Options) withDefaults(size int) (Options, error) {
	if size < 1 {
		return o, errors.New("testcluster: a cluster needs at least one node")
	}
	if o.Standalone && size != 1 {
		return o, errors.New("testcluster: Standalone needs a size of 1")
	}
	if o.RaftLogStore == "" {
		o.RaftLogStore = o.Raft.RaftLogStore
	}
	if o.RaftLogStore == "" {
		o.RaftLogStore = os.Getenv(EnvRaftLogStore)
		if !replication.ValidLogStore(o.RaftLogStore) {
			return o, fmt.Errorf("testcluster: $%s=%q: want %s or %s", EnvRaftLogStore, o.RaftLogStore, replication.LogStoreWAL, replication.LogStoreBoltDB)
		}
	}
	if !replication.ValidLogStore(o.RaftLogStore) {
		return o, fmt.Errorf("testcluster: RaftLogStore %q: want %s or %s", o.RaftLogStore, replication.LogStoreWAL, replication.LogStoreBoltDB)
	}
	if o.Raft.HeartbeatTimeout == 0 {
		o.Raft = FastRaft()
	}
	if o.DeadServerTimeout == 0 {
		o.DeadServerTimeout = defaultDeadServerTimeout
	}
	if o.LogLevel == hclog.NoLevel {
		o.LogLevel = hclog.Info
	}
	if o.LeaderTimeout == 0 {
		o.LeaderTimeout = defaultLeaderTimeout
	}
	return o, nil
}
