package server

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

var errReplaced = errors.New("replaced")

// A call to a leader that stops being the leader while the call hangs (a
// partition that swallows packets) ends as soon as the change is seen, with
// its context cancelled, instead of at its deadline.
func TestCallWhileLeaderReplaced(t *testing.T) {
	var leader atomic.Bool
	leader.Store(true)
	started := make(chan struct{})
	var callErr error
	errc := make(chan error, 1)
	go func() {
		errc <- callWhile(context.Background(), leader.Load, func(ctx context.Context) error {
			close(started)
			<-ctx.Done() // a call that never gets an answer
			callErr = ctx.Err()
			return ctx.Err()
		}, func() error { return errReplaced })
	}()
	<-started
	leader.Store(false)
	select {
	case err := <-errc:
		if !errors.Is(err, errReplaced) {
			t.Fatalf("callWhile returned %v, want the replaced error", err)
		}
		if !errors.Is(callErr, context.Canceled) {
			t.Fatalf("the call's context ended with %v, want it cancelled", callErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("callWhile still waits on a call to a replaced leader")
	}
}

// While the leader stays, the call's own answer and error come through.
func TestCallWhileLeaderHolds(t *testing.T) {
	holds := func() bool { return true }
	want := errors.New("the leader's answer")
	err := callWhile(context.Background(), holds, func(ctx context.Context) error {
		// Outlive a few leader checks before answering.
		timer := time.NewTimer(5 * leaderWatchInterval)
		defer timer.Stop()
		select {
		case <-timer.C:
			return want
		case <-ctx.Done():
			return ctx.Err()
		}
	}, func() error { return errReplaced })
	if !errors.Is(err, want) {
		t.Fatalf("callWhile returned %v, want the call's own error", err)
	}
	if err := callWhile(context.Background(), holds, func(context.Context) error { return nil }, func() error { return errReplaced }); err != nil {
		t.Fatalf("a call that succeeds returned %v", err)
	}
}

// The caller's deadline still bounds the call.
func TestCallWhileCallerDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*leaderWatchInterval)
	defer cancel()
	err := callWhile(ctx, func() bool { return true }, func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}, func() error { return errReplaced })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("callWhile returned %v, want the caller's deadline", err)
	}
}
