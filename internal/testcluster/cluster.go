package testcluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
	"coffer/replication"
	"coffer/server"
)

// Cluster is a set of coffer nodes running in this test process. Its
// methods that take a testing.TB fail that test; the others report
// through the error they return, or fail the test the cluster was created
// for.
type Cluster struct {
	// Shares and Token are the unseal key shares and the root token, set
	// by Init. A test that restores another cluster's snapshot may set
	// Token to that cluster's.
	Shares [][]byte
	Token  string

	t    testing.TB
	opts Options
	logs *logGate

	mu    sync.Mutex
	nodes []*Node
	// seeds are the gossip addresses of the first nodes, which every node
	// joins.
	seeds []string
	// certsDir and caKey are the cluster's certificates and CA key
	// (Options.TLS); clientTLS is the harness's client configuration.
	certsDir, caKey string
	clientTLS       *tls.Config
	// clusterKey encrypts the nodes' gossip.
	clusterKey []byte
	// SealKey is the static seal key of a cluster started with
	// Options.StaticSeal (the nodes' Node.SealKey).
	SealKey []byte
}

// Node is one member of a Cluster. Its id, addresses and data directory
// stay the same across restarts; the fields below them are replaced at
// each start, and must not be read while the node is being started.
type Node struct {
	// ID is the node's id in Raft and in Status ("n1", "n2", …).
	ID string
	// Dir is the node's data directory.
	Dir string
	// Net carries the node's Raft traffic and its calls to peers: Isolate
	// cuts the node off from its peers (clients still reach its API), Heal
	// reconnects it.
	Net *replication.Network
	// Srv is the running server.
	Srv *server.Server
	// Sys, KV and Op call the node's API over one connection, without a
	// token (see Cluster.Auth).
	Sys pb.SysClient
	KV  pb.KVClient
	Op  pb.OperatorClient

	conn    *grpc.ClientConn
	running bool
	// certsDir, when set, replaces the cluster's certificates for this
	// node (AddNodeWithCerts).
	certsDir                      string
	readReplica                   bool
	apiAddr, raftAddr, gossipAddr string
	// httpAddr is the HTTP API's address (served with Options.HTTP).
	httpAddr string
	tlsOn    bool
	// sealKey is the node's static seal key (nil: the Shamir seal).
	sealKey []byte
}

// SetSealKey sets the static seal key n starts with from its next start
// (nil: the Shamir seal), as an operator edits -seal and -seal-key-file
// before restarting a node for a seal migration. n must not be running.
func (n *Node) SetSealKey(key []byte) {
	n.sealKey = append([]byte(nil), key...)
	if key == nil {
		n.sealKey = nil
	}
}

// APIAddr returns the node's gRPC address (host:port), the same across
// restarts.
func (n *Node) APIAddr() string { return n.apiAddr }

// HTTPAddr returns the node's HTTP API address (host:port), the same
// across restarts; the node serves it only with Options.HTTP.
func (n *Node) HTTPAddr() string { return n.httpAddr }

// HTTPURL returns the URL of the node's HTTP API (https:// on a cluster
// with TLS), for VAULT_ADDR.
func (n *Node) HTTPURL() string {
	if n.certsDir != "" || n.tlsOn {
		return "https://" + n.httpAddr
	}
	return "http://" + n.httpAddr
}

// MetricsURL is the URL of the running node's /metrics ("" when the
// cluster has no Options.Metrics or the node is stopped).
func (n *Node) MetricsURL() string {
	if n.Srv == nil || n.Srv.MetricsAddr() == "" {
		return ""
	}
	return "http://" + n.Srv.MetricsAddr() + "/metrics"
}

// AuditFile is the node's audit file, <Dir>/audit.log; the node writes it
// only when the cluster runs with Options.AuditFiles.
func (n *Node) AuditFile() string { return filepath.Join(n.Dir, "audit.log") }

// SnapshotDir is where the node writes scheduled snapshots,
// <Dir>/snapshots (with Options.SnapshotInterval and no
// SnapshotSharedDir).
func (n *Node) SnapshotDir() string { return filepath.Join(n.Dir, "snapshots") }

// Init shares: the cluster is initialized with 5 key shares, 3 of which
// unseal a node.
const (
	initShares    = 5
	initThreshold = 3
)

