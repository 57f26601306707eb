package agent

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "coffer/api/cofferpb"
	"coffer/replication"
	"coffer/server"
)

// testCluster is a set of real coffer nodes in this test process, on
// loopback, initialized and unsealed (a trimmed copy of api's harness:
// test files do not cross packages).
type testCluster struct {
	t      testing.TB
	mu     sync.Mutex
	nodes  []*testNode
	seeds  []string
	shares [][]byte
	token  string
	// logDone stops logging to t once the test is over.
	logDone *atomic.Bool
}

// testNode is one member of a testCluster; its addresses and data dir
// are kept across restarts.
type testNode struct {
	id                            string
	dir                           string
	apiAddr, raftAddr, gossipAddr string
	net                           *replication.Network
	srv                           *server.Server
	conn                          *grpc.ClientConn
	sys                           pb.SysClient
	running                       bool
}

// newTestCluster starts size nodes (a one-node cluster for size 1,
// bootstrap_expect = size otherwise), initializes the cluster (5 shares,
// threshold 3) and unseals every node. Cleanup is registered with t.
func newTestCluster(t testing.TB, size int) *testCluster {
	t.Helper()
	c := &testCluster{t: t, logDone: new(atomic.Bool)}
	t.Cleanup(func() { c.logDone.Store(true) })
	for i := 1; i <= size; i++ {
		n := &testNode{id: fmt.Sprintf("n%d", i), dir: t.TempDir(), apiAddr: freeAddr(t), raftAddr: freeAddr(t), gossipAddr: freeAddr(t)}
		c.nodes = append(c.nodes, n)
		if size > 1 {
			c.seeds = append(c.seeds, n.gossipAddr)
		}
	}
	t.Cleanup(c.shutdown)
	var wg sync.WaitGroup
	errs := make([]error, size)
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startFresh(i, n, size)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	leader := c.waitLeader(t)
	res, err := leader.sys.Init(tctx(t), &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
	if err != nil {
		t.Fatalf("init through %s: %v", leader.id, err)
	}
	c.shares, c.token = res.Keys, res.RootToken
	for _, n := range c.nodes {
		c.unseal(t, n)
	}
	c.waitLeader(t)
	return c
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

// addrs returns the API addresses of every node.
func (c *testCluster) addrs() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.apiAddr)
	}
	return out
}

// config builds a node's configuration with fast test timings.
func (c *testCluster) config(n *testNode, expect int) server.Config {
	cfg := server.DefaultConfig()
	cfg.NodeID = n.id
	cfg.DataDir = n.dir
	cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = n.apiAddr, n.raftAddr, n.gossipAddr
	if expect > 1 {
		cfg.BootstrapExpect = expect
	}
	c.mu.Lock()
	for _, s := range c.seeds {
		if s != n.gossipAddr {
			cfg.Join = append(cfg.Join, s)
		}
	}
	c.mu.Unlock()
	cfg.DeadServerTimeout = time.Minute // nobody is removed while down
	cfg.Raft = replication.Config{
		HeartbeatTimeout:   150 * time.Millisecond,
		ElectionTimeout:    150 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		PromoteAfter:       300 * time.Millisecond,
		ReconcileInterval:  200 * time.Millisecond,
	}
	cfg.Gossip = replication.GossipConfig{
		ProbeInterval:    100 * time.Millisecond,
		ProbeTimeout:     50 * time.Millisecond,
		GossipInterval:   50 * time.Millisecond,
		SuspicionMult:    2,
		PushPullInterval: time.Second,
	}
	cfg.Network = n.net
	cfg.Raft.Network = n.net
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.Logger = testLogger(c.t, n.id, c.logDone, hclog.Warn)
	return cfg
}

// testLogger routes logs at level and above to t until done is set.
func testLogger(t testing.TB, name string, done *atomic.Bool, level hclog.Level) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: logWriter{t: t, done: done}})
}

// logWriter routes log lines to the test log until the test ends.
type logWriter struct {
	t    testing.TB
	done *atomic.Bool
}

