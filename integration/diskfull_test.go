package integration

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestDiskFull fills the disk of one node of a three-node cluster (its
// data dir on a small tmpfs, filled by the cluster's own writes), once a
// follower and once the leader. That node stops itself with an error that
// says what failed and what to do; the others keep taking writes; every
// write the cluster acknowledged is there; and once space is freed, the
// node starts from the files the full disk left, catches up and serves
// every acknowledged write.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a size-limited tmpfs needs root")
	}
	for _, role := range []string{"follower", "leader"} {
		t.Run(role, func(t *testing.T) { testDiskFull(t, role) })
	}
}

func testDiskFull(t *testing.T, role string) {
	c, leader, _ := unsealedCluster(t, ClusterOptions{})
	victim := leader
	if role == "follower" {
		victim = c.Followers(leader)[0]
	}
	// Move the victim's data dir onto a tmpfs with a few MiB to spare.
	c.Stop(t, victim)
	used := dirBytes(t, victim.Dir)
	mnt := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, fmt.Sprintf("size=%d", used+6<<20)); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v)", err)
	}
	defer syscall.Unmount(mnt, syscall.MNT_DETACH)
	if out, err := exec.Command("cp", "-a", "--sparse=always", victim.Dir+"/.", mnt).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", victim.Dir, err, out)
	}
	victim.Dir = mnt
	c.Restart(t, victim)
	defer c.Stop(t, victim) // before the unmount
	c.Unseal(t, victim, 0)
	waitUnsealed(t, c, victim)
	if role == "leader" {
		transferTo(t, c, victim)
	}

	// Writes of 192 KiB values (base64 of 144 KiB) through every node until the victim stops
	// (and 20 more): each acknowledged one is remembered.
	cl := c.Client(t)
	acked := map[string]string{}
	value := func() string {
		b := make([]byte, 144<<10)
		rand.Read(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	stoppedAt := -1
	for i := 0; stoppedAt < 0 || i < stoppedAt+20; i++ {
		if i > 400 {
			t.Fatalf("%s took %d writes of 192 KiB without stopping, with 6 MiB free at the start", victim.ID, i)
		}
		path, v := fmt.Sprintf("secret/full/%d", i), value()
		wctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		_, err := cl.Put(wctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": v}})
		cancel()
		if err == nil {
			acked[path] = v
		} else if stoppedAt >= 0 && i > stoppedAt+2 {
			t.Fatalf("write %d, %d after %s stopped: %v", i, i-stoppedAt, victim.ID, err)
		}
		if stoppedAt < 0 {
			select {
			case <-victim.Srv.Failed():
				stoppedAt = i
				t.Logf("%s (%s) stopped itself after %d writes: %v", victim.ID, role, i, victim.Srv.Failure())
			default:
			}
		}
	}
	msg := victim.Srv.Failure().Error()
	for _, want := range []string{"could not be written", "free space", victim.ID} {
		if !strings.Contains(msg, want) {
			t.Errorf("the failure does not say %q: %s", want, msg)
		}
	}
	c.Stop(t, victim) // it stopped itself; this waits for it
	if len(acked) < 20 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	checkAcked(t, c, cl, acked, nil)

	// Free space, start it: it opens the files the full disk left and
	// catches up.
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=512m"); err != nil {
		t.Fatal(err)
	}
	c.Restart(t, victim)
	c.Unseal(t, victim, 0)
	waitUnsealed(t, c, victim)
	checkAcked(t, c, cl, acked, victim)
}

// transferTo moves leadership to n (step-downs until it leads).
func transferTo(t *testing.T, c *Cluster, n *Node) {
	t.Helper()
	testcluster.WaitFor(t, 20*time.Second, n.ID+" leads", func() error {
		l := c.WaitForLeader(t)
		if l == n {
			return nil
		}
		l.Op.StepDown(c.Auth(t), &pb.StepDownRequest{})
		return fmt.Errorf("%s leads", l.ID)
	})
}

// checkAcked reads every acknowledged write back through the client
// (linearizable reads), and, when on is set, on that node (default reads,
// once it has caught up).
func checkAcked(t *testing.T, c *Cluster, cl *api.Client, acked map[string]string, on *Node) {
	t.Helper()
	for path, v := range acked {
		var g *pb.GetResponse
		var err error
		if on == nil {
			g, err = cl.Get(ctx(t), &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}})
		} else {
			g, err = on.KV.Get(c.Auth(t), &pb.GetRequest{Path: path})
		}
		if err != nil || g.Data["v"] != v {
			where := "the cluster"
			if on != nil {
				where = on.ID
			}
			t.Fatalf("%s on %s: an acknowledged write is lost (err %v)", path, where, err)
		}
	}
}

// dirBytes is the disk space the files under dir take.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !fi.IsDir() {
			n += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
