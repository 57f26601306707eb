package chaos

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/replication"
	"coffer/server"
)

// InProcess runs three coffer nodes in this process on loopback (real
// TCP, gRPC and bbolt in temporary directories). A kill cuts the node's
// replication.Network and stops it without a goodbye; a partition and a
// pause both cut its Network (its Raft traffic and its calls to peers),
// while clients still reach its API.
type InProcess struct {
	t    testing.TB
	opts InProcessOptions

	mu    sync.Mutex
	nodes []*inprocNode
	// done stops the nodes' logging once the test is over.
	done atomic.Bool
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
}

type inprocNode struct {
	id, dir                       string
	apiAddr, raftAddr, gossipAddr string
	net                           *replication.Network
	srv                           *server.Server
}

// NewInProcess starts three nodes with bootstrap_expect 3 and registers
// their shutdown with t.Cleanup. They come up sealed and uninitialized
// (NewCluster initializes them).
func NewInProcess(t testing.TB, opts InProcessOptions) (*InProcess, error) {
	p := &InProcess{t: t, opts: opts}
	t.Cleanup(func() { p.done.Store(true) })
	t.Cleanup(p.shutdown)
	for i := 1; i <= 3; i++ {
		p.nodes = append(p.nodes, &inprocNode{id: fmt.Sprintf("n%d", i), dir: t.TempDir()})
	}
	// Ports found free a moment ago may be taken since (by an outgoing
	// connection): then every node gets new ones and starts again.
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		for _, n := range p.nodes {
			n.apiAddr, n.raftAddr, n.gossipAddr = freeAddr(), freeAddr(), freeAddr()
		}
		errs := make([]error, len(p.nodes))
		var wg sync.WaitGroup
		for i, n := range p.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = p.start(n, 3)
			}()
		}
		wg.Wait()
		if err = errors.Join(errs...); err == nil || !strings.Contains(err.Error(), "address already in use") {
			return p, err
		}
		t.Logf("starting the nodes: %v; again on other ports", err)
		p.shutdown()
	}
	return p, err
}

// freeAddr returns a loopback host:port that was free (TCP and UDP) a
// moment ago, below the kernel's ephemeral range (32768 and up on Linux):
// the port of a node that is down must not be taken meanwhile by an
// outgoing connection or by another test's listener on port 0, or clients
// would talk to a stranger.
func freeAddr() string {
	for {
		port := 20000 + mrand.IntN(12000)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
}

// config builds a node's configuration: fast Raft and gossip timings,
// dead members kept for a minute (a killed node is not removed while the
// scenario restarts it).
func (p *InProcess) config(n *inprocNode, expect int) server.Config {
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.DataDir = n.id, n.dir
	cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = n.apiAddr, n.raftAddr, n.gossipAddr
	cfg.BootstrapExpect = expect
	for _, o := range p.nodes {
		if o != n {
			cfg.Join = append(cfg.Join, o.gossipAddr)
		}
	}
	cfg.DeadServerTimeout = time.Minute
	cfg.Raft = replication.Config{
		HeartbeatTimeout:   150 * time.Millisecond,
		ElectionTimeout:    150 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		PromoteAfter:       300 * time.Millisecond,
		ReconcileInterval:  200 * time.Millisecond,
	}
	if r := p.opts.Raft; r.HeartbeatTimeout > 0 {
		cfg.Raft.HeartbeatTimeout, cfg.Raft.ElectionTimeout = r.HeartbeatTimeout, r.ElectionTimeout
		cfg.Raft.LeaderLeaseTimeout, cfg.Raft.CommitTimeout = r.LeaderLeaseTimeout, r.CommitTimeout
	}
	cfg.Gossip = replication.GossipConfig{
		ProbeInterval:    100 * time.Millisecond,
		ProbeTimeout:     50 * time.Millisecond,
		GossipInterval:   50 * time.Millisecond,
		SuspicionMult:    2,
		PushPullInterval: time.Second,
	}
	cfg.Network = n.net
	cfg.ShutdownTimeout = 2 * time.Second
	level := p.opts.LogLevel
	if level == hclog.NoLevel {
		level = hclog.Off
	}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: n.id, Level: level, Output: logWriter{t: p.t, done: &p.done}})
	return cfg
}

