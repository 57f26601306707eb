package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/fsm/fsmpb"
)

// maxLate is how late after its due time a revocation may start on the
// test machine (2 shared cores, -race): measured at most about 5 ms (median
// 1 ms) over ten runs of TestWorkerRevokesOnTime, which logs its figures;
// the bound leaves room for a loaded machine.
const maxLate = 150 * time.Millisecond

// TestWorkerRevokesOnTime: 200 leases due within a 3 s window are each
// revoked no earlier than their expiry, and soon after it. The worker runs
// from the start, asleep on an empty table: each creation wakes it.
func TestWorkerRevokesOnTime(t *testing.T) {
	x := newFixture(t, Options{})
	rv := newRecorder(nil)
	x.t.RegisterRevoker("test", rv)
	w := NewWorker(x.t, WorkerOptions{})
	startWorker(t, w)

	const n = 200
	exp := map[string]time.Time{}
	for i := range n {
		rec := x.create(t, "database/creds/app", time.Second+time.Duration(i)*15*time.Millisecond, 0, true)
		exp[rec.ID] = rec.ExpireTime
	}
	var late []time.Duration
	deadline := time.After(15 * time.Second)
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case c := <-rv.ch:
			if seen[c.id] {
				t.Fatalf("lease %s revoked twice", c.id)
			}
			seen[c.id] = true
			d := c.at.Sub(exp[c.id])
			if d < 0 {
				t.Fatalf("lease %s revoked %v before its expiry", c.id, -d)
			}
			late = append(late, d)
		case <-deadline:
			t.Fatalf("%d of %d leases revoked within 15 s", len(seen), n)
		}
	}
	slices.Sort(late)
	t.Logf("revocation after expiry over %d leases: median %v, p99 %v, max %v", n, late[n/2], late[n*99/100], late[n-1])
	if late[n-1] > maxLate {
		t.Fatalf("a revocation started %v after its expiry (bound %v)", late[n-1], maxLate)
	}
	waitFor(t, 5*time.Second, "the table emptied", func() error {
		if _, total, err := x.t.Count(""); err != nil || total != 0 {
			return fmt.Errorf("%d leases left (%v)", total, err)
		}
		return nil
	})
	// The worker counts a revocation once its delete has been applied,
	// just after the table shows it gone.
	waitFor(t, 5*time.Second, "every revocation counted", func() error {
		if s := w.Stats(); s.Revoked != n || s.Failures != 0 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
}

// TestWorkerBacksOffAndListsFailures: a revoker that fails: the retries
// space out (jittered doubling), the lease is listed as failed with its
// last error meanwhile, and once the revoker recovers it is revoked.
func TestWorkerBacksOffAndListsFailures(t *testing.T) {
	const base = 50 * time.Millisecond
	x := newFixture(t, Options{Backoff: Backoff{Base: base, Max: 2 * time.Second, Jitter: 0.2}})
	const failures = 5
	var recovered sync.WaitGroup
	recovered.Add(1)
	rv := newRecorder(func(rec *Record, n int) error {
		if n < failures {
			return fmt.Errorf("dial tcp 127.0.0.1:5432: connection refused (attempt %d)", n+1)
		}
		return nil
	})
	x.t.RegisterRevoker("test", rv)
	rec := x.create(t, "database/creds/app", 100*time.Millisecond, 0, true)
	w := NewWorker(x.t, WorkerOptions{})
	startWorker(t, w)

	// While it fails, the failed list shows it with the last error.
	waitFor(t, 5*time.Second, "the lease listed as failed twice", func() error {
		recs, _, err := x.t.List("database/", "", 0, true)
		if err != nil {
			return err
		}
		if len(recs) != 1 || recs[0].Attempts < 2 {
			return fmt.Errorf("failed list %+v", recs)
		}
		r := recs[0]
		if r.ID != rec.ID || r.State != StateRevoking || !strings.Contains(r.LastError, "connection refused") || r.LastAttempt.IsZero() {
			return fmt.Errorf("failed lease %+v", r)
		}
		return nil
	})
	mustGone(t, x.t, rec.ID, 10*time.Second)
	calls := rv.callsFor(rec.ID)
	if len(calls) != failures+1 {
		t.Fatalf("%d revocation attempts, want %d", len(calls), failures+1)
	}
	if calls[0].at.Before(rec.ExpireTime) {
		t.Fatal("revoked before its expiry")
	}
	var gaps []time.Duration
	for i := 1; i < len(calls); i++ {
		gap := calls[i].at.Sub(calls[i-1].at)
		gaps = append(gaps, gap)
		// Never sooner than the backoff allows: base·2^(i-1), less 20 %.
		if floor := time.Duration(float64(base<<(i-1)) * 0.8); gap < floor {
			t.Fatalf("retry %d came after %v, the backoff allows no sooner than %v", i, gap, floor)
		}
	}
	t.Logf("gaps between attempts: %v", gaps)
	for i := 2; i < len(gaps); i++ {
		if gaps[i] <= gaps[i-2] {
			t.Fatalf("the backoff does not grow: %v", gaps)
		}
	}
	if s := w.Stats(); s.Revoked != 1 || s.Failures != failures || s.Retrying != 0 {
		t.Fatalf("stats %+v", s)
	}
	if recs, _, _ := x.t.List("", "", 0, true); len(recs) != 0 {
		t.Fatalf("still listed as failed: %+v", recs)
	}
}

// TestWorkerRevokesUnconfirmedIntent: an intent whose creator never
// confirmed is revoked once its window has passed, not before; the
// creator's late Confirm then fails.
func TestWorkerRevokesUnconfirmedIntent(t *testing.T) {
	x := newFixture(t, Options{Limits: Limits{IntentWindow: 200 * time.Millisecond}})
	rv := newRecorder(nil)
	x.t.RegisterRevoker("test", rv)
	startWorker(t, NewWorker(x.t, WorkerOptions{}))
	p, err := x.t.CreatePending(context.Background(), &Record{Path: "database/creds/app", Kind: "test", TTL: time.Hour, Data: []byte("u")})
	if err != nil {
		t.Fatal(err)
	}
	var c call
	select {
	case c = <-rv.ch:
	case <-time.After(5 * time.Second):
		t.Fatal("the intent was not revoked within 5 s")
	}
	if c.id != p.ID || c.state != StateRevoking {
		t.Fatalf("revoked %+v", c)
	}
	if late := c.at.Sub(p.Due); late < 0 || late > maxLate {
		t.Fatalf("the intent was revoked %v after its window ended", late)
	}
	mustGone(t, x.t, p.ID, 5*time.Second)
	if _, err := x.t.Confirm(context.Background(), p.ID, p.Index); !errors.Is(err, ErrIntentLost) {
		t.Fatalf("late Confirm: %v", err)
	}
	// A confirmed lease is left alone until it expires.
	a := x.create(t, "database/creds/app", time.Hour, 0, true)
	if _, err := x.t.Get(a.ID); err != nil {
		t.Fatal(err)
	}
	if calls := rv.callsFor(a.ID); len(calls) != 0 {
		t.Fatalf("a confirmed lease was revoked: %+v", calls)
	}
}

// TestWorkerWithoutRevokerRetries: a lease of a kind nobody registered
// fails visibly and is revoked once its revoker is registered.
func TestWorkerWithoutRevokerRetries(t *testing.T) {
	x := newFixture(t, Options{Backoff: Backoff{Base: 20 * time.Millisecond, Max: 100 * time.Millisecond}})
	rec := x.create(t, "database/creds/app", 10*time.Millisecond, 0, true)
	startWorker(t, NewWorker(x.t, WorkerOptions{}))
	waitFor(t, 5*time.Second, "the lease failing", func() error {
		r, err := x.t.Get(rec.ID)
		if err != nil {
			return err
		}
		if r.Attempts == 0 || !strings.Contains(r.LastError, `no revoker is registered for leases of kind "test"`) {
			return fmt.Errorf("lease %+v", r)
		}
		return nil
	})
	x.t.RegisterRevoker("test", newRecorder(nil))
	mustGone(t, x.t, rec.ID, 5*time.Second)
}

// TestRevokePrefix: every lease under the prefix (and only those) becomes
// due now, in batches; the worker revokes them.
func TestRevokePrefix(t *testing.T) {
	x := newFixture(t, Options{})
	rv := newRecorder(nil)
	x.t.RegisterRevoker("test", rv)
	const n = 600
	seedLeases(t, x, "database/creds/app", n, time.Now().Add(time.Hour))
	other := x.create(t, "database/creds/app2", time.Hour, 0, true)

	before := x.props.index
	count, err := x.t.RevokePrefix(context.Background(), "database/creds/app")
	if err != nil || count != n {
		t.Fatalf("RevokePrefix = %d, %v; want %d", count, err, n)
	}
	if cmds := x.props.index - before; cmds > uint64(n/writeBatch+1) {
		t.Fatalf("RevokePrefix used %d Raft commands for %d leases", cmds, n)
	}
	now := time.Now()
	recs, _, err := x.t.List("database/creds/app/", "", 0, false)
	if err != nil || len(recs) != n {
		t.Fatalf("listed %d, %v", len(recs), err)
	}
	for _, r := range recs {
		if r.State != StateRevoking || r.Due.After(now) {
			t.Fatalf("lease after revoke-prefix: %+v", r)
		}
	}
	// Renewing one is refused now.
	if _, _, err := x.t.Renew(context.Background(), recs[0].ID, 0, nil); !errors.Is(err, ErrNotActive) {
		t.Fatalf("renew after revoke-prefix: %v", err)
	}
	w := NewWorker(x.t, WorkerOptions{})
	before = x.props.index
	startWorker(t, w)
	waitFor(t, 20*time.Second, "every lease under the prefix revoked", func() error {
		in, total, err := x.t.Count("database/creds/app")
		if err != nil || in != 0 || total != 1 {
			return fmt.Errorf("%d left under the prefix, %d in all (%v)", in, total, err)
		}
		return nil
	})
	if _, err := x.t.Get(other.ID); err != nil {
		t.Fatalf("a lease outside the prefix: %v", err)
	}
	if s := w.Stats(); s.Revoked != n {
		t.Fatalf("stats %+v", s)
	}
	x.props.mu.Lock()
	cmds := x.props.index - before
	x.props.mu.Unlock()
	t.Logf("the worker removed %d revoked leases with %d Raft commands", n, cmds)
}

// seedLeases writes n active leases under path due at due, a thousand per
// Raft command, each sealed for its own id.
func seedLeases(t testing.TB, x *fixture, path string, n int, due time.Time) []string {
	t.Helper()
	now := time.Now().UTC()
	var ids []string
	var batch []*fsmpb.LeaseWrite
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if _, err := x.props.Propose(context.Background(), &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: batch}); err != nil {
			t.Fatal(err)
		}
		batch = nil
	}
	for i := range n {
		rec := &Record{ID: fmt.Sprintf("%s/%08d", path, i), Path: path, Group: path, Kind: "test", State: StateActive,
			IssueTime: now, ExpireTime: due, MaxExpireTime: due, TTL: due.Sub(now), MaxTTL: due.Sub(now), Renewable: true,
			Data: []byte(`{"username":"v-app-` + fmt.Sprint(i) + `"}`)}
		w, err := x.t.leaseWrite(rec, due, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, w)
		ids = append(ids, rec.ID)
		if len(batch) == 1000 {
			flush()
		}
	}
	flush()
	return ids
}

