package api

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/internal/testcluster"
)

// testCluster is a set of real coffer nodes in this test process, on
// loopback, initialized and unsealed (internal/testcluster), with the
// client helpers of these tests.
type testCluster struct{ *testcluster.Cluster }

// newTestCluster starts size nodes with bootstrap_expect = size and the
// fast test timings, initializes the cluster (5 shares, threshold 3) and
// unseals every node. Cleanup is registered with t.
func newTestCluster(t testing.TB, size int) *testCluster {
	t.Helper()
	return &testCluster{testcluster.StartUnsealed(t, size, testcluster.Options{
		LogLevel:      hclog.Info,
		LeaderTimeout: 15 * time.Second,
	})}
}

// client returns a Client over the given nodes (every node when none),
// with the root token and cfg's other settings. It is closed with the test.
func (c *testCluster) client(t testing.TB, cfg Config, nodes ...*testcluster.Node) *Client {
	t.Helper()
	if len(nodes) == 0 {
		nodes = c.Nodes()
	}
	for _, n := range nodes {
		cfg.Endpoints = append(cfg.Endpoints, n.APIAddr())
	}
	cfg.Token = c.Token
	cl, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// tctx returns a context that ends with the test (or after 20s).
func tctx(t testing.TB) context.Context { return testcluster.Context(t, 20*time.Second) }

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// countingDialer dials TCP and counts the dials per address.
type countingDialer struct {
	mu    sync.Mutex
	dials map[string]int
}

func (d *countingDialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	if d.dials == nil {
		d.dials = make(map[string]int)
	}
	d.dials[addr]++
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr)
}

func (d *countingDialer) count(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[addr]
}
