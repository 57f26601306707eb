package server

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/replication"
	"coffer/seal"
)

// TestRekeyLosesToAnotherRecordChange: a rekey in progress whose seal
// record is replaced meanwhile (by another rekey's or a migration's write,
// here the record of a second rekey proposed straight through Raft) does
// not overwrite it: the last share fails with CAS_MISMATCH, says to start
// again, and the record that won stays — the first rekey's new shares
// never exist, the winner's shares open the node.
func TestRekeyLosesToAnotherRecordChange(t *testing.T) {
	n := startNode(t, "")
	shares, token := n.initUnseal(5, 3)
	st, err := n.sys.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: 3, SecretThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range shares[:2] {
		if st, err = n.sys.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: st.Nonce, Key: sh}); err != nil {
			t.Fatal(err)
		}
	}
	// Another change of the record wins first.
	stored, err := n.srv.sys.storedSeal()
	if err != nil {
		t.Fatal(err)
	}
	other, err := seal.NewRekey(stored, seal.Config{Shares: 2, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	var won *seal.RekeyResult
	for _, sh := range shares[2:5] {
		if won, err = other.Add(sh); err != nil {
			t.Fatal(err)
		}
		if won != nil {
			break
		}
	}
	if _, err := n.srv.sys.props.propose(ctx(t), &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: sysSealKey, Value: won.Stored.Marshal()}}}); err != nil {
		t.Fatal(err)
	}
	_, err = n.sys.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: st.Nonce, Key: shares[2]})
	if status.Code(err) != codes.FailedPrecondition || reasonOf(err) != pb.ErrorReason_CAS_MISMATCH || !strings.Contains(err.Error(), "start the rekey again") {
		t.Fatalf("the losing rekey: %v", err)
	}
	if now, err := n.srv.sys.storedSeal(); err != nil || now.Shares != 2 {
		t.Fatalf("the record after the lost rekey: %+v, %v", now, err)
	}
	if _, err := n.sys.Seal(authed(t, token), &pb.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	var us *pb.SealStatus
	for _, sh := range won.Shares {
		if us, err = n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: sh}); err != nil {
			t.Fatal(err)
		}
	}
	if us.Sealed {
		t.Fatal("the winning rekey's shares do not unseal")
	}
}

// lostProposer proposes nothing and reports a lost answer, as a leader
// that lost its leadership while the entry was in flight does.
type lostProposer struct{}

func (lostProposer) propose(context.Context, *fsmpb.Command) (*fsm.Result, error) {
	return nil, replication.ErrLeadershipLost
}

// TestRekeyWithUnknownOutcomeKeepsTheNewShares: when the new seal record's
// outcome cannot be learnt (the answer lost in a leader change, the record
// not seen within the wait), the new shares still come back — marked
// outcome unknown, with the key id that tells them apart — instead of
// being dropped while the entry might yet commit, which would leave
// nobody able to unseal. The old shares still hold here, and a status
// names the current key id, which is not the new one.
func TestRekeyWithUnknownOutcomeKeepsTheNewShares(t *testing.T) {
	n := startNode(t, "")
	shares, token := n.initUnseal(5, 3)
	before, err := n.sys.Rekey(ctx(t), &pb.RekeyRequest{Action: "status"})
	if err != nil || before.KeyId == "" {
		t.Fatalf("status before: %v %v", before, err)
	}
	// The node's own Sys service over a proposer that loses every answer
	// (the node's leader duties keep the real one).
	real := n.srv.sys
	lossy := &sysServer{nodeID: real.nodeID, keys: real.keys, store: real.store, props: lostProposer{}, raft: real.raft, link: real.link, logger: real.logger}
	st, err := lossy.Rekey(ctx(t), &pb.RekeyRequest{Action: "init", SecretShares: 3, SecretThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range shares[:3] {
		if st, err = lossy.Rekey(ctx(t), &pb.RekeyRequest{Action: "update", Nonce: st.Nonce, Key: sh}); err != nil {
			t.Fatal(err)
		}
	}
	if !st.OutcomeUnknown || st.Complete || len(st.Keys) != 3 || st.KeyId == "" || st.KeyId == before.KeyId {
		t.Fatalf("the answer with the outcome unknown: unknown %v complete %v, %d keys, key id %q (before %q)", st.OutcomeUnknown, st.Complete, len(st.Keys), st.KeyId, before.KeyId)
	}
	after, err := n.sys.Rekey(ctx(t), &pb.RekeyRequest{Action: "status"})
	if err != nil || after.KeyId != before.KeyId {
		t.Fatalf("status after: key id %q, want the old %q (%v)", after.GetKeyId(), before.KeyId, err)
	}
	// Not stored: the old shares unseal.
	if _, err := n.sys.Seal(authed(t, token), &pb.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	var us *pb.SealStatus
	for _, sh := range shares[:3] {
		if us, err = n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: sh}); err != nil {
			t.Fatal(err)
		}
	}
	if us.Sealed {
		t.Fatal("the old shares no longer unseal, though the new record was never stored")
	}
}
