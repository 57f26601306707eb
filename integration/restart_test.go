package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
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
	testcluster.WaitFor(t, 10*time.Second, "the restarted follower to catch up while sealed", func() error {
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

// TestFollowerRebuildsStateAfterMachineCrash: a follower whose machine went
// down with unsynced state commits (a marker from another boot) sets its
// fsm.db aside on restart and rebuilds it from its own Raft snapshot and
// log and the leader: after unseal it serves every write, old and new.
func TestFollowerRebuildsStateAfterMachineCrash(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err != nil {
		t.Skip("no boot id on this system: every state commit is fsynced, nothing to rebuild")
	}
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)
	follower := c.Followers(leader)[0]
	cl := c.Client(t, leader)
	write := func(path, v string) *pb.PutResponse {
		t.Helper()
		r, err := cl.Put(ctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": v}})
		if err != nil {
			t.Fatalf("write %s: %v", path, err)
		}
		return r
	}
	for i := range 20 {
		write(fmt.Sprintf("secret/rebuild/a%d", i), strconv.Itoa(i))
	}
	c.WaitForApplied(t, write("secret/rebuild/a0", "again").Index)
	c.Stop(t, follower)

	marker := filepath.Join(follower.Dir, "fsm.db.unsynced")
	if err := os.WriteFile(marker, []byte("a-boot-before-the-crash\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Writes it misses while down.
	for i := range 10 {
		write(fmt.Sprintf("secret/rebuild/b%d", i), strconv.Itoa(i))
	}
	last := write("secret/rebuild/b0", "again")

	c.Restart(t, follower)
	if _, err := os.Stat(filepath.Join(follower.Dir, "fsm.db.discarded")); err != nil {
		t.Fatalf("the follower did not set its possibly torn state aside: %v", err)
	}
	// Whether or not it has replayed the init yet, it knows the cluster is
	// initialized (from the leader if need be) and that it is sealed.
	testcluster.WaitFor(t, 5*time.Second, "the rebuilding follower to know the leader's API address", func() error {
		if st := c.Status(t, follower); st.LeaderAddress == "" {
			return fmt.Errorf("no leader address known")
		}
		return nil
	})
	if st := c.Status(t, follower); !st.Seal.GetInitialized() || !st.Seal.GetSealed() || st.Seal.GetThreshold() != 3 {
		t.Fatalf("rebuilding follower's seal status: %+v, want initialized, sealed, threshold 3", st.Seal)
	}
	c.Unseal(t, follower, 0)
	read := func(path string) string {
		t.Helper()
		g, err := follower.KV.Get(c.Auth(t), &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MinIndex: last.Index}})
		if err != nil {
			t.Fatalf("stale read of %s on the rebuilt follower: %v", path, err)
		}
		return g.Data["v"]
	}
	testcluster.WaitFor(t, 10*time.Second, "the rebuilt follower to reach the last write", func() error {
		if st := c.Status(t, follower); st.AppliedIndex < last.Index {
			return fmt.Errorf("applied %d, want %d", st.AppliedIndex, last.Index)
		}
		return nil
	})
	if got := read("secret/rebuild/a0"); got != "again" {
		t.Fatalf("a0 = %q after the rebuild, want the second write", got)
	}
	for i := 1; i < 20; i += 6 {
		if got := read(fmt.Sprintf("secret/rebuild/a%d", i)); got != strconv.Itoa(i) {
			t.Fatalf("a%d = %q after the rebuild", i, got)
		}
	}
	if got := read("secret/rebuild/b0"); got != "again" {
		t.Fatalf("b0 = %q after the rebuild", got)
	}
}
