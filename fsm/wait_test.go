package fsm

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"

	"coffer/fsm/fsmpb"
)

func TestWaitAppliedWakes(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := waitCtx(t)
	done := make(chan error, 3)
	for _, idx := range []uint64{1, 3, 3} {
		go func() { done <- h.f.WaitApplied(ctx, idx) }()
	}
	h.mustOK(putCmd("a", "v"))
	// Index 1 is reached; the others must still be waiting.
	if err := <-done; err != nil {
		t.Fatalf("WaitApplied(1) = %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitApplied(3) returned %v at index 1", err)
	default:
	}
	h.mustOK(putCmd("a", "v"))
	h.mustOK(putCmd("a", "v"))
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("WaitApplied(3) = %v", err)
		}
	}
	// Already applied: immediate, even with a dead context.
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.f.WaitApplied(dead, 2); err != nil {
		t.Fatalf("WaitApplied(applied) = %v", err)
	}
}

func TestWaitAppliedContext(t *testing.T) {
	h := newHarness(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		done <- h.f.WaitApplied(ctx, 100)
	}()
	<-started
	h.mustOK(putCmd("a", "v")) // wakes the waiter, which waits again
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitApplied after cancel = %v", err)
	}
}

func TestWaitAppliedClose(t *testing.T) {
	h := newHarness(t, Options{})
	done := make(chan error, 1)
	go func() { done <- h.f.WaitApplied(waitCtx(t), 100) }()
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitApplied after Close = %v", err)
	}
	if err := h.f.WaitApplied(waitCtx(t), 100); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitApplied on closed FSM = %v", err)
	}
}

// TestConcurrentReadsDuringApply exercises reads, waits and applies together
// under the race detector.
func TestConcurrentReadsDuringApply(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	const n = 200
	ctx := waitCtx(t)
	errs := make(chan error, 4)
	for r := 0; r < 3; r++ {
		go func() {
			for i := uint64(1); i <= n; i++ {
				if err := h.f.WaitApplied(ctx, i); err != nil {
					errs <- err
					return
				}
				if _, err := h.f.Get("dir/s", 0); err != nil {
					errs <- err
					return
				}
				if _, err := h.f.List("dir/"); err != nil {
					errs <- err
					return
				}
				if md, err := h.f.Metadata("dir/s"); err != nil || md.CurrentVersion < i {
					errs <- errors.Join(err, errors.New("metadata behind the applied index"))
					return
				}
			}
			errs <- nil
		}()
	}
	data, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "dir/s", Ciphertext: ct("v"), LeaderTimeUnixNano: h.now.UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := uint64(1); i <= n; i++ {
			res, _ := h.f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: data}).(Result)
			if res.Err != nil || res.Version != i {
				errs <- fmt.Errorf("apply %d: %+v", i, res)
				return
			}
		}
		errs <- nil
	}()
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