func (w logWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// startFresh starts a new node; when a port found free was taken since,
// it picks new addresses and tries again.
func (c *testCluster) startFresh(i int, n *testNode, expect int) error {
	for attempt := 1; ; attempt++ {
		err := c.start(n, expect)
		if err == nil || attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		c.mu.Lock()
		n.apiAddr, n.raftAddr, n.gossipAddr = freeAddr(c.t), freeAddr(c.t), freeAddr(c.t)
		if len(c.seeds) > 0 {
			c.seeds[i] = n.gossipAddr
		}
		c.mu.Unlock()
	}
}

// start runs a node on its addresses and data dir.
func (c *testCluster) start(n *testNode, expect int) error {
	n.net = &replication.Network{}
	srv, err := server.New(c.config(n, expect))
	if err != nil {
		return fmt.Errorf("start %s: %w", n.id, err)
	}
	if err := srv.Start(); err != nil {
		return err
	}
	conn, err := grpc.NewClient(srv.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	c.mu.Lock()
	n.srv, n.conn, n.sys, n.running = srv, conn, pb.NewSysClient(conn), true
	c.mu.Unlock()
	return nil
}

// running returns the nodes that are up.
func (c *testCluster) running() []*testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*testNode
	for _, n := range c.nodes {
		if n.running {
			out = append(out, n)
		}
	}
	return out
}

// shutdown stops every running node gracefully.
func (c *testCluster) shutdown() {
	var wg sync.WaitGroup
	for _, n := range c.running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			n.conn.Close()
			if err := n.srv.Shutdown(ctx); err != nil {
				c.t.Logf("shutdown %s: %v", n.id, err)
			}
			c.mu.Lock()
			n.running = false
			c.mu.Unlock()
		}()
	}
	wg.Wait()
}

// killAll stops every node without grace, as a crash would.
func (c *testCluster) killAll() {
	var wg sync.WaitGroup
	for _, n := range c.running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.srv.Kill()
			n.conn.Close()
			c.mu.Lock()
			n.running = false
			c.mu.Unlock()
		}()
	}
	wg.Wait()
}

// restartAll starts every node again on its addresses and data dir and
// unseals it.
func (c *testCluster) restartAll(t testing.TB) {
	t.Helper()
	for _, n := range c.nodes {
		if err := c.start(n, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		c.unseal(t, n)
	}
	c.waitLeader(t)
}

// unseal gives n a threshold of shares.
func (c *testCluster) unseal(t testing.TB, n *testNode) {
	t.Helper()
	for i := range 3 {
		st, err := n.sys.Unseal(tctx(t), &pb.UnsealRequest{Key: c.shares[i]})
		if err != nil {
			t.Fatalf("unseal %s: %v", n.id, err)
		}
		if i == 2 && st.Sealed {
			t.Fatalf("%s still sealed after 3 shares", n.id)
		}
	}
}

// node returns the node with the given id.
func (c *testCluster) node(id string) *testNode {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

// leader returns the node every running node names as leader, or nil.
func (c *testCluster) leader() *testNode {
	var leader *testNode
	for _, n := range c.running() {
		st, err := n.sys.Status(context.Background(), &pb.StatusRequest{})
		if err != nil || st.LeaderId == "" {
			return nil
		}
		l := c.node(st.LeaderId)
		if l == nil || (leader != nil && leader != l) || !l.running {
			return nil
		}
		leader = l
	}
	return leader
}

// waitLeader waits until the running nodes agree on a leader that is
// ready to serve.
func (c *testCluster) waitLeader(t testing.TB) *testNode {
	t.Helper()
	var leader *testNode
	waitFor(t, 20*time.Second, "a leader all nodes agree on", func() error {
		leader = c.leader()
		if leader == nil {
			return fmt.Errorf("no agreed leader")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		return leader.srv.WaitLeaderReady(ctx)
	})
	return leader
}

// tctx returns a context that ends with the test (or after 20s).
func tctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it returns nil or d passes, then fails with the
// last error.
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", d, what, err)
		}
		<-tick.C
	}
}
