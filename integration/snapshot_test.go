package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// snapshotHeader reads the JSON header of a coffer snapshot file
// (server/snapshot.go: magic, 4-byte length, header).
func snapshotHeader(t testing.TB, snap []byte) map[string]any {
	t.Helper()
	const magic = "COFFER-SNAPSHOT\n"
	if !bytes.HasPrefix(snap, []byte(magic)) || len(snap) < len(magic)+4 {
		t.Fatalf("not a coffer snapshot (%d bytes)", len(snap))
	}
	n := binary.BigEndian.Uint32(snap[len(magic):])
	var h map[string]any
	if err := json.Unmarshal(snap[len(magic)+4:len(magic)+4+int(n)], &h); err != nil {
		t.Fatalf("snapshot header: %v", err)
	}
	return h
}

// saveSnapshot saves a snapshot through node n only.
func saveSnapshot(t testing.TB, c *Cluster, n *Node) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := c.Client(t, n).SnapshotSave(ctx(t), &buf); err != nil {
		t.Fatalf("snapshot save through %s: %v", n.ID, err)
	}
	return buf.Bytes()
}

func restoreSnapshot(cl *api.Client, snap []byte, force bool) error {
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return cl.SnapshotRestore(rctx, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(snap)), nil }, force)
}

// readEverywhere waits until a stale read of path on every running node
// gives want ("" means NotFound).
func readEverywhere(t testing.TB, c *Cluster, path, want string) {
	t.Helper()
	for _, n := range c.Running() {
		testcluster.WaitFor(t, 10*time.Second, fmt.Sprintf("%s on %s to read %q", path, n.ID, want), func() error {
			rctx, cancel := c.Authed(context.Background(), 2*time.Second)
			defer cancel()
			g, err := n.KV.Get(rctx, &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
			switch {
			case want == "" && status.Code(err) == codes.NotFound:
				return nil
			case err != nil:
				return err
			case g.Data["v"] != want:
				return fmt.Errorf("read %q", g.Data["v"])
			}
			return nil
		})
	}
}

// TestSnapshot: a snapshot saved through a follower holds no plaintext;
// restored to the leader after more writes, it brings every node back to
// its content, and the cluster goes on taking writes. A snapshot of another
// cluster is refused without force.
func TestSnapshot(t *testing.T) {
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)
	cl := c.Client(t)
	marker := "plaintext-marker-" + rand.Text()
	w, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/snap/m", Data: map[string]string{"v": marker}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, w.Index)

	follower := c.Followers(leader)[0]
	snap := saveSnapshot(t, c, follower)
	h := snapshotHeader(t, snap)
	if h["node_id"] != follower.ID || uint64(h["applied_index"].(float64)) < w.Index {
		t.Fatalf("snapshot header %v: want node %s, applied index ≥ %d", h, follower.ID, w.Index)
	}
	if bytes.Contains(snap, []byte(marker)) || bytes.Contains(snap, []byte("plaintext-marker-")) {
		t.Fatalf("the snapshot (%d bytes) holds the plaintext marker", len(snap))
	}

	// More writes after the snapshot, then restore it to the leader.
	if _, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/snap/m", Data: map[string]string{"v": "after"}}); err != nil {
		t.Fatal(err)
	}
	after, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/snap/new", Data: map[string]string{"v": "new"}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, after.Index)
	if err := restoreSnapshot(c.Client(t, leader), snap, false); err != nil {
		t.Fatalf("restore to the leader: %v", err)
	}
	readEverywhere(t, c, "secret/snap/m", marker)
	readEverywhere(t, c, "secret/snap/new", "")
	// Applied indexes only move forward: a read-your-writes token (the
	// index of a write acknowledged before the restore) is still satisfied
	// on every node once the restore, which came later, is in.
	for _, n := range c.Running() {
		rctx, cancel := c.Authed(context.Background(), 2*time.Second)
		g, err := n.KV.Get(rctx, &pb.GetRequest{Path: "secret/snap/m", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MinIndex: after.Index}})
		cancel()
		if err != nil {
			t.Errorf("stale read with min_index %d (a write acknowledged before the restore) on %s after the restore: %v (status applied index %d)", after.Index, n.ID, err, c.Status(t, n).AppliedIndex)
		} else if g.Data["v"] != marker {
			t.Errorf("read on %s after the restore: %v", n.ID, g.Data)
		}
	}
	md, err := cl.ReadMetadata(ctx(t), &pb.ReadMetadataRequest{Path: "secret/snap/m"})
	if err != nil || md.CurrentVersion != 1 || len(md.Versions) != 1 {
		t.Fatalf("metadata after restore: %v %v", md, err)
	}
	// The restored cluster takes writes, on every node.
	w2, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/snap/m", Data: map[string]string{"v": "post-restore"}})
	if err != nil {
		t.Fatalf("write after restore: %v", err)
	}
	if w2.Version != 2 {
		t.Fatalf("write after restore made version %d, want 2", w2.Version)
	}
	readEverywhere(t, c, "secret/snap/m", "post-restore")

	// A snapshot of another cluster is refused without force.
	other := NewCluster(t, 1)
	ol := other.WaitForLeader(t)
	other.Init(t, ol)
	other.UnsealAll(t)
	if _, err := ol.KV.Put(other.Auth(t), &pb.PutRequest{Path: "secret/snap/m", Data: map[string]string{"v": "other"}}); err != nil {
		t.Fatal(err)
	}
	foreign := saveSnapshot(t, other, ol)
	err = restoreSnapshot(c.Client(t), foreign, false)
	wantCode(t, "restore of another cluster's snapshot without force", err, codes.FailedPrecondition)
	readEverywhere(t, c, "secret/snap/m", "post-restore")
}