// New starts size nodes (n1 … n<size>) on loopback and registers their
// shutdown with t.Cleanup. It waits for nothing: the nodes come up sealed
// and uninitialized, and may not have elected a leader yet. An error
// means a node did not start; the nodes that did are shut down with t.
func New(t testing.TB, size int, opts Options) (*Cluster, error) {
	opts, err := opts.withDefaults(size)
	if err != nil {
		return nil, err
	}
	c := &Cluster{t: t, opts: opts, clusterKey: make([]byte, 32)}
	if _, err := rand.Read(c.clusterKey); err != nil {
		return nil, err
	}
	if opts.StaticSeal {
		c.SealKey = make([]byte, 32)
		if _, err := rand.Read(c.SealKey); err != nil {
			return nil, err
		}
	}
	if opts.TLS {
		if err := c.makeCerts(t); err != nil {
			return nil, err
		}
	}
	// Cleanups run last registered first. The log gate closes after the
	// shutdown, so the shutdown's logs still reach t; and the data dirs
	// (t.TempDir's cleanup, registered at its first call) go after the
	// nodes have closed their files in them.
	c.logs = newLogGate(t)
	for i := 1; i <= size; i++ {
		n, err := c.newNode(fmt.Sprintf("n%d", i), t.TempDir(), false)
		if err != nil {
			return nil, err
		}
		if c.SealKey != nil {
			n.SetSealKey(c.SealKey)
		}
		c.nodes = append(c.nodes, n)
		c.seeds = append(c.seeds, n.gossipAddr)
	}
	t.Cleanup(c.Shutdown)
	errs := make([]error, size)
	parallel(c.nodes, func(i int, n *Node) { errs[i] = c.startFresh(i, n, size) })
	return c, errors.Join(errs...)
}

// Start is New that fails t when a node does not start, and then waits
// for a leader (WaitForLeader).
func Start(t testing.TB, size int, opts Options) *Cluster {
	t.Helper()
	c, err := New(t, size, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForLeader(t)
	return c
}

// StartUnsealed is Start, then Init through the leader, UnsealAll, and a
// wait for a leader ready to serve: a cluster ready for reads and writes
// with c.Token.
func StartUnsealed(t testing.TB, size int, opts Options) *Cluster {
	t.Helper()
	c := Start(t, size, opts)
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	c.WaitForLeader(t)
	return c
}

// newNode returns a node with fresh addresses that is not running yet.
func (c *Cluster) newNode(id, dir string, readReplica bool) (*Node, error) {
	n := &Node{ID: id, Dir: dir, readReplica: readReplica}
	return n, c.pickAddrs(n)
}

// pickAddrs gives n fresh addresses.
func (c *Cluster) pickAddrs(n *Node) error {
	var addrs [4]string
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		addrs[i] = a
	}
	c.mu.Lock()
	n.apiAddr, n.raftAddr, n.gossipAddr, n.httpAddr = addrs[0], addrs[1], addrs[2], addrs[3]
	n.tlsOn = c.opts.TLS
	c.mu.Unlock()
	return nil
}

// config builds a node's configuration.
func (c *Cluster) config(n *Node, expect int, network *replication.Network) server.Config {
	cfg := server.DefaultConfig()
	// The Raft timings of the options; the identity and addresses below.
	cfg.Config = c.opts.Raft
	cfg.NodeID, cfg.DataDir = n.ID, n.Dir
	if c.opts.RaftLogStore != "" {
		cfg.RaftLogStore = c.opts.RaftLogStore
	}
	c.mu.Lock()
	cfg.APIAddr, cfg.BindAddr = n.apiAddr, n.raftAddr
	if c.opts.HTTP {
		cfg.HTTPAddr = n.httpAddr
	}
	if !c.opts.Standalone {
		g := fastGossip()
		g.BindAddr = n.gossipAddr
		g.DeadServerTimeout = c.opts.DeadServerTimeout
		for _, s := range c.seeds {
			if s != n.gossipAddr {
				g.Join = append(g.Join, s)
			}
		}
		g.ClusterKey = c.clusterKey
		cfg.Gossip = &g
		cfg.BootstrapExpect = expect
	}
	c.mu.Unlock()
	cfg.ReadReplica = n.readReplica
	cfg.CertsDir = c.certsDir
	cfg.Insecure = c.certsDir == ""
	if n.certsDir != "" {
		cfg.CertsDir = n.certsDir
	}
	cfg.Network = network
	if c.opts.MaxInflightBytes != 0 {
		cfg.MaxInflightBytes = c.opts.MaxInflightBytes
	}
	if c.opts.Metrics {
		cfg.MetricsAddr = "127.0.0.1:0"
	}
	if c.opts.LeaseIntentWindow != 0 {
		cfg.LeaseIntentWindow = c.opts.LeaseIntentWindow
	}
	if c.opts.MaxLeases != 0 {
		cfg.MaxLeases = c.opts.MaxLeases
	}
	if c.opts.AuditFiles {
		cfg.AuditFiles = []string{n.AuditFile()}
		cfg.AuditTimeout = c.opts.AuditTimeout
	}
	if c.opts.SnapshotInterval != 0 {
		cfg.Snapshots = server.SnapshotSchedule{Interval: c.opts.SnapshotInterval, Dir: n.SnapshotDir(), Retain: c.opts.SnapshotRetain}
		if c.opts.SnapshotSharedDir != "" {
			cfg.Snapshots.Dir = c.opts.SnapshotSharedDir
		}
	}
	if n.sealKey != nil {
		cfg.Seal, cfg.SealKey = server.SealStatic, append([]byte(nil), n.sealKey...)
	}
	cfg.ShutdownTimeout = shutdownTimeout
	cfg.Logger = newLoggerTap(c.logs, c.opts.LogTap, n.ID, c.opts.LogLevel)
	return cfg
}

