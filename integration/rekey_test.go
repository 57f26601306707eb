package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// unsealWith submits shares to n one by one until it is unsealed, and
// returns the first error (nil once n is unsealed).
func unsealWith(t testing.TB, n *Node, shares [][]byte) error {
	t.Helper()
	for _, sh := range shares {
		st, err := n.Sys.Unseal(ctx(t), &pb.UnsealRequest{Key: sh})
		if err != nil {
			return err
		}
		if !st.Sealed {
			return nil
		}
	}
	return errors.New("still sealed after every share")
}

// refusesShares checks that the sealed node n does not unseal with
// shares (a threshold of the old shares after a rekey): the attempt fails
// with WRONG_SHARES or INVALID_SHARE, and n stays sealed.
func refusesShares(t testing.TB, c *Cluster, n *Node, shares [][]byte) {
	t.Helper()
	err := unsealWith(t, n, shares)
	if err == nil {
		t.Fatalf("%s unsealed with the old shares", n.ID)
	}
	if r := api.Reason(err); r != pb.ErrorReason_WRONG_SHARES && r != pb.ErrorReason_INVALID_SHARE {
		t.Fatalf("%s: old shares: %v (reason %v), want WRONG_SHARES", n.ID, err, r)
	}
	if st := c.Status(t, n); !st.Seal.Sealed {
		t.Fatalf("%s is unsealed after the old shares were refused", n.ID)
	}
	if _, err := n.Sys.Unseal(ctx(t), &pb.UnsealRequest{Reset_: true}); err != nil {
		t.Fatal(err)
	}
}

// rekeyAll runs a whole rekey to shares/threshold through cl with the
// given current shares and returns the new shares.
func rekeyAll(t testing.TB, cl *api.Client, current [][]byte, shares, threshold uint32) [][]byte {
	t.Helper()
	st, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: shares, SecretThreshold: threshold})
	if err != nil {
		t.Fatalf("rekey init: %v", err)
	}
	nonce := st.Nonce
	for i, sh := range current {
		st, err = cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: nonce, Key: sh})
		if err != nil {
			t.Fatalf("rekey share %d: %v", i, err)
		}
		if st.Complete {
			break
		}
	}
	if !st.Complete || len(st.Keys) != int(shares) || st.T != threshold || st.N != shares {
		t.Fatalf("rekey did not complete: %+v", st)
	}
	return st.Keys
}