// TestSnapshotForcedForeignRestore: a snapshot of another cluster restored
// with force replaces the state; server/snapshot.go documents that a node
// whose keys cannot open the restored keyring seals itself. So after the
// restore no node may serve the restored data with this cluster's keys:
// every node is sealed, and unseals with the OTHER cluster's shares, after
// which the other cluster's token reads the other cluster's data.
func TestSnapshotForcedForeignRestore(t *testing.T) {
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)
	if _, err := c.Client(t).Put(ctx(t), &pb.PutRequest{Path: "secret/mine", Data: map[string]string{"v": "mine"}}); err != nil {
		t.Fatal(err)
	}

	other := NewCluster(t, 1)
	ol := other.WaitForLeader(t)
	other.Init(t, ol)
	other.UnsealAll(t)
	ow, err := ol.KV.Put(other.Auth(t), &pb.PutRequest{Path: "secret/theirs", Data: map[string]string{"v": "theirs"}})
	if err != nil {
		t.Fatal(err)
	}
	foreign := saveSnapshot(t, other, ol)

	if err := restoreSnapshot(c.Client(t, leader), foreign, true); err != nil {
		t.Fatalf("forced restore: %v", err)
	}
	for _, n := range c.Running() {
		testcluster.WaitFor(t, 5*time.Second, n.ID+" sealed after the forced restore", func() error {
			st := c.Status(t, n)
			if !st.Seal.GetSealed() {
				return fmt.Errorf("%s is unsealed (applied %d, raft %s)", n.ID, st.AppliedIndex, st.RaftState)
			}
			return nil
		})
	}
	// Every node unseals with the other cluster's shares and serves its
	// data to its token.
	for i, n := range c.Running() {
		n.Unseal(t, other.Shares, i)
	}
	c.WaitForLeader(t)
	for _, n := range c.Running() {
		g, err := n.KV.Get(other.Auth(t), &pb.GetRequest{Path: "secret/theirs", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
		if err != nil || g.Data["v"] != "theirs" {
			t.Fatalf("%s after the forced restore: %v %v", n.ID, g, err)
		}
	}
	// The restored cluster takes writes under the restored keys.
	c.Token = other.Token
	w, err := c.Client(t).Put(ctx(t), &pb.PutRequest{Path: "secret/theirs", Data: map[string]string{"v": "after"}})
	if err != nil {
		t.Fatalf("write after the forced restore: %v", err)
	}
	if w.Version != 2 || w.Index <= ow.Index {
		t.Fatalf("write after the forced restore: version %d index %d", w.Version, w.Index)
	}
	readEverywhere(t, c, "secret/theirs", "after")
}

// TestSnapshotRestoreIntoYoungerCluster is disaster recovery: a cluster
// with a long history is lost; a new cluster (init'ed afresh, so its log is
// short) restores the old cluster's snapshot with force, unseals with the
// old shares and must take writes at once. The restored state records the
// old cluster's applied index, far above the new cluster's Raft index: the
// state machine must not skip the new cluster's entries below it.
func TestSnapshotRestoreIntoYoungerCluster(t *testing.T) {
	old := NewCluster(t, 1)
	ol := old.WaitForLeader(t)
	old.Init(t, ol)
	old.UnsealAll(t)
	ocl := old.Client(t)
	for i := range 40 {
		if _, err := ocl.Put(ctx(t), &pb.PutRequest{Path: fmt.Sprintf("secret/old/%d", i), Data: map[string]string{"v": "old"}}); err != nil {
			t.Fatal(err)
		}
	}
	snap := saveSnapshot(t, old, ol)
	oldIndex := uint64(snapshotHeader(t, snap)["applied_index"].(float64))

	c := NewCluster(t, 1)
	n := c.WaitForLeader(t)
	c.Init(t, n)
	c.UnsealAll(t)
	if err := restoreSnapshot(c.Client(t), snap, true); err != nil {
		t.Fatalf("forced restore: %v", err)
	}
	testcluster.WaitFor(t, 5*time.Second, "the node sealed after the forced restore", func() error {
		if !c.Status(t, n).Seal.GetSealed() {
			return fmt.Errorf("unsealed")
		}
		return nil
	})
	n.Unseal(t, old.Shares, 0)
	st := c.Status(t, n)
	t.Logf("restored a snapshot at applied index %d into a cluster at raft commit index %d", oldIndex, st.CommitIndex)

	// The old token is the restored cluster's token; writes go on at once.
	c.Token = old.Token
	c.WaitForLeader(t)
	cl := c.Client(t)
	for i := range 3 {
		w, err := cl.Put(ctx(t), &pb.PutRequest{Path: fmt.Sprintf("secret/new/%d", i), Data: map[string]string{"v": "new"}})
		if err != nil {
			t.Fatalf("write %d after restoring an older cluster's snapshot (restored applied index %d, raft commit index %d): %v", i, oldIndex, st.CommitIndex, err)
		}
		g, err := cl.Get(ctx(t), &pb.GetRequest{Path: fmt.Sprintf("secret/new/%d", i), Read: &pb.ReadOptions{MinIndex: w.Index}})
		if err != nil || g.Data["v"] != "new" {
			t.Fatalf("read back write %d: %v %v", i, g, err)
		}
	}
	if g, err := cl.Get(ctx(t), &pb.GetRequest{Path: "secret/old/39"}); err != nil || g.Data["v"] != "old" {
		t.Fatalf("restored data: %v %v", g, err)
	}
}

// craftHeader returns snap with its JSON header replaced by edit's result.
func craftHeader(t testing.TB, snap []byte, edit func(h map[string]any)) []byte {
	t.Helper()
	const magic = "COFFER-SNAPSHOT\n"
	n := binary.BigEndian.Uint32(snap[len(magic):])
	h := snapshotHeader(t, snap)
	edit(h)
	hdr, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	out.WriteString(magic)
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(hdr)))
	out.Write(l[:])
	out.Write(hdr)
	out.Write(snap[len(magic)+4+int(n):])
	return out.Bytes()
}

