package chaos

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/internal/testcluster"
	"coffer/replication"
)

// InProcess runs coffer nodes (three voters unless InProcessOptions.Nodes
// says otherwise, and a read replica with InProcessOptions.ReadReplica) in
// this process on loopback (real TCP, gRPC and bbolt in temporary
// directories), with internal/testcluster.
// A kill cuts the node's replication.Network and stops it without a
// goodbye; a partition and a pause both cut its Network (its Raft traffic
// and its calls to peers), while clients still reach its API.
type InProcess struct {
	c *testcluster.Cluster
	// voters and replicas are the node ids (n1 … n<Nodes>, then the read
	// replica's).
	voters, replicas []string
}

// InProcessOptions tune an in-process cluster.
type InProcessOptions struct {
	// Raft overrides the fast test timings (150ms heartbeat and election
	// timeouts) when its fields are set; replication.DefaultConfig()
	// gives the production ones.
	Raft replication.Config
	// LogLevel of the nodes' logs, which go to t.Log. Default off: Raft
	// logs every failed append at error level, and a fault makes many.
	LogLevel hclog.Level
	// TLS runs the nodes with certificates of a CA made for the cluster:
	// TLS on the API, mutual TLS between nodes (testcluster's Options.TLS).
	TLS bool
	// Nodes is the number of voters (default 3).
	Nodes int
	// ReadReplica adds a read replica (n<Nodes+1>): it joins the voters
	// through gossip, is added to Raft as a non-voter, and serves stale
	// reads (Driver.Replicas).
	ReadReplica bool
}

// NewInProcess starts the voters with bootstrap_expect set to their
// number, then the read replica if asked for, and registers their
// shutdown with t.Cleanup. They come up sealed and uninitialized
// (NewCluster initializes them).
func NewInProcess(t testing.TB, opts InProcessOptions) (*InProcess, error) {
	raft := testcluster.FastRaft()
	if r := opts.Raft; r.HeartbeatTimeout > 0 {
		raft.HeartbeatTimeout, raft.ElectionTimeout = r.HeartbeatTimeout, r.ElectionTimeout
		raft.LeaderLeaseTimeout, raft.CommitTimeout = r.LeaderLeaseTimeout, r.CommitTimeout
	}
	level := opts.LogLevel
	if level == hclog.NoLevel {
		level = hclog.Off
	}
	size := opts.Nodes
	if size == 0 {
		size = 3
	}
	c, err := testcluster.New(t, size, testcluster.Options{Raft: raft, LogLevel: level, TLS: opts.TLS})
	if err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	p := &InProcess{c: c}
	for _, n := range c.Nodes() {
		p.voters = append(p.voters, n.ID)
	}
	if opts.ReadReplica {
		p.replicas = append(p.replicas, c.AddNode(t, true).ID)
	}
	return p, nil
}

// node returns the node with the given id.
func (p *InProcess) node(id string) (*testcluster.Node, error) {
	if n := p.c.Node(id); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("chaos: no node %s", id)
}

// running returns the node with the given id, or an error when it is not
// running.
func (p *InProcess) running(id string) (*testcluster.Node, error) {
	n, err := p.node(id)
	if err != nil {
		return nil, err
	}
	if !p.c.IsRunning(n) {
		return nil, fmt.Errorf("chaos: %s is not running", id)
	}
	return n, nil
}

// Name implements Driver.
func (p *InProcess) Name() string { return "in-process" }

// Nodes implements Driver.
func (p *InProcess) Nodes() []string { return append([]string(nil), p.voters...) }

// Replicas implements Driver.
func (p *InProcess) Replicas() []string { return append([]string(nil), p.replicas...) }

// Endpoint implements Driver.
func (p *InProcess) Endpoint(id string) string {
	n, err := p.node(id)
	if err != nil {
		return ""
	}
	return n.APIAddr()
}

// Hold implements Driver: well above the 150ms election timeout.
func (p *InProcess) Hold() time.Duration { return time.Second }

// ClientTLS implements Driver: the harness's client configuration, with
// the client certificate root (nil without InProcessOptions.TLS).
func (p *InProcess) ClientTLS() *tls.Config { return p.c.ClientTLS() }

// Kill implements Driver: the node's network is cut first, so that peers
// see it vanish mid-flight, then it stops without a leadership transfer.
func (p *InProcess) Kill(_ context.Context, id string) error {
	n, err := p.running(id)
	if err != nil {
		return err
	}
	p.c.Kill(n)
	return nil
}

// Stop implements Driver: Server.Shutdown.
func (p *InProcess) Stop(ctx context.Context, id string) error {
	n, err := p.running(id)
	if err != nil {
		return err
	}
	return p.c.StopNode(ctx, n)
}

// Start implements Driver: the same id, addresses and data dir. The API
// port was free a moment ago; another socket may hold it briefly, so a
// start that finds it in use is tried again until ctx ends.
func (p *InProcess) Start(ctx context.Context, id string) error {
	n, err := p.node(id)
	if err != nil {
		return err
	}
	return p.c.StartNode(ctx, n)
}

// Restart implements Driver.
func (p *InProcess) Restart(ctx context.Context, id string) error {
	if err := p.Stop(ctx, id); err != nil {
		return err
	}
	return p.Start(ctx, id)
}

// Partition implements Driver.
func (p *InProcess) Partition(_ context.Context, id string) error {
	n, err := p.running(id)
	if err != nil {
		return err
	}
	n.Net.Isolate()
	return nil
}

// Heal implements Driver.
func (p *InProcess) Heal(_ context.Context, id string) error {
	n, err := p.running(id)
	if err != nil {
		return err
	}
	n.Net.Heal()
	return nil
}

// Pause implements Driver: a node cannot be frozen inside this process,
// so a pause cuts its network like a partition; Resume heals it.
func (p *InProcess) Pause(ctx context.Context, id string) error { return p.Partition(ctx, id) }

// Resume implements Driver.
func (p *InProcess) Resume(ctx context.Context, id string) error { return p.Heal(ctx, id) }

var _ Driver = (*InProcess)(nil)