// TestRekeyWithANodeDown: a rekey through a follower while a third node
// is down. Afterwards the old shares unseal no node (each running node is
// sealed and refuses them; the new shares unseal it), and the node that
// was down comes back, refuses the old shares too (it catches up with the
// leader before it takes a share) and unseals with the new ones. Along
// the way: a validation error, a wrong nonce, a cancelled attempt, and a
// wrong share that resets the progress.
func TestRekeyWithANodeDown(t *testing.T) {
	logs := &syncLog{}
	c, leader, root := unsealedCluster(t, ClusterOptions{AuditFiles: true, LogTap: logs})
	for i := range 5 {
		if _, err := root.Put(ctx(t), &pb.PutRequest{Path: fmt.Sprintf("secret/rekey/%d", i), Data: map[string]string{"v": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	fs := c.Followers(leader)
	down, via := fs[0], fs[1]
	c.Stop(t, down)
	cl, err := api.New(api.Config{Endpoints: []string{via.APIAddr()}, TLS: c.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	if _, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: 3, SecretThreshold: 5}); api.Reason(err) != pb.ErrorReason_INVALID_SEAL_CONFIG {
		t.Fatalf("threshold above the shares: %v", err)
	}
	st, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: 4, SecretThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Started || st.Nonce == "" || st.Required != 3 || st.T != 2 || st.N != 4 {
		t.Fatalf("init: %+v", st)
	}
	if _, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: 4, SecretThreshold: 2}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a second init while one runs: %v", err)
	}
	if _, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: "wrong", Key: c.Shares[0]}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a wrong nonce: %v", err)
	}
	if _, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "cancel", Nonce: "wrong"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("cancel with a wrong nonce: %v", err)
	}
	if st, err = cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "cancel", Nonce: st.Nonce}); err != nil || st.Started {
		t.Fatalf("cancel: %+v, %v", st, err)
	}
	st, err = cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: 4, SecretThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	// A wrong share: at the threshold the shares do not open the root key,
	// the progress goes back to 0 and the error says so.
	bad := bytes.Clone(c.Shares[2])
	bad[3] ^= 0x40
	for i, sh := range [][]byte{c.Shares[0], c.Shares[1]} {
		if st, err = cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: st.Nonce, Key: sh}); err != nil || st.Progress != uint32(i+1) {
			t.Fatalf("share %d: %+v, %v", i, st, err)
		}
	}
	_, err = cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: st.Nonce, Key: bad})
	if api.Reason(err) != pb.ErrorReason_WRONG_SHARES || !bytes.Contains([]byte(err.Error()), []byte("reset to 0")) {
		t.Fatalf("a wrong share: %v", err)
	}
	if now, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "status"}); err != nil || now.Progress != 0 || now.Nonce != st.Nonce {
		t.Fatalf("after a wrong share: %+v, %v", now, err)
	}
	var fresh [][]byte
	for i, sh := range c.Shares[:3] {
		st, err = cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: st.Nonce, Key: sh})
		if err != nil {
			t.Fatalf("share %d: %v", i, err)
		}
		if i < 2 && (st.Complete || len(st.Keys) != 0) {
			t.Fatalf("share %d: %+v", i, st)
		}
	}
	if !st.Complete || len(st.Keys) != 4 || st.T != 2 || st.N != 4 || st.Index == 0 {
		t.Fatalf("last share: %+v", st)
	}
	fresh = st.Keys
	old := c.Shares
	if now, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "status"}); err != nil || now.Started || now.Required != 2 {
		t.Fatalf("status after the rekey: %+v, %v", now, err)
	}
	c.WaitForApplied(t, st.Index)

	// Every running node: sealed, it refuses the old shares and takes the
	// new ones. (Sealing the leader hands leadership over.)
	for _, n := range c.Running() {
		if _, err := n.Sys.Seal(c.Auth(t), &pb.SealRequest{}); err != nil {
			t.Fatalf("seal %s: %v", n.ID, err)
		}
		refusesShares(t, c, n, old[:3])
		refusesShares(t, c, n, old[2:5])
		if err := unsealWith(t, n, [][]byte{fresh[3], fresh[0]}); err != nil {
			t.Fatalf("%s with the new shares: %v", n.ID, err)
		}
		c.WaitForLeader(t)
	}

	// The node that was down holds the old record on disk. It catches up
	// before it takes a share, so the old shares fail there too.
	c.Restart(t, down)
	refusesShares(t, c, down, old[1:4])
	if err := unsealWith(t, down, fresh[1:3]); err != nil {
		t.Fatalf("%s with the new shares: %v", down.ID, err)
	}
	// No share, old or new, is in a log line or an audit record (the
	// rekey's calls are audited, their shares HMACed).
	for _, n := range []*Node{leader, via} {
		audit, err := os.ReadFile(n.AuditFile())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(audit, []byte("Rekey")) {
			t.Fatalf("%s audited no rekey call", n.ID)
		}
		for _, sh := range append(append([][]byte{}, old...), fresh...) {
			for _, form := range keyForms(sh) {
				if bytes.Contains(audit, []byte(form)) || strings.Contains(logs.String(), form) {
					t.Fatalf("a share is in %s's audit file or the logs", n.ID)
				}
			}
		}
	}
	dl := c.Client(t, down)
	for i := range 5 {
		s, err := dl.Get(ctx(t), &pb.GetRequest{Path: fmt.Sprintf("secret/rekey/%d", i), Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
		if err != nil || s.Data["v"] != fmt.Sprint(i) {
			t.Fatalf("secret/rekey/%d on %s: %v, %v", i, down.ID, s, err)
		}
	}
}

// TestRekeyTwice: after two rekeys only the newest shares hold; the
// first rekey's shares are refused like the init's.
func TestRekeyTwice(t *testing.T) {
	c, leader, _ := unsealedCluster(t, ClusterOptions{})
	cl := c.Client(t, leader)
	fresh := rekeyAll(t, cl, c.Shares[:3], 3, 2)
	again := rekeyAll(t, cl, fresh[:2], 5, 3)
	for _, n := range c.Running() {
		if _, err := n.Sys.Seal(c.Auth(t), &pb.SealRequest{}); err != nil {
			t.Fatal(err)
		}
		refusesShares(t, c, n, fresh)
		refusesShares(t, c, n, c.Shares[:3])
		if err := unsealWith(t, n, again[2:5]); err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
		c.WaitForLeader(t)
	}
}

// TestSnapshotSurvivesRekey: a snapshot saved before a rekey restores
// after it without -force (it is authenticated by the root key, which a
// rekey keeps), and its fingerprint is the same before and after.
func TestSnapshotSurvivesRekey(t *testing.T) {
	c, leader, root := unsealedCluster(t, ClusterOptions{})
	if _, err := root.Put(ctx(t), &pb.PutRequest{Path: "secret/snap/before", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	var before bytes.Buffer
	if err := root.SnapshotSave(ctx(t), &before); err != nil {
		t.Fatal(err)
	}
	fp := snapshotHeader(t, before.Bytes())["seal_fingerprint"]
	if fp == nil || fp == "" {
		t.Fatalf("no fingerprint in the header")
	}
	rekeyAll(t, c.Client(t, leader), c.Shares[:3], 3, 2)
	if _, err := root.Put(ctx(t), &pb.PutRequest{Path: "secret/snap/after", Data: map[string]string{"v": "2"}}); err != nil {
		t.Fatal(err)
	}
	var after bytes.Buffer
	if err := root.SnapshotSave(ctx(t), &after); err != nil {
		t.Fatal(err)
	}
	if got := snapshotHeader(t, after.Bytes())["seal_fingerprint"]; got != fp {
		t.Fatalf("fingerprint changed with the rekey: %v, was %v", got, fp)
	}
	if err := restoreSnapshot(root, before.Bytes(), false); err != nil {
		t.Fatalf("restoring a snapshot from before the rekey: %v", err)
	}
	testcluster.WaitFor(t, 10*time.Second, "the restored state", func() error {
		if _, err := root.Get(ctx(t), &pb.GetRequest{Path: "secret/snap/after"}); !api.IsNotFound(err) {
			return fmt.Errorf("secret/snap/after: %v", err)
		}
		return nil
	})
	if s, err := root.Get(ctx(t), &pb.GetRequest{Path: "secret/snap/before"}); err != nil || s.Data["v"] != "1" {
		t.Fatalf("secret/snap/before: %v, %v", s, err)
	}
}