// TestNewLeaderFirstRevocation: a worker started on a table of 100,000
// leases, a few of them due, makes its first revocation at once and opens
// only the records that are due: a new leader loads nothing.
func TestNewLeaderFirstRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100,000 leases")
	}
	x := newFixture(t, Options{})
	rv := newRecorder(nil)
	x.t.RegisterRevoker("test", rv)
	const n, due = 100_000, 5
	seedStart := time.Now()
	seedLeases(t, x, "database/creds/bulk", n, time.Now().Add(time.Hour))
	dueIDs := seedLeases(t, x, "database/creds/late", due, time.Now().Add(-time.Second))
	t.Logf("seeded %d leases in %v", n+due, time.Since(seedStart))
	if _, total, _ := x.t.Count(""); total != n+due {
		t.Fatalf("%d leases in the table", total)
	}

	opened := x.sealer.opened.Load()
	w := NewWorker(x.t, WorkerOptions{})
	start := time.Now()
	stop := startWorker(t, w)
	var first time.Duration
	select {
	case c := <-rv.ch:
		first = c.at.Sub(start)
	case <-time.After(5 * time.Second):
		t.Fatal("no revocation within 5 s")
	}
	for i := 1; i < due; i++ {
		select {
		case <-rv.ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d due leases revoked", i, due)
		}
	}
	all := time.Since(start)
	workerOpened := x.sealer.opened.Load() - opened
	for _, id := range dueIDs {
		mustGone(t, x.t, id, 5*time.Second)
	}
	stop()
	t.Logf("with %d live leases: first revocation %v after Run, all %d due ones %v after", n+due, first, due, all)
	if first > 500*time.Millisecond {
		t.Fatalf("first revocation %v after Run (goal: well under 1 s)", first)
	}
	if workerOpened != due {
		t.Fatalf("the worker opened %d records, %d were due", workerOpened, due)
	}
	if _, total, _ := x.t.Count(""); total != n {
		t.Fatalf("%d leases left, want %d", total, n)
	}
}

