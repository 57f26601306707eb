package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
	"coffer/server/snapshotfile"
)

// snapshotsTaken is how many scheduled snapshots n wrote, from its
// /metrics (the count of coffer_snapshot_duration_seconds, which moves
// once the directory is pruned).
func snapshotsTaken(t *testing.T, n *Node) float64 {
	t.Helper()
	return scrapeMetrics(t, n.MetricsURL()).value(t, "coffer_snapshot_duration_seconds_count")
}

// listSnapshots lists n's snapshot directory, failing t on an error.
func listSnapshots(t *testing.T, n *Node) []snapshotfile.Entry {
	t.Helper()
	list, err := snapshotfile.List(n.SnapshotDir())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return list
}

// TestScheduledSnapshots is issue 15's snapshot schedule: with
// -snapshot-interval=2s -snapshot-retain=3 on every node, once the leader
// took at least five, exactly three files remain in its directory, and
// they are the newest of all it wrote; they verify, hold no plaintext
// marker, and the restore drill passes: the newest, restored into a fresh
// cluster unsealed with the original shares, gives back every secret
// written before it.
func TestScheduledSnapshots(t *testing.T) {
	c := NewCluster(t, 3, ClusterOptions{Metrics: true, SnapshotInterval: 2 * time.Second, SnapshotRetain: 3})
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	cl := c.Client(t)
	marker := "sched-snapshot-marker-" + rand.Text()
	secrets := map[string]string{}
	var last uint64
	for i := range 20 {
		path, v := fmt.Sprintf("secret/sched/%d", i), fmt.Sprintf("%s-%d", marker, i)
		w, err := cl.Put(ctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": v}})
		if err != nil {
			t.Fatal(err)
		}
		secrets[path], last = v, w.Index
	}

	// Poll the leader (whichever it is: a loaded machine may elect
	// another) until it took five and retention left its three newest.
	// Every name seen on the way is kept, to check that those are the
	// newest.
	seen := map[string]snapshotfile.Entry{}
	var writer *Node
	var kept []snapshotfile.Entry
	testcluster.WaitFor(t, 60*time.Second, "a leader with five snapshots taken and three kept", func() error {
		leader := c.WaitForLeader(t)
		taken := snapshotsTaken(t, leader)
		list := listSnapshots(t, leader)
		for _, e := range list {
			seen[e.Name] = e
		}
		if taken < 5 || len(list) != 3 {
			return fmt.Errorf("%s took %v snapshots and keeps %d files", leader.ID, taken, len(list))
		}
		writer, kept = leader, list
		return nil
	})
	var mine []snapshotfile.Entry
	for _, e := range seen {
		if e.NodeID == writer.ID {
			mine = append(mine, e)
		}
	}
	slices.SortFunc(mine, func(a, b snapshotfile.Entry) int { return b.Time.Compare(a.Time) })
	for i, e := range kept {
		if e.NameErr != nil || e.Name != mine[i].Name {
			t.Fatalf("kept %d is %s, want the newest seen, %s (seen %d)", i, e.Name, mine[i].Name, len(mine))
		}
		if h, err := snapshotfile.Verify(e); err != nil || h.NodeID != writer.ID {
			t.Fatalf("%s: %v %v", e.Name, h, err)
		}
	}
	for _, n := range c.Nodes() {
		for _, e := range listSnapshots(t, n) {
			b, err := os.ReadFile(e.Path)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(marker)) || bytes.Contains(b, []byte("sched-snapshot-marker-")) {
				t.Fatalf("%s holds the plaintext marker", e.Path)
			}
		}
	}

	// The restore drill: the newest into a fresh cluster.
	newest := kept[0]
	if newest.AppliedIndex < last {
		t.Fatalf("the newest snapshot is at index %d, before the last write (%d)", newest.AppliedIndex, last)
	}
	snap, err := os.ReadFile(newest.Path)
	if err != nil {
		t.Fatal(err)
	}
	// The original cluster is lost.
	c.Shutdown()
	fresh := NewCluster(t, 3)
	fresh.Init(t, fresh.WaitForLeader(t))
	fresh.UnsealAll(t)
	// Another cluster's keys: the MAC does not authenticate, so -force.
	// A loaded machine may move the fresh cluster's leadership: a restore
	// refused as Unavailable (no leader, a sealed one) did nothing and is
	// tried again.
	fcl := fresh.Client(t)
	testcluster.WaitFor(t, 30*time.Second, "the restore of "+newest.Name, func() error {
		err := restoreSnapshot(fcl, snap, true)
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("restoring %s: %v", newest.Name, err)
		}
		return err
	})
	for _, n := range fresh.Running() {
		testcluster.WaitFor(t, 10*time.Second, n.ID+" sealed after the restore", func() error {
			if !fresh.Status(t, n).Seal.GetSealed() {
				return fmt.Errorf("%s is unsealed", n.ID)
			}
			return nil
		})
	}
	for i, n := range fresh.Running() {
		n.Unseal(t, c.Shares, i)
	}
	fresh.Token = c.Token
	fresh.WaitForLeader(t)
	for path, want := range secrets {
		readEverywhere(t, fresh, path, want)
	}
}

