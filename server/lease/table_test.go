package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

// TestLifecycle: an intent, its confirmation, lookups, renewals by Vault's
// rules, and a revocation, over the real state machine and barrier.
func TestLifecycle(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	x := newFixture(t, Options{Clock: clock, Limits: Limits{IntentWindow: 20 * time.Second}})
	ctx := context.Background()
	rv := newRecorder(nil)
	x.t.RegisterRevoker("database", rv)

	p, err := x.t.CreatePending(ctx, &Record{Path: "database/creds/app", Kind: "database", TTL: time.Hour, MaxTTL: 3 * time.Hour,
		Renewable: true, Data: []byte("drop-me"), DisplayName: "token-app"})
	if err != nil {
		t.Fatal(err)
	}
	start := clock.Now()
	if !strings.HasPrefix(p.ID, "database/creds/app/") || len(p.ID) != len("database/creds/app/")+26 {
		t.Fatalf("lease id %q", p.ID)
	}
	if p.State != StatePending || p.Group != "database/creds/app" || !p.Due.Equal(start.Add(20*time.Second)) ||
		!p.ExpireTime.Equal(start.Add(time.Hour)) || !p.MaxExpireTime.Equal(start.Add(3*time.Hour)) || p.Index == 0 {
		t.Fatalf("pending record: %+v", p)
	}
	got, err := x.t.Get(p.ID)
	if err != nil || got.State != StatePending || string(got.Data) != "drop-me" || got.Index != p.Index || !got.Due.Equal(p.Due) {
		t.Fatalf("Get of the intent: %+v, %v", got, err)
	}
	// An intent cannot be renewed.
	if _, _, err := x.t.Renew(ctx, p.ID, 0, nil); !errors.Is(err, ErrNotActive) {
		t.Fatalf("renew of an intent: %v", err)
	}

	a, err := x.t.Confirm(ctx, p.ID, p.Index)
	if err != nil || a.State != StateActive || !a.Due.Equal(a.ExpireTime) || a.Index <= p.Index {
		t.Fatalf("Confirm: %+v, %v", a, err)
	}
	// Confirming twice: the intent is gone.
	if _, err := x.t.Confirm(ctx, p.ID, p.Index); !errors.Is(err, ErrIntentLost) {
		t.Fatalf("second Confirm: %v", err)
	}
	if e, _ := x.f.LeaseGet(p.ID); e.DueUnixNano != a.ExpireTime.UnixNano() {
		t.Fatalf("the due index holds %d, the expiry is %v", e.DueUnixNano, a.ExpireTime)
	}

	// Renew: the hook runs first with the new expiry; the default
	// increment is the TTL.
	clock.Advance(30 * time.Minute)
	var hooked time.Time
	hook := func(_ context.Context, rec *Record, exp time.Time) error {
		hooked = exp
		return nil
	}
	r, capped, err := x.t.Renew(ctx, p.ID, 0, hook)
	if err != nil || capped || !r.ExpireTime.Equal(clock.Now().Add(time.Hour)) || !hooked.Equal(r.ExpireTime) || !r.LastRenewal.Equal(clock.Now()) {
		t.Fatalf("Renew: %+v capped=%v %v (hook saw %v)", r, capped, err, hooked)
	}
	// A hook that fails leaves the lease as it was.
	if _, _, err := x.t.Renew(ctx, p.ID, time.Hour, func(context.Context, *Record, time.Time) error {
		return errors.New("database unreachable")
	}); err == nil || !strings.Contains(err.Error(), "database unreachable") {
		t.Fatalf("renew with a failing hook: %v", err)
	}
	if g, _ := x.t.Get(p.ID); !g.ExpireTime.Equal(r.ExpireTime) {
		t.Fatal("a failed hook changed the lease")
	}
	// Capped by the max TTL.
	clock.Advance(50 * time.Minute)
	r, capped, err = x.t.Renew(ctx, p.ID, 5*time.Hour, nil)
	if err != nil || !capped || !r.ExpireTime.Equal(start.Add(3*time.Hour)) {
		t.Fatalf("renew past the max TTL: %+v capped=%v %v", r, capped, err)
	}
	// A stale copy cannot overwrite a newer write.
	if _, err := x.t.write(ctx, a, a.ExpireTime, a.Index, false); !errors.Is(err, ErrConflict) || !errors.Is(err, fsm.ErrCASMismatch) {
		t.Fatalf("write with a stale index: %v", err)
	}
	// Expired (at the max TTL).
	clock.Advance(time.Hour + 41*time.Minute)
	if _, _, err := x.t.Renew(ctx, p.ID, 0, nil); !errors.Is(err, ErrExpired) {
		t.Fatalf("renew after expiry: %v", err)
	}

	if err := x.t.Revoke(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if calls := rv.callsFor(p.ID); len(calls) != 1 || calls[0].state != StateActive {
		t.Fatalf("revoker calls: %+v", calls)
	}
	if _, err := x.t.Get(p.ID); !errors.Is(err, ErrNotFound) || !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("Get after revoke: %v", err)
	}
	if err := x.t.Revoke(ctx, p.ID); err != nil {
		t.Fatalf("revoking a revoked lease: %v", err)
	}
	if _, total, _ := x.t.Count(""); total != 0 {
		t.Fatalf("%d leases left", total)
	}
}

