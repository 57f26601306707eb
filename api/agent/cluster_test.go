package agent

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/internal/testcluster"
)

// newTestCluster starts size real coffer nodes in this test process
// (internal/testcluster: a one-node cluster without gossip for size 1,
// bootstrap_expect = size otherwise), initializes the cluster (5 shares,
// threshold 3) and unseals every node. Cleanup is registered with t.
func newTestCluster(t testing.TB, size int) *testcluster.Cluster {
	t.Helper()
	return testcluster.StartUnsealed(t, size, testcluster.Options{
		LogLevel:      hclog.Warn,
		Standalone:    size == 1,
		LeaderTimeout: 20 * time.Second,
	})
}

// tctx returns a context that ends with the test (or after 20s).
func tctx(t testing.TB) context.Context { return testcluster.Context(t, 20*time.Second) }