// startFresh starts a node for the first time. A port found free may have
// been taken since (by another process): then the node gets new addresses
// and tries again. seed is the node's index in c.seeds, or -1.
func (c *Cluster) startFresh(seed int, n *Node, expect int) error {
	for attempt := 1; ; attempt++ {
		err := c.start(n, expect)
		if err == nil || attempt == 5 || !addrInUse(err) {
			return err
		}
		c.t.Logf("starting %s: %v; again on other ports", n.ID, err)
		if err := c.pickAddrs(n); err != nil {
			return err
		}
		if seed >= 0 {
			c.mu.Lock()
			c.seeds[seed] = n.gossipAddr
			c.mu.Unlock()
		}
	}
}

// start runs a node's server on its addresses and data dir, with a new
// Network, and connects to its API.
func (c *Cluster) start(n *Node, expect int) error {
	network := &replication.Network{Tap: c.opts.Tap}
	srv, err := server.New(c.config(n, expect, network))
	if err != nil {
		return fmt.Errorf("testcluster: start %s: %w", n.ID, err)
	}
	if err := srv.Start(); err != nil {
		srv.Kill()
		return fmt.Errorf("testcluster: start %s: %w", n.ID, err)
	}
	conn, err := grpc.NewClient(srv.APIAddr(), grpc.WithTransportCredentials(c.creds()))
	if err != nil {
		srv.Kill()
		return fmt.Errorf("testcluster: connect to %s: %w", n.ID, err)
	}
	c.mu.Lock()
	n.Net, n.Srv, n.conn, n.running = network, srv, conn, true
	n.Sys, n.KV, n.Op = pb.NewSysClient(conn), pb.NewKVClient(conn), pb.NewOperatorClient(conn)
	c.mu.Unlock()
	return nil
}

// AddNode starts a new node (n<k+1>) that joins the running cluster
// through the gossip seeds with bootstrap_expect 0, as a voter-to-be or,
// with readReplica, as a read replica. It comes up sealed.
func (c *Cluster) AddNode(t testing.TB, readReplica bool) *Node {
	t.Helper()
	return c.addNode(t, readReplica, "")
}

// addNode starts node n<k+1> that joins through the gossip seeds, with
// certsDir's certificates when set.
func (c *Cluster) addNode(t testing.TB, readReplica bool, certsDir string) *Node {
	t.Helper()
	c.mu.Lock()
	id := fmt.Sprintf("n%d", len(c.nodes)+1)
	c.mu.Unlock()
	// A dir of the cluster's t, whose removal runs after the cluster's
	// shutdown (t may be a subtest's).
	n, err := c.newNode(id, c.t.TempDir(), readReplica)
	if err != nil {
		t.Fatal(err)
	}
	n.certsDir = certsDir
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	if err := c.startFresh(-1, n, 0); err != nil {
		t.Fatal(err)
	}
	return n
}

