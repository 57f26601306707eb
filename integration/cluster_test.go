package integration

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/replication"
	"coffer/server"
)

// Cluster is a set of coffer nodes running in this test process.
type Cluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes []*Node
	// seeds are the gossip addresses every node joins.
	seeds []string
	// Shares and Token are set by Init.
	Shares [][]byte
	Token  string
	opts   ClusterOptions
	// logDone stops logging to t once the test is over.
	logDone *atomic.Bool
}

// ClusterOptions changes the shape of a test cluster.
type ClusterOptions struct {
	// DeadServerTimeout is how long a dead member stays in Raft (default 2s).
	DeadServerTimeout time.Duration
	// ProductionRaft runs Raft with replication.DefaultConfig()'s timings
	// (the tuned production defaults) instead of the fast test timings;
	// gossip and reconciliation keep their fast test settings.
	ProductionRaft bool
}

// Node is one member of a Cluster.
type Node struct {
	ID      string
	Dir     string
	Net     *replication.Network
	Srv     *server.Server
	conn    *grpc.ClientConn
	Sys     pb.SysClient
	KV      pb.KVClient
	Op      pb.OperatorClient
	running bool
	// gossip, raft and api addresses are kept across restarts.
	gossipAddr, raftAddr, apiAddr string
	readReplica                   bool
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// NewCluster starts size nodes with bootstrap_expect = size and waits
// until they have elected a leader. Cleanup is registered with t.
func NewCluster(t testing.TB, size int, opts ...ClusterOptions) *Cluster {
	t.Helper()
	c := &Cluster{t: t, logDone: new(atomic.Bool)}
	t.Cleanup(func() { c.logDone.Store(true) })
	if len(opts) > 0 {
		c.opts = opts[0]
	}
	if c.opts.DeadServerTimeout == 0 {
		c.opts.DeadServerTimeout = 2 * time.Second
	}
	for i := 1; i <= size; i++ {
		n := &Node{ID: fmt.Sprintf("n%d", i), Dir: t.TempDir(), gossipAddr: freeAddr(t), raftAddr: freeAddr(t), apiAddr: freeAddr(t)}
		c.nodes = append(c.nodes, n)
		c.seeds = append(c.seeds, n.gossipAddr)
	}
	t.Cleanup(c.Shutdown)
	var wg sync.WaitGroup
	errs := make([]error, size)
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startFresh(t, i, n, size)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.WaitForLeader(t)
	return c
}

// config builds a node's server configuration with fast test timings.
func (c *Cluster) config(n *Node, expect int) server.Config {
	cfg := server.DefaultConfig()
	cfg.NodeID = n.ID
	cfg.DataDir = n.Dir
	cfg.APIAddr = n.apiAddr
	cfg.RaftAddr = n.raftAddr
	cfg.GossipAddr = n.gossipAddr
	cfg.BootstrapExpect = expect
	cfg.ReadReplica = n.readReplica
	c.mu.Lock()
	for _, s := range c.seeds {
		if s != n.gossipAddr {
			cfg.Join = append(cfg.Join, s)
		}
	}
	c.mu.Unlock()
	cfg.DeadServerTimeout = c.opts.DeadServerTimeout
	// Fast, but not so fast that a scheduling stall of a loaded machine
	// (-race on two cores, other test binaries running) makes a healthy
	// leader miss its lease and step down: stalls of ~230ms were seen
	// with a 100ms lease.
	cfg.Raft = replication.Config{
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 200 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		PromoteAfter:       300 * time.Millisecond,
		ReconcileInterval:  200 * time.Millisecond,
	}
	if c.opts.ProductionRaft {
		d := replication.DefaultConfig()
		cfg.Raft.HeartbeatTimeout = d.HeartbeatTimeout
		cfg.Raft.ElectionTimeout = d.ElectionTimeout
		cfg.Raft.LeaderLeaseTimeout = d.LeaderLeaseTimeout
		cfg.Raft.CommitTimeout = d.CommitTimeout
	}
	cfg.Gossip = replication.GossipConfig{
		ProbeInterval:    100 * time.Millisecond,
		ProbeTimeout:     50 * time.Millisecond,
		GossipInterval:   50 * time.Millisecond,
		SuspicionMult:    2,
		PushPullInterval: time.Second,
	}
	cfg.Network = n.Net
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: n.ID, Level: hclog.Debug, Output: logWriter{t: c.t, done: c.logDone}})
	return cfg
}

// logWriter routes a node's logs to the test log until the test ends;
// memberlist may log from a goroutine that is just winding down.
type logWriter struct {
	t    testing.TB
	done *atomic.Bool
}

