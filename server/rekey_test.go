package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/fsm/fsmpb"
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