// TestWorkerStopsPromptly: when leadership ends, revocations in flight get
// the grace period and then their context ends; Run returns, and can run
// again.
func TestWorkerStopsPromptly(t *testing.T) {
	x := newFixture(t, Options{})
	started := make(chan struct{}, 8)
	x.t.RegisterRevoker("test", RevokerFunc(func(ctx context.Context, rec *Record) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}))
	rec := x.create(t, "database/creds/app", time.Millisecond, 0, true)
	w := NewWorker(x.t, WorkerOptions{StopGrace: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no revocation started")
	}
	if err := w.Run(context.Background()); !errors.Is(err, ErrWorkerRunning) {
		t.Fatalf("a second Run: %v", err)
	}
	stopAt := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s of losing leadership")
	}
	took := time.Since(stopAt)
	t.Logf("stopped %v after its context ended (grace 100ms)", took)
	if took > time.Second {
		t.Fatalf("stopping took %v", took)
	}
	// The cancelled revocation was recorded as a failure (or left due):
	// either way the lease is still there, for the next leader.
	if _, err := x.t.Get(rec.ID); err != nil {
		t.Fatalf("the lease after an interrupted revocation: %v", err)
	}
	// It can run again (a new leadership) and revoke it.
	x.t.RegisterRevoker("test", newRecorder(nil))
	startWorker(t, w)
	mustGone(t, x.t, rec.ID, 10*time.Second)
}
