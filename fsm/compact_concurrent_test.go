package fsm

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"coffer/fsm/fsmpb"
)

// TestSnapshotWhileApplyingIsStateAtItsIndex: a snapshot persists (as a
// compacted copy) while batches that add and overwrite secrets go on being
// applied; what it restores is, bucket by bucket, the state of an FSM fed
// exactly the commands up to the snapshot's index, and its applied index
// is that index.
func TestSnapshotWhileApplyingIsStateAtItsIndex(t *testing.T) {
	batches := func(from, to int) [][]*fsmpb.Command {
		var out [][]*fsmpb.Command
		for b := from; b < to; b++ {
			var cmds []*fsmpb.Command
			for i := 0; i < 50; i++ {
				p := fmt.Sprintf("secret/c/%04d", (b*37+i)%700)
				cmds = append(cmds, &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: p, Ciphertext: ctN(100 + (b+i)%200)})
			}
			out = append(out, cmds)
		}
		return out
	}
	apply := func(h *harness, bs [][]*fsmpb.Command) {
		for _, cmds := range bs {
			h.now = h.now.Add(time.Millisecond)
			h.applyBatch(cmds)
		}
	}
	before, after := batches(0, 40), batches(40, 120)

	src := newHarness(t, Options{})
	apply(src, before)
	index := src.f.AppliedIndex()
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	done := make(chan struct{})
	go func() {
		defer close(done)
		apply(src, after)
	}()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	<-done

	ref := newHarness(t, Options{})
	apply(ref, before)
	got := newHarness(t, Options{})
	if err := got.f.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if got.f.AppliedIndex() != index {
		t.Fatalf("restored applied index %d, want the snapshot's %d", got.f.AppliedIndex(), index)
	}
	if !bytes.Equal(deepDump(t, ref.f), deepDump(t, got.f)) {
		t.Fatal("the snapshot restores a state other than the one at its index")
	}
	if src.f.AppliedIndex() == index {
		t.Fatal("no batch was applied after the snapshot: the test checked nothing")
	}
}