func TestNotRenewableAndValidation(t *testing.T) {
	x := newFixture(t, Options{})
	ctx := context.Background()
	rec := x.create(t, "database/creds/ro", time.Minute, 0, false)
	if rec.MaxTTL != DefaultMaxTTL {
		t.Fatalf("default max TTL %v", rec.MaxTTL)
	}
	if _, _, err := x.t.Renew(ctx, rec.ID, 0, nil); !errors.Is(err, ErrNotRenewable) {
		t.Fatalf("renew of a non-renewable lease: %v", err)
	}
	if _, _, err := x.t.Renew(ctx, "database/creds/ro/nope", 0, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("renew of nothing: %v", err)
	}
	for name, r := range map[string]*Record{
		"no path":         {Kind: "k", TTL: time.Second},
		"bad path":        {Path: "/a", Kind: "k", TTL: time.Second},
		"no kind":         {Path: "a", TTL: time.Second},
		"no ttl":          {Path: "a", Kind: "k"},
		"foreign id":      {ID: "b/1", Path: "a", Kind: "k", TTL: time.Second},
		"negative maxttl": {Path: "a", Kind: "k", TTL: time.Second, MaxTTL: -1},
		// Due past the year 2262: the due index's nanoseconds would wrap
		// to the past, and the lease would fall due at once.
		"maxttl of 250 years": {Path: "a", Kind: "k", TTL: 250 * 365 * 24 * time.Hour, MaxTTL: 250 * 365 * 24 * time.Hour},
	} {
		if _, err := x.t.CreatePending(ctx, r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A TTL above the max TTL is cut to it.
	p, err := x.t.CreatePending(ctx, &Record{Path: "a", Kind: "k", TTL: time.Hour, MaxTTL: time.Minute})
	if err != nil || p.TTL != time.Minute || !p.ExpireTime.Equal(p.MaxExpireTime) {
		t.Fatalf("TTL above max: %+v %v", p, err)
	}
	// Abandon removes an intent, refuses an active lease.
	if err := x.t.Abandon(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := x.t.Get(p.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("abandoned intent: %v", err)
	}
	if err := x.t.Abandon(ctx, rec.ID); !errors.Is(err, ErrInvalid) {
		t.Fatalf("abandon of an active lease: %v", err)
	}
	if _, err := x.t.RevokePrefix(ctx, "/"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("revoke of everything: %v", err)
	}
}

// TestRecordIsBoundToItsID: a sealed record copied to another id (a forged
// or misplaced entry) does not open.
func TestRecordIsBoundToItsID(t *testing.T) {
	x := newFixture(t, Options{})
	rec := x.create(t, "database/creds/app", time.Minute, 0, true)
	e, err := x.f.LeaseGet(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	other := "database/creds/app/other"
	if _, err := x.props.Propose(context.Background(), &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT,
		LeaseWrites: []*fsmpb.LeaseWrite{{Id: other, Group: e.Group, DueUnixNano: e.DueUnixNano, Record: e.Record}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := x.t.Get(other); err == nil {
		t.Fatal("a record moved to another id opened")
	}
	// Listing shows it as failed, with the reason.
	recs, _, err := x.t.List("database/creds/app/", "", 0, true)
	if err != nil || len(recs) != 1 || recs[0].ID != other || !strings.Contains(recs[0].LastError, "open record") {
		t.Fatalf("failed list: %+v %v", recs, err)
	}
}

// TestConfirmAfterRevokeOfIntent: a revoke of an intent (or the worker
// taking it) makes a late Confirm fail, so the creator undoes its work.
func TestConfirmAfterRevokeOfIntent(t *testing.T) {
	x := newFixture(t, Options{Backoff: Backoff{Base: time.Hour}})
	ctx := context.Background()
	rv := newRecorder(func(*Record, int) error { return errors.New("database down") })
	x.t.RegisterRevoker("test", rv)
	p, err := x.t.CreatePending(ctx, &Record{Path: "db/creds/a", Kind: "test", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	err = x.t.Revoke(ctx, p.ID)
	if !errors.Is(err, ErrRevokeFailed) || !strings.Contains(err.Error(), "database down") {
		t.Fatalf("Revoke with a failing revoker: %v", err)
	}
	if calls := rv.callsFor(p.ID); len(calls) != 1 || calls[0].state != StateRevoking {
		t.Fatalf("the revoker saw %+v, want one call on a revoking lease", calls)
	}
	if _, err := x.t.Confirm(ctx, p.ID, p.Index); !errors.Is(err, ErrIntentLost) {
		t.Fatalf("Confirm after the intent was taken: %v", err)
	}
	if _, err := x.t.Confirm(ctx, p.ID, 0); !errors.Is(err, ErrIntentLost) {
		t.Fatalf("Confirm of a revoking lease: %v", err)
	}
	g, err := x.t.Get(p.ID)
	if err != nil || g.State != StateRevoking || g.Attempts != 1 || g.LastError != "database down" || g.LastAttempt.IsZero() {
		t.Fatalf("after a failed revoke: %+v %v", g, err)
	}
	if _, _, err := x.t.Renew(ctx, p.ID, 0, nil); !errors.Is(err, ErrNotActive) {
		t.Fatalf("renew of a revoking lease: %v", err)
	}
	failed, more, err := x.t.List("", "", 0, true)
	if err != nil || more || len(failed) != 1 || failed[0].ID != p.ID || failed[0].LastError != "database down" {
		t.Fatalf("failed list: %+v %v %v", failed, more, err)
	}
}

// TestQuotaExactUnderConcurrentCreation: many goroutines create intents at
// once; exactly the quota's worth succeed, the others get a clear error.
func TestQuotaExactUnderConcurrentCreation(t *testing.T) {
	const perGroup, total = 30, 50
	x := newFixture(t, Options{Limits: Limits{MaxPerGroup: perGroup, MaxTotal: total}})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := map[string]int{}
	var refusals []error
	for w := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				role := []string{"a", "b"}[(w+i)%2]
				_, err := x.t.CreatePending(context.Background(), &Record{Path: "database/creds/" + role, Group: role, Kind: "test", TTL: time.Minute})
				mu.Lock()
				if err == nil {
					ok[role]++
				} else {
					refusals = append(refusals, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok["a"]+ok["b"] != total || ok["a"] > perGroup || ok["b"] > perGroup {
		t.Fatalf("created %v, quotas %d per group and %d in all", ok, perGroup, total)
	}
	for _, err := range refusals {
		if !errors.Is(err, ErrQuotaExceeded) || !errors.Is(err, fsm.ErrQuotaExceeded) ||
			!(strings.Contains(err.Error(), "max per group") || strings.Contains(err.Error(), "max total")) {
			t.Fatalf("refusal: %v", err)
		}
	}
	t.Logf("a refusal reads: %v", refusals[0])
	for role, n := range ok {
		in, all, err := x.t.Count(role)
		if err != nil || int(in) != n || all != total {
			t.Fatalf("Count(%s) = %d, %d, %v", role, in, all, err)
		}
	}
}

// TestListPages: List pages through a prefix in id order, and the failed
// listing keeps only failing leases.
func TestListPages(t *testing.T) {
	x := newFixture(t, Options{Backoff: Backoff{Base: time.Hour}})
	ctx := context.Background()
	var ids []string
	for i := range 30 {
		ids = append(ids, x.create(t, fmt.Sprintf("db/creds/r%d", i%3), time.Hour, 0, true).ID)
	}
	x.t.RegisterRevoker("test", RevokerFunc(func(context.Context, *Record) error { return errors.New("refused") }))
	var failing []string
	for _, id := range ids[:4] {
		if err := x.t.Revoke(ctx, id); !errors.Is(err, ErrRevokeFailed) {
			t.Fatal(err)
		}
		failing = append(failing, id)
	}
	var got []string
	after := ""
	for {
		page, more, err := x.t.List("db/creds/r1/", after, 4, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, r.ID)
		}
		if !more {
			break
		}
		after = page[len(page)-1].ID
	}
	if len(got) != 10 {
		t.Fatalf("listed %d leases of r1, want 10", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i-1] >= got[i] {
			t.Fatalf("not in id order: %v", got)
		}
	}
	var failed []string
	after = ""
	for {
		page, more, err := x.t.List("db/", after, 1, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			if r.Attempts != 1 || r.LastError != "refused" {
				t.Fatalf("failed lease %+v", r)
			}
			failed = append(failed, r.ID)
		}
		if !more {
			break
		}
		after = page[len(page)-1].ID
	}
	if len(failed) != len(failing) {
		t.Fatalf("failed list %v, want %v", failed, failing)
	}
}

// TestForgetPrefix: revoke-force removes the leases under the folder
// prefix, more than one write batch of them, without calling any
// revoker, and leaves the neighbouring folder alone; an empty prefix is
// refused.
func TestForgetPrefix(t *testing.T) {
	x := newFixture(t, Options{})
	rv := newRecorder(nil)
	x.t.RegisterRevoker("test", rv)
	const n = writeBatch + 7
	for range n {
		x.create(t, "database/creds/app", time.Hour, 0, true)
	}
	keep := x.create(t, "database/creds/app2", time.Hour, 0, true)
	ctx := context.Background()
	if _, err := x.t.ForgetPrefix(ctx, "/"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ForgetPrefix(/) = %v, want ErrInvalid", err)
	}
	count, err := x.t.ForgetPrefix(ctx, "database/creds/app")
	if err != nil || count != n {
		t.Fatalf("ForgetPrefix = %d, %v; want %d", count, err, n)
	}
	if recs, _, err := x.t.List("database/creds/app/", "", 0, false); err != nil || len(recs) != 0 {
		t.Fatalf("leases left under the prefix: %d, %v", len(recs), err)
	}
	if _, err := x.t.Get(keep.ID); err != nil {
		t.Fatalf("the neighbouring folder's lease: %v", err)
	}
	if len(rv.calls) != 0 {
		t.Fatalf("ForgetPrefix called the revoker %d times", len(rv.calls))
	}
	if _, total, err := x.t.Count(""); err != nil || total != 1 {
		t.Fatalf("live leases after ForgetPrefix: %d, %v; want 1", total, err)
	}
}