// TestScheduledSnapshotsLeaderChange: the leader is killed; the new
// leader goes on with the schedule. With a directory per node it writes
// into its own; with one directory shared by every node (supported, see
// docs/OPERATIONS.md), retention keeps the newest three of all nodes'
// files.
func TestScheduledSnapshotsLeaderChange(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			opts := ClusterOptions{SnapshotInterval: 2 * time.Second, SnapshotRetain: 3}
			if shared {
				opts.SnapshotSharedDir = t.TempDir()
			}
			dirOf := func(n *Node) string {
				if shared {
					return opts.SnapshotSharedDir
				}
				return n.SnapshotDir()
			}
			list := func(n *Node) []snapshotfile.Entry {
				t.Helper()
				l, err := snapshotfile.List(dirOf(n))
				if err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
				return l
			}
			c := NewCluster(t, 3, opts)
			c.Init(t, c.WaitForLeader(t))
			c.UnsealAll(t)
			old := c.WaitForLeader(t)
			testcluster.WaitFor(t, 20*time.Second, "a snapshot by the first leader", func() error {
				for _, e := range list(old) {
					if e.NodeID == old.ID {
						return nil
					}
				}
				return fmt.Errorf("none by %s in %s", old.ID, dirOf(old))
			})
			killed := time.Now()
			c.Kill(old)
			leader := c.WaitForNewLeader(t, old)
			if _, err := c.Client(t).Put(ctx(t), &pb.PutRequest{Path: "secret/after-kill", Data: map[string]string{"v": "x"}}); err != nil {
				t.Fatal(err)
			}
			testcluster.WaitFor(t, 20*time.Second, "a snapshot by the new leader "+leader.ID, func() error {
				for _, e := range list(leader) {
					if e.NodeID != leader.ID || !e.Time.After(killed) {
						continue
					}
					h, err := snapshotfile.Verify(e)
					if err != nil {
						return err
					}
					if h.NodeID != leader.ID {
						return fmt.Errorf("%s: header names %s", e.Name, h.NodeID)
					}
					return nil
				}
				return fmt.Errorf("none after the kill in %s", dirOf(leader))
			})
			if !shared {
				return
			}
			// Three more by the new leader: retention left exactly the
			// three newest of the shared directory, all its.
			testcluster.WaitFor(t, 30*time.Second, "three snapshots by "+leader.ID+" and nothing else", func() error {
				l := list(leader)
				if len(l) != 3 {
					return fmt.Errorf("%d files", len(l))
				}
				for _, e := range l {
					if e.NodeID != leader.ID || !e.Time.After(killed) {
						return fmt.Errorf("%s is kept", e.Name)
					}
					if _, err := snapshotfile.Verify(e); err != nil {
						return err
					}
				}
				return nil
			})
		})
	}
}