func (w logWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// startFresh starts a new node. A port freeAddr found free may have been
// taken since (an outgoing connection's ephemeral port): then the node gets
// new addresses and tries again. seed is its index in c.seeds, or -1.
func (c *Cluster) startFresh(t testing.TB, seed int, n *Node, expect int) error {
	for attempt := 1; ; attempt++ {
		err := c.start(n, expect)
		if err == nil || attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		c.t.Logf("starting %s: %v; retrying on other ports", n.ID, err)
		c.mu.Lock()
		n.gossipAddr, n.raftAddr, n.apiAddr = freeAddr(t), freeAddr(t), freeAddr(t)
		if seed >= 0 {
			c.seeds[seed] = n.gossipAddr
		}
		c.mu.Unlock()
	}
}

// start runs a node's server on its addresses and data dir.
func (c *Cluster) start(n *Node, expect int) error {
	n.Net = &replication.Network{}
	srv, err := server.New(c.config(n, expect))
	if err != nil {
		return fmt.Errorf("start %s: %w", n.ID, err)
	}
	if err := srv.Start(); err != nil {
		return err
	}
	conn, err := grpc.NewClient(srv.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	c.mu.Lock()
	n.Srv, n.conn, n.running = srv, conn, true
	n.Sys, n.KV, n.Op = pb.NewSysClient(conn), pb.NewKVClient(conn), pb.NewOperatorClient(conn)
	c.mu.Unlock()
	return nil
}

// Nodes returns every node, running or not.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Node returns the node with the given id.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.nodes {
		if n.ID == id {
			return n
		}
	}
	c.t.Fatalf("no node %s", id)
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

// Shutdown stops every running node gracefully.
func (c *Cluster) Shutdown() {
	var wg sync.WaitGroup
	for _, n := range c.Running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop(n)
		}()
	}
	wg.Wait()
}

func (c *Cluster) stop(n *Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.conn.Close()
	c.bounded("graceful shutdown of "+n.ID, func() {
		if err := n.Srv.Shutdown(ctx); err != nil {
			c.t.Logf("shutdown %s: %v", n.ID, err)
		}
	})
	c.mu.Lock()
	n.running = false
	c.mu.Unlock()
}

// stuckAfter bounds a node's shutdown or kill in the harness: one that
// hangs fails the test with the goroutines that hold it, instead of
// hanging the package until go test's timeout.
const stuckAfter = 20 * time.Second

// bounded runs f and fails the test (without waiting further) when it has
// not returned after stuckAfter, logging the goroutines of Raft and of the
// node's shutdown. The stuck goroutine is leaked (goleak will also say so).
func (c *Cluster) bounded(what string, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	timer := time.NewTimer(stuckAfter)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		c.t.Errorf("%s has not returned after %s; goroutines of raft and of the shutdown:\n%s", what, stuckAfter, stuckStacks())
	}
}

