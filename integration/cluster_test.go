package integration

import (
	"context"
	"io"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/api"
	"coffer/internal/testcluster"
	"coffer/replication"
)

// Cluster is a set of coffer nodes running in this test process
// (internal/testcluster), with an api.Client for any of them.
type Cluster struct{ *testcluster.Cluster }

// Node is one member of a Cluster.
type Node = testcluster.Node

// ClusterOptions changes the shape of a test cluster.
type ClusterOptions struct {
	// DeadServerTimeout is how long a dead member stays in Raft (default 2s).
	DeadServerTimeout time.Duration
	// ProductionRaft runs Raft with replication.DefaultConfig()'s timings
	// (the tuned production defaults) instead of the fast test timings;
	// gossip and reconciliation keep their fast test settings.
	ProductionRaft bool
	// WALSegmentSize is the nodes' raft-wal segment size (default 16 MiB).
	WALSegmentSize int
	// TLS runs the cluster with certificates (testcluster.Options.TLS).
	TLS bool
	// HTTP makes every node serve the Vault-compatible HTTP API too
	// (testcluster.Options.HTTP, Node.HTTPAddr).
	HTTP bool
	// Tap sees the bytes nodes write to each other (testcluster.Options.Tap).
	Tap func(p []byte)
	// MaxInflightBytes is each node's request-byte budget (0: the default).
	MaxInflightBytes int64
	// AuditFiles gives each node an audit file (Node.AuditFile()), and
	// AuditTimeout their -audit-timeout.
	AuditFiles   bool
	AuditTimeout time.Duration
	// LeaseIntentWindow and MaxLeases are the nodes' lease settings (0:
	// the server's defaults).
	LeaseIntentWindow time.Duration
	MaxLeases         int64
	// LogTap also receives the nodes' log lines (testcluster.Options.LogTap).
	LogTap io.Writer
	// Metrics serves each node's /metrics (Node.MetricsURL).
	Metrics bool
	// SnapshotInterval and SnapshotRetain schedule snapshots on every
	// node, into Node.SnapshotDir() (testcluster.Options).
	SnapshotInterval time.Duration
	SnapshotRetain   int
	// SnapshotSharedDir makes every node write its snapshots there.
	SnapshotSharedDir string
	// StaticSeal runs the nodes under the static seal
	// (testcluster.Options.StaticSeal).
	StaticSeal bool
}

// NewCluster starts size nodes with bootstrap_expect = size and waits
// until they have elected a leader. They are sealed and uninitialized
// (Init, UnsealAll). Cleanup is registered with t.
func NewCluster(t testing.TB, size int, opts ...ClusterOptions) *Cluster {
	t.Helper()
	var o ClusterOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.DeadServerTimeout == 0 {
		o.DeadServerTimeout = 2 * time.Second
	}
	// Fast, but not so fast that a scheduling stall of a loaded machine
	// (-race on two cores, other test binaries running) makes a healthy
	// leader miss its lease and step down: stalls of ~230ms were seen
	// with a 100ms lease (testcluster.FastRaft's).
	raft := testcluster.FastRaft()
	raft.HeartbeatTimeout = 200 * time.Millisecond
	raft.ElectionTimeout = 200 * time.Millisecond
	raft.LeaderLeaseTimeout = 200 * time.Millisecond
	raft.WALSegmentSize = o.WALSegmentSize
	if o.ProductionRaft {
		d := replication.DefaultConfig()
		raft.HeartbeatTimeout = d.HeartbeatTimeout
		raft.ElectionTimeout = d.ElectionTimeout
		raft.LeaderLeaseTimeout = d.LeaderLeaseTimeout
		raft.CommitTimeout = d.CommitTimeout
	}
	return &Cluster{testcluster.Start(t, size, testcluster.Options{
		Raft:              raft,
		DeadServerTimeout: o.DeadServerTimeout,
		LogLevel:          hclog.Debug,
		TLS:               o.TLS,
		HTTP:              o.HTTP,
		Tap:               o.Tap,
		MaxInflightBytes:  o.MaxInflightBytes,
		AuditFiles:        o.AuditFiles,
		AuditTimeout:      o.AuditTimeout,
		LeaseIntentWindow: o.LeaseIntentWindow,
		MaxLeases:         o.MaxLeases,
		Metrics:           o.Metrics,
		LogTap:            o.LogTap,
		SnapshotInterval:  o.SnapshotInterval,
		SnapshotRetain:    o.SnapshotRetain,
		SnapshotSharedDir: o.SnapshotSharedDir,
		StaticSeal:        o.StaticSeal,
	})}
}

// unsealedCluster starts a three-node cluster with opts, initializes and
// unseals it, and returns it with its leader and a root client of the
// leader.
func unsealedCluster(t testing.TB, opts ClusterOptions) (*Cluster, *Node, *api.Client) {
	t.Helper()
	c := NewCluster(t, 3, opts)
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	leader := c.WaitForLeader(t)
	return c, leader, c.Client(t, leader)
}

// Client returns an api.Client over the given nodes' endpoints (all
// running nodes when none are given) with c.Token. It is closed with the
// test.
func (c *Cluster) Client(t testing.TB, nodes ...*Node) *api.Client {
	t.Helper()
	if len(nodes) == 0 {
		nodes = c.Running()
	}
	var eps []string
	for _, n := range nodes {
		eps = append(eps, n.APIAddr())
	}
	cl, err := api.New(api.Config{Endpoints: eps, Token: c.Token, TLS: c.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// ctx returns a context with a deadline that ends with the test.
func ctx(t testing.TB) context.Context { return testcluster.Context(t, 10*time.Second) }

// ids lists node ids, sorted.
func ids(nodes []*Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.ID)
	}
	sort.Strings(out)
	return out
}
