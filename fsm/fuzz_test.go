package fsm

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// fuzzSeeds are valid encodings of every op, for the fuzzers to mutate.
func fuzzSeeds(t testing.TB) [][]byte {
	now := baseTime.UnixNano()
	cmds := []*fsmpb.Command{
		{Op: fsmpb.Op_OP_PUT, Path: "secret/a", Ciphertext: ct("ct"), LeaderTimeUnixNano: now, RequestId: "r1"},
		{Op: fsmpb.Op_OP_PUT, Path: "secret/a", Ciphertext: ct("ct"), HasCas: true, Cas: 1, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_DELETE, Path: "secret/a", LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_UNDELETE, Path: "secret/a", Versions: []uint64{1, 2}, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_DESTROY, Path: "secret/a", Versions: []uint64{1}, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_DELETE_METADATA, Path: "secret/a", LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_PUT_METADATA, Path: "secret/a", MaxVersions: 2, CasRequired: true, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, SysRequireAbsent: "k", LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: []string{"k"}, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, Sys: []*fsmpb.SysEntry{{Key: "t", Value: ct("w")}}, SysKeys: []string{"k"}, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: []*fsmpb.LeaseWrite{
			{Id: "database/creds/app/1", Group: "app", DueUnixNano: now, Record: ct("r1"), CreateOnly: true, MaxInGroup: 2, MaxTotal: 3},
			{Id: "database/creds/app/2", Group: "app", DueUnixNano: now + 1, Record: ct("r2"), ExpectIndex: 2},
		}, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_LEASE_DELETE, LeaseDeletes: []*fsmpb.LeaseDelete{{Id: "database/creds/app/1", ExpectIndex: 1}, {Id: "x"}}, LeaderTimeUnixNano: now},
		{Op: fsmpb.Op_OP_NOOP},
	}
	seeds := [][]byte{nil, {0xff}}
	for _, c := range cmds {
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

func FuzzDecodeCommand(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCommand(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidCommand) || c != nil {
				t.Fatalf("DecodeCommand = %v, %v", c, err)
			}
			return
		}
		// A command that decodes re-encodes, and decodes to the same thing;
		// except one with a value not laid out as sealed, which decodes
		// (a log written before values were sealed must replay) but which
		// no proposer may make.
		b, err := EncodeCommand(c)
		if sealedLayoutOf(c) == valuesUnsealed {
			if !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("EncodeCommand of a command with an unsealed value: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("EncodeCommand of a decoded command: %v", err)
		}
		c2, err := DecodeCommand(b)
		if err != nil || !proto.Equal(c, c2) {
			t.Fatalf("round trip: %v, %v vs %v", err, c, c2)
		}
	})
}

// FuzzApply feeds arbitrary bytes to Apply as log data: it must never panic,
// must return a Result and must advance the applied index. One FSM per fuzz
// process accumulates state, so later inputs meet earlier ones' secrets.
func FuzzApply(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	fsm, err := Open(filepath.Join(f.TempDir(), "fuzz.db"), Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = fsm.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		index := fsm.AppliedIndex() + 1
		resp := fsm.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data})
		res, ok := resp.(Result)
		if !ok {
			t.Fatalf("Apply returned %T", resp)
		}
		if errors.Is(res.Err, ErrStorage) || errors.Is(res.Err, ErrClosed) {
			t.Fatalf("Apply: %v", res.Err)
		}
		if !res.Deduplicated && res.Index != index {
			t.Fatalf("Result.Index = %d, want %d", res.Index, index)
		}
		if got := fsm.AppliedIndex(); got != index {
			t.Fatalf("AppliedIndex = %d, want %d", got, index)
		}
	})
}