// AddNodeWithCerts is AddNode for a node with certificates of its own
// (certsDir: ca.crt, node.crt, node.key), say another CA's: it knows the
// gossip key and joins gossip, and the test sees what the cluster lets it
// do. The harness's own connection to it presents the cluster's client
// certificate.
func (c *Cluster) AddNodeWithCerts(t testing.TB, certsDir string) *Node {
	t.Helper()
	return c.addNode(t, false, certsDir)
}

// Nodes returns every node, running or not, in the order of their ids.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Node returns the node with the given id, or nil.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes() {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// Running returns the nodes that are up.
func (c *Cluster) Running() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.nodes {
		if n.running {
			out = append(out, n)
		}
	}
	return out
}

// IsRunning reports whether n is up.
func (c *Cluster) IsRunning(n *Node) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return n.running
}

// APIAddrs returns the API address of every node, running or not, in the
// order of Nodes.
func (c *Cluster) APIAddrs() []string {
	var out []string
	for _, n := range c.Nodes() {
		out = append(out, n.APIAddr())
	}
	return out
}

// Followers returns the running nodes other than leader.
func (c *Cluster) Followers(leader *Node) []*Node {
	var out []*Node
	for _, n := range c.Running() {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

// running returns n's server and connection, or an error when n is not
// running.
func (c *Cluster) running(n *Node) (*server.Server, *replication.Network, *grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !n.running {
		return nil, nil, nil, fmt.Errorf("testcluster: %s is not running", n.ID)
	}
	return n.Srv, n.Net, n.conn, nil
}

// stopped marks n as down.
func (c *Cluster) stopped(n *Node) {
	c.mu.Lock()
	n.running = false
	c.mu.Unlock()
}

// StopNode shuts n down gracefully within ctx (Server.Shutdown: the API
// stops, a leader hands leadership over, Raft stops), keeping its data
// dir; the node stays a member. It returns the shutdown's error.
func (c *Cluster) StopNode(ctx context.Context, n *Node) error {
	srv, _, conn, err := c.running(n)
	if err != nil {
		return err
	}
	conn.Close()
	err = c.bounded("graceful shutdown of "+n.ID, func() error { return srv.Shutdown(ctx) })
	c.stopped(n)
	return err
}

// Stop shuts n down gracefully (StopNode, within 10s) and logs an error
// of the shutdown.
func (c *Cluster) Stop(t testing.TB, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.StopNode(ctx, n); err != nil {
		t.Logf("shutdown %s: %v", n.ID, err)
	}
}

// Shutdown stops every running node gracefully, in parallel. It runs at
// the test's cleanup.
func (c *Cluster) Shutdown() {
	parallel(c.Running(), func(_ int, n *Node) { c.Stop(c.t, n) })
}

// parallel calls f for every node at once and returns when all are done.
func parallel(nodes []*Node, f func(i int, n *Node)) {
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { f(i, n) })
	}
	wg.Wait()
}

// Kill stops n without any grace, as a crash would: its network is cut
// first, so peers see it vanish mid-flight and calls in flight fail, then
// it stops without a leadership transfer. Its data dir is kept. Killing a
// node that is not running fails the test.
func (c *Cluster) Kill(n *Node) {
	srv, network, conn, err := c.running(n)
	if err != nil {
		c.t.Errorf("kill: %v", err)
		return
	}
	network.Isolate()
	c.bounded("kill of "+n.ID, func() error { srv.Kill(); return nil })
	conn.Close()
	c.stopped(n)
}

// KillAll kills every running node at once.
func (c *Cluster) KillAll() {
	parallel(c.Running(), func(_ int, n *Node) { c.Kill(n) })
}

// StartNode starts a stopped or killed node again with the same id,
// addresses and data dir; it comes back sealed. Its ports were free a
// moment ago; another socket may hold one briefly, so a start that finds
// one in use is tried again every 20ms until ctx ends.
func (c *Cluster) StartNode(ctx context.Context, n *Node) error {
	if c.IsRunning(n) {
		return fmt.Errorf("testcluster: %s is already running", n.ID)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := c.start(n, 0)
		if !addrInUse(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testcluster: start %s: %w (last: %v)", n.ID, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Restart starts a stopped or killed node again (StartNode, within 10s).
// It comes back sealed.
func (c *Cluster) Restart(t testing.TB, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.StartNode(ctx, n); err != nil {
		t.Fatal(err)
	}
}

// RestartAll restarts every node that is not running, one after the
// other. They come back sealed.
func (c *Cluster) RestartAll(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes() {
		if !c.IsRunning(n) {
			c.Restart(t, n)
		}
	}
}
