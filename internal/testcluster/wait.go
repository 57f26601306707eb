package testcluster

import (
	"context"
	"testing"
	"time"
)

// WaitFor calls cond every 10ms until it returns nil, and fails t with
// cond's last error when d has passed first. what names the awaited
// condition in the failure.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", d, what, err)
		}
		<-tick.C
	}
}

// Context returns a context that ends after d, or when t's cleanups run.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