// stuckStacks returns the stacks of the goroutines that explain a hung
// shutdown: raft's replication and pipeline goroutines and coffer's
// shutdown path.
func stuckStacks() string {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, mark := range []string{"raft.(*Raft).replicate", "raft.(*Raft).pipeline", "raft.(*netPipeline)", "raft.(*Raft).heartbeat", "(*Node).shutdown", "raft.(*raftState).waitShutdown"} {
			if strings.Contains(g, mark) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// Stop shuts a node down gracefully (Srv.Shutdown: the API stops, a leader
// transfers leadership, Raft stops; the data dir is kept and the node stays
// a member).
func (c *Cluster) Stop(t testing.TB, n *Node) {
	t.Helper()
	c.stop(n)
}

// Kill stops a node without any grace: its network is cut first, so peers
// see it vanish mid-flight, then it is shut down (keeping its data dir).
func (c *Cluster) Kill(n *Node) {
	c.t.Helper()
	n.Net.Isolate()
	c.bounded("kill of "+n.ID, n.Srv.Kill)
	n.conn.Close()
	c.mu.Lock()
	n.running = false
	c.mu.Unlock()
}

// Restart starts a stopped node again with the same id, addresses and data
// dir. It comes back sealed.
func (c *Cluster) Restart(t testing.TB, n *Node) {
	t.Helper()
	if err := c.start(n, 0); err != nil {
		t.Fatal(err)
	}
}

// AddNode starts a new node (n<k+1>) that joins the running cluster through
// the gossip seeds with bootstrap_expect 0, as a voter-to-be or, with
// readReplica, as a read replica. It comes up sealed.
func (c *Cluster) AddNode(t testing.TB, readReplica bool) *Node {
	t.Helper()
	c.mu.Lock()
	n := &Node{ID: fmt.Sprintf("n%d", len(c.nodes)+1), Dir: t.TempDir(), gossipAddr: freeAddr(t), raftAddr: freeAddr(t), apiAddr: freeAddr(t), readReplica: readReplica}
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	if err := c.startFresh(t, -1, n, 0); err != nil {
		t.Fatal(err)
	}
	return n
}

// Status asks node n for its status.
func (c *Cluster) Status(t testing.TB, n *Node) *pb.StatusResponse {
	t.Helper()
	st, err := n.Sys.Status(ctx(t), &pb.StatusRequest{})
	if err != nil {
		t.Fatalf("status of %s: %v", n.ID, err)
	}
	return st
}

// Init initializes the cluster through node n (shares 5, threshold 3).
func (c *Cluster) Init(t testing.TB, n *Node) {
	t.Helper()
	var res *pb.InitResponse
	retried := false
	waitFor(t, 10*time.Second, "init through "+n.ID, func() error {
		var err error
		res, err = n.Sys.Init(ctx(t), &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
		switch {
		case err == nil:
			return nil
		case status.Code(err) == codes.Unavailable:
			// No leader for a moment (an election): init did not commit,
			// or it did and the retry below says so.
			retried = true
			return err
		case retried && status.Code(err) == codes.FailedPrecondition:
			t.Fatalf("init through %s committed although it answered Unavailable (its shares are lost): %v", n.ID, err)
		}
		t.Fatalf("init through %s: %v", n.ID, err)
		return nil
	})
	c.Shares, c.Token = res.Keys, res.RootToken
}

// Unseal unseals one node with shares starting at offset.
func (c *Cluster) Unseal(t testing.TB, n *Node, offset int) {
	t.Helper()
	unsealWith(t, n, c.Shares, offset)
}

// unsealWith unseals n with three of shares (threshold 3) starting at
// offset: shares of this cluster, or of another one after a forced
// snapshot restore.
func unsealWith(t testing.TB, n *Node, shares [][]byte, offset int) {
	t.Helper()
	for i := 0; i < 3; i++ {
		st, err := n.Sys.Unseal(ctx(t), &pb.UnsealRequest{Key: shares[(offset+i)%len(shares)]})
		if err != nil {
			t.Fatalf("unseal %s: %v", n.ID, err)
		}
		if i == 2 && st.Sealed {
			t.Fatalf("%s still sealed after 3 shares", n.ID)
		}
	}
}

// UnsealAll unseals every running node.
func (c *Cluster) UnsealAll(t testing.TB) {
	t.Helper()
	for i, n := range c.Running() {
		c.Unseal(t, n, i)
	}
}

// Leader returns the node every running node agrees leads, or nil.
func (c *Cluster) Leader() *Node {
	var leader *Node
	for _, n := range c.Running() {
		if n.Net.Isolated() {
			continue
		}
		st, err := n.Sys.Status(context.Background(), &pb.StatusRequest{})
		if err != nil || st.LeaderId == "" {
			return nil
		}
		l := c.nodeByID(st.LeaderId)
		if l == nil || (leader != nil && leader != l) || !l.running {
			return nil
		}
		leader = l
	}
	return leader
}

func (c *Cluster) nodeByID(id string) *Node {
	for _, n := range c.nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// WaitForLeader waits until the connected running nodes agree on a leader
// and it is ready to serve.
func (c *Cluster) WaitForLeader(t testing.TB) *Node {
	t.Helper()
	var leader *Node
	waitFor(t, 10*time.Second, "a leader all nodes agree on", func() error {
		leader = c.Leader()
		if leader == nil {
			return fmt.Errorf("no agreed leader")
		}
		c2, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		return leader.Srv.WaitLeaderReady(c2)
	})
	return leader
}

// WaitForNewLeader waits for a leader other than old.
func (c *Cluster) WaitForNewLeader(t testing.TB, old *Node) *Node {
	t.Helper()
	var leader *Node
	waitFor(t, 10*time.Second, "a new leader", func() error {
		leader = c.Leader()
		if leader == nil || leader == old {
			return fmt.Errorf("leader is still %v", leader)
		}
		return nil
	})
	return leader
}

// Followers returns the running nodes other than the leader.
func (c *Cluster) Followers(leader *Node) []*Node {
	var out []*Node
	for _, n := range c.Running() {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

// WaitForApplied waits until every running node has applied index.
func (c *Cluster) WaitForApplied(t testing.TB, index uint64) {
	t.Helper()
	for _, n := range c.Running() {
		waitFor(t, 10*time.Second, n.ID+" applied index", func() error {
			st, err := n.Sys.Status(context.Background(), &pb.StatusRequest{})
			if err != nil {
				return err
			}
			if st.AppliedIndex < index {
				return fmt.Errorf("%s at %d, want %d", n.ID, st.AppliedIndex, index)
			}
			return nil
		})
	}
}

// Client returns an api.Client over the given nodes' endpoints (all
// running nodes when none are given).
func (c *Cluster) Client(t testing.TB, nodes ...*Node) *api.Client {
	t.Helper()
	if len(nodes) == 0 {
		nodes = c.Running()
	}
	var eps []string
	for _, n := range nodes {
		eps = append(eps, n.apiAddr)
	}
	cl, err := api.New(api.Config{Endpoints: eps, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// Auth returns a context carrying the root token.
func (c *Cluster) Auth(t testing.TB) context.Context {
	return metadata.AppendToOutgoingContext(ctx(t), "authorization", "Bearer "+c.Token)
}

// authed returns a child of parent with timeout d that carries the root
// token, for calls made in loops (Auth registers a cleanup per call).
func (c *Cluster) authed(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithTimeout(parent, d)
	return metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+c.Token), cancel
}

// ctx returns a context with a deadline that ends with the test.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// waitFor polls cond until it returns nil or the deadline passes, then
// fails with the last error.
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", d, what, err)
		}
		<-tick.C
	}
}

// ids lists node ids, sorted.
func ids(nodes []*Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.ID)
	}
	sort.Strings(out)
	return out
}
