package testcluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// callTimeout bounds one API call of the harness.
const callTimeout = 10 * time.Second

// Init initializes the cluster through node n (5 shares, threshold 3) and
// keeps the shares (the recovery shares under the static seal) and the
// root token in c. While there is no leader for
// a moment (Unavailable) it tries again for up to 10s; a retry that finds
// the cluster initialized fails the test, since the first answer's shares
// are lost.
func (c *Cluster) Init(t testing.TB, n *Node) {
	t.Helper()
	var res *pb.InitResponse
	retried := false
	WaitFor(t, 10*time.Second, "init through "+n.ID, func() error {
		var err error
		res, err = n.Sys.Init(Context(t, callTimeout), &pb.InitRequest{SecretShares: initShares, SecretThreshold: initThreshold})
		switch {
		case err == nil:
			return nil
		case status.Code(err) == codes.Unavailable:
			// No leader for a moment (an election): init did not commit,
			// or it did and the retry says so.
			retried = true
			return err
		case retried && status.Code(err) == codes.FailedPrecondition:
			t.Fatalf("init through %s committed although it answered Unavailable (its shares are lost): %v", n.ID, err)
		}
		t.Fatalf("init through %s: %v", n.ID, err)
		return nil
	})
	c.Shares, c.Token = res.Keys, res.RootToken
	if len(res.RecoveryKeys) > 0 {
		c.Shares = res.RecoveryKeys // the static seal's recovery shares
	}
}

// Unseal unseals n with three of c.Shares, starting at offset.
func (c *Cluster) Unseal(t testing.TB, n *Node, offset int) {
	t.Helper()
	n.Unseal(t, c.Shares, offset)
}

// UnsealAll unseals every running node, the i-th with the shares from
// offset i.
func (c *Cluster) UnsealAll(t testing.TB) {
	t.Helper()
	for i, n := range c.Running() {
		c.Unseal(t, n, i)
	}
}

// Unseal unseals n with three of shares (the threshold) starting at
// offset: shares of its cluster, or of another one after a forced
// snapshot restore. It fails t unless n is unsealed after the third.
func (n *Node) Unseal(t testing.TB, shares [][]byte, offset int) {
	t.Helper()
	for i := range initThreshold {
		st, err := n.Sys.Unseal(Context(t, callTimeout), &pb.UnsealRequest{Key: shares[(offset+i)%len(shares)]})
		if err != nil {
			t.Fatalf("unseal %s: %v", n.ID, err)
		}
		if i == initThreshold-1 && st.Sealed {
			t.Fatalf("%s still sealed after %d shares", n.ID, initThreshold)
		}
	}
}

// Status asks n for its status, failing t on error.
func (c *Cluster) Status(t testing.TB, n *Node) *pb.StatusResponse {
	t.Helper()
	st, err := n.Sys.Status(Context(t, callTimeout), &pb.StatusRequest{})
	if err != nil {
		t.Fatalf("status of %s: %v", n.ID, err)
	}
	return st
}

// Leader returns the node that every running node not cut off by its
// Network names as leader, or nil when they do not agree, one names none,
// or the one named is not running.
func (c *Cluster) Leader() *Node {
	var leader *Node
	for _, n := range c.Running() {
		if n.Net.Isolated() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := n.Sys.Status(ctx, &pb.StatusRequest{})
		cancel()
		if err != nil || st.LeaderId == "" {
			return nil
		}
		l := c.Node(st.LeaderId)
		if l == nil || (leader != nil && leader != l) || !c.IsRunning(l) {
			return nil
		}
		leader = l
	}
	return leader
}

// WaitForLeader waits (Options.LeaderTimeout) until the connected running
// nodes agree on a leader and it is ready to serve (its barrier after the
// election is done), and returns it.
func (c *Cluster) WaitForLeader(t testing.TB) *Node {
	t.Helper()
	var leader *Node
	WaitFor(t, c.opts.LeaderTimeout, "a leader all nodes agree on", func() error {
		leader = c.Leader()
		if leader == nil {
			return fmt.Errorf("no agreed leader")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		return leader.Srv.WaitLeaderReady(ctx)
	})
	return leader
}

// WaitForNewLeader waits (Options.LeaderTimeout) until the nodes agree on
// a leader other than old, and returns it.
func (c *Cluster) WaitForNewLeader(t testing.TB, old *Node) *Node {
	t.Helper()
	var leader *Node
	WaitFor(t, c.opts.LeaderTimeout, "a new leader", func() error {
		leader = c.Leader()
		if leader == nil || leader == old {
			return fmt.Errorf("leader is still %v", leader)
		}
		return nil
	})
	return leader
}

// WaitForApplied waits until every running node has applied index, at
// most 10s for each.
func (c *Cluster) WaitForApplied(t testing.TB, index uint64) {
	t.Helper()
	for _, n := range c.Running() {
		WaitFor(t, 10*time.Second, n.ID+" applied index", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			st, err := n.Sys.Status(ctx, &pb.StatusRequest{})
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

// Auth returns a context that carries c.Token and ends after 10s or with
// the test.
func (c *Cluster) Auth(t testing.TB) context.Context {
	return withToken(Context(t, callTimeout), c.Token)
}

// Authed returns a child of parent with timeout d that carries c.Token,
// for calls made in loops or other goroutines (Auth registers a cleanup
// per call).
func (c *Cluster) Authed(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, d)
	return withToken(ctx, c.Token), cancel
}

// withToken returns ctx with token as the bearer token of its calls.
func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}