// TestCraftedSnapshotsAreRefused: truncated, corrupt, edited and foreign
// snapshots (a foreign one even with this cluster's fingerprint pasted
// into its header) are refused with a clear error before Raft sees them;
// the leader stays, the cluster serves, nothing was installed, and the
// leader starts again (no bad snapshot was stored).
func TestCraftedSnapshotsAreRefused(t *testing.T) {
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)
	cl := c.Client(t)
	if _, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/kept", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	snap := saveSnapshot(t, c, leader)
	fingerprint := snapshotHeader(t, snap)["seal_fingerprint"]

	other := NewCluster(t, 1)
	ol := other.WaitForLeader(t)
	other.Init(t, ol)
	other.UnsealAll(t)
	foreign := saveSnapshot(t, other, ol)

	const magic = "COFFER-SNAPSHOT\n"
	bodyAt := len(magic) + 4 + int(binary.BigEndian.Uint32(snap[len(magic):]))
	corrupt := bytes.Clone(snap)
	for i := bodyAt + 8192; i < bodyAt+16384 && i < len(corrupt); i++ {
		corrupt[i] = 0xff
	}
	// Every page of the state but its meta pages gets an invalid type.
	pageTypes := bytes.Clone(snap[:len(snap)-32])
	for i := bodyAt + 2*4096; i+4096 <= len(pageTypes); i += 4096 {
		binary.LittleEndian.PutUint16(pageTypes[i+8:], 0xdead)
	}
	pageTypes = append(pageTypes, make([]byte, 32)...)
	crafted := map[string][]byte{
		"damaged page types":             pageTypes,
		"truncated":                      snap[:bodyAt+(len(snap)-bodyAt)/2],
		"header only":                    snap[:bodyAt],
		"corrupt pages":                  corrupt,
		"absurd index in the header":     craftHeader(t, snap, func(h map[string]any) { h["applied_index"] = uint64(1<<64 - 1) }),
		"foreign, fingerprint pasted in": craftHeader(t, foreign, func(h map[string]any) { h["seal_fingerprint"] = fingerprint }),
		"not a snapshot":                 []byte("hello"),
	}
	before := c.Status(t, leader)
	for name, data := range crafted {
		err := restoreSnapshot(c.Client(t, leader), data, false)
		if err == nil {
			t.Fatalf("%s: restored", name)
		}
		if !api.IsInvalidArgument(err) && api.Reason(err) != pb.ErrorReason_FOREIGN_SNAPSHOT {
			t.Errorf("%s: %v (reason %s), want a refusal of the file", name, err, api.Reason(err))
		}
		t.Logf("%s: %v", name, err)
	}
	// The truncated one and the damaged pages are refused even with
	// -force (fsm.InspectSnapshot checks the page structure before bbolt
	// maps the state).
	for _, name := range []string{"truncated", "damaged page types"} {
		if err := restoreSnapshot(c.Client(t, leader), crafted[name], true); !api.IsInvalidArgument(err) {
			t.Fatalf("%s with -force: %v", name, err)
		}
	}
	after := c.Status(t, leader)
	if after.LeaderId != before.LeaderId || after.Term != before.Term || after.Seal.Sealed {
		t.Fatalf("the leader after the refused restores: %v (was %v)", after, before)
	}
	readEverywhere(t, c, "secret/kept", "1")
	if _, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/after", Data: map[string]string{"v": "2"}}); err != nil {
		t.Fatalf("write after the refused restores: %v", err)
	}
	// Nothing bad was stored: the leader starts again and serves.
	c.Kill(leader)
	c.WaitForNewLeader(t, leader)
	c.Restart(t, leader)
	c.Unseal(t, leader, 0)
	readEverywhere(t, c, "secret/after", "2")
}