// logWriter routes a node's logs to the test log until the test ends.
type logWriter struct {
	t    testing.TB
	done *atomic.Bool
}

func (w logWriter) Write(b []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

// start runs a node on its addresses and data dir.
func (p *InProcess) start(n *inprocNode, expect int) error {
	n.net = &replication.Network{}
	srv, err := server.New(p.config(n, expect))
	if err != nil {
		return fmt.Errorf("chaos: start %s: %w", n.id, err)
	}
	if err := srv.Start(); err != nil {
		srv.Kill()
		return err
	}
	p.mu.Lock()
	n.srv = srv
	p.mu.Unlock()
	return nil
}

// shutdown stops every running node gracefully.
func (p *InProcess) shutdown() {
	var wg sync.WaitGroup
	for _, n := range p.nodes {
		p.mu.Lock()
		srv := n.srv
		n.srv = nil
		p.mu.Unlock()
		if srv == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
		}()
	}
	wg.Wait()
}

func (p *InProcess) node(id string) (*inprocNode, error) {
	for _, n := range p.nodes {
		if n.id == id {
			return n, nil
		}
	}
	return nil, fmt.Errorf("chaos: no node %s", id)
}

// running returns the node's server, or an error when it is not running.
func (p *InProcess) running(id string) (*inprocNode, *server.Server, error) {
	n, err := p.node(id)
	if err != nil {
		return nil, nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n.srv == nil {
		return nil, nil, fmt.Errorf("chaos: %s is not running", id)
	}
	return n, n.srv, nil
}

// Name implements Driver.
func (p *InProcess) Name() string { return "in-process" }

// Nodes implements Driver.
func (p *InProcess) Nodes() []string { return []string{"n1", "n2", "n3"} }

// Endpoint implements Driver.
func (p *InProcess) Endpoint(id string) string {
	n, err := p.node(id)
	if err != nil {
		return ""
	}
	return n.apiAddr
}

// Hold implements Driver: well above the 150ms election timeout.
func (p *InProcess) Hold() time.Duration { return time.Second }

// Kill implements Driver: the node's network is cut first, so that peers
// see it vanish mid-flight, then it stops without a leadership transfer.
func (p *InProcess) Kill(_ context.Context, id string) error {
	n, srv, err := p.running(id)
	if err != nil {
		return err
	}
	n.net.Isolate()
	srv.Kill()
	p.mu.Lock()
	n.srv = nil
	p.mu.Unlock()
	return nil
}

// Stop implements Driver: Server.Shutdown.
func (p *InProcess) Stop(ctx context.Context, id string) error {
	n, srv, err := p.running(id)
	if err != nil {
		return err
	}
	err = srv.Shutdown(ctx)
	p.mu.Lock()
	n.srv = nil
	p.mu.Unlock()
	return err
}

// Start implements Driver: the same id, addresses and data dir. The API
// port was free a moment ago; another socket may hold it briefly, so a
// start that finds it in use is tried again until ctx ends.
func (p *InProcess) Start(ctx context.Context, id string) error {
	n, err := p.node(id)
	if err != nil {
		return err
	}
	return poll(ctx, "start "+id, func() error {
		err := p.start(n, 0)
		if err != nil && !strings.Contains(err.Error(), "address already in use") {
			return backoffStop{err}
		}
		return err
	})
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
	n, _, err := p.running(id)
	if err != nil {
		return err
	}
	n.net.Isolate()
	return nil
}

// Heal implements Driver.
func (p *InProcess) Heal(_ context.Context, id string) error {
	n, _, err := p.running(id)
	if err != nil {
		return err
	}
	n.net.Heal()
	return nil
}

// Pause implements Driver: a node cannot be frozen inside this process,
// so a pause cuts its network like a partition; Resume heals it.
func (p *InProcess) Pause(ctx context.Context, id string) error { return p.Partition(ctx, id) }

// Resume implements Driver.
func (p *InProcess) Resume(ctx context.Context, id string) error { return p.Heal(ctx, id) }

var _ Driver = (*InProcess)(nil)

// backoffStop is an error that ends a poll at once.
type backoffStop struct{ err error }

func (b backoffStop) Error() string { return b.err.Error() }
func (b backoffStop) Unwrap() error { return b.err }
