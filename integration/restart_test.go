package integration

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "coffer/api/cofferpb"
)

// TestRestartCatchesUpSealed: a follower stopped while the cluster takes
// more writes comes back sealed, catches up while still sealed (its applied
// index reaches the leader's: the log is ciphertext, no keys needed), and
// after unseal serves the newest data.
func TestRestartCatchesUpSealed(t *testing.T) {
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)
	follower := c.Followers(leader)[0]
	cl := c.Client(t, leader)

	first, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/restart/k", Data: map[string]string{"v": "0"}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, first.Index)
	c.Stop(t, follower)

	var last *pb.PutResponse
	for i := 1; i <= 40; i++ {
		last, err = cl.Put(ctx(t), &pb.PutRequest{Path: "secret/restart/k", Data: map[string]string{"v": strconv.Itoa(i)}})
		if err != nil {
			t.Fatalf("write %d with a follower down: %v", i, err)
		}
	}
	target := c.Status(t, leader).AppliedIndex
	if target < last.Index {
		t.Fatalf("leader applied %d, below its own write's index %d", target, last.Index)
	}

	c.Restart(t, follower)
	waitFor(t, 10*time.Second, "the restarted follower to catch up while sealed", func() error {
		st := c.Status(t, follower)
		if !st.Seal.GetSealed() {
			return fmt.Errorf("%s is not sealed", follower.ID)
		}
		if st.AppliedIndex < target {
			return fmt.Errorf("%s applied %d, leader %d", follower.ID, st.AppliedIndex, target)
		}
		return nil
	})
	st := c.Status(t, follower)
	// (The leader may have changed meanwhile on a loaded machine; a leader
	// must be known.)
	if !st.Seal.GetSealed() || st.LeaderId == "" {
		t.Fatalf("restarted follower status: %+v", st)
	}
	// Sealed, it refuses reads with a retryable error.
	_, err = follower.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/restart/k", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
	wantCode(t, "stale read on a sealed node", err, codes.Unavailable)

	c.Unseal(t, follower, 1)
	g, err := follower.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/restart/k", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MinIndex: last.Index}})
	if err != nil {
		t.Fatalf("stale read on the unsealed follower: %v", err)
	}
	if g.Data["v"] != "40" || g.Metadata.Version != last.Version || g.ReadMeta.NodeId != follower.ID || !g.ReadMeta.Stale {
		t.Fatalf("stale read on %s after restart: data %v version %d meta %+v, want v=40 version %d", follower.ID, g.Data, g.Metadata.Version, g.ReadMeta, last.Version)
	}
}
