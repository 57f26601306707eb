package lease

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

// Reader reads the lease table of the node's state machine (*fsm.FSM),
// without Raft.
type Reader interface {
	LeaseGet(id string) (fsm.LeaseEntry, error)
	LeaseDue(upTo int64, limit int) ([]fsm.LeaseEntry, error)
	NextLeaseDue(after int64) (due int64, ok bool, err error)
	LeaseList(prefix, after string, limit int) (entries []fsm.LeaseEntry, more bool, err error)
	LeaseCount(group string) (inGroup, total uint64, err error)
}

// Proposer proposes a command through Raft and returns the state
// machine's result once the leader applied it; a command that failed
// deterministically returns the result and its error (the server's
// raftProposer does this). It stamps the leader time.
type Proposer interface {
	Propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error)
}

// Sealer is the server's barrier: it seals a record for a key and opens
// it only under that key.
type Sealer interface {
	SealEntry(key string, plaintext []byte) ([]byte, error)
	OpenEntry(key string, ciphertext []byte) ([]byte, error)
}

// Clock tells the leader's time.
type Clock interface {
	Now() time.Time
}

// Revoker revokes the external resource behind the leases of one kind
// (the database engine drops the role). It must be idempotent: a lease may
// be revoked again after a failover, and an intent's resource may never
// have been created. Its error text is stored in the record and shown to
// operators: it must hold no secret.
type Revoker interface {
	Revoke(ctx context.Context, rec *Record) error
}

// RevokerFunc adapts a function to Revoker.
type RevokerFunc func(ctx context.Context, rec *Record) error

// Revoke calls f.
func (f RevokerFunc) Revoke(ctx context.Context, rec *Record) error { return f(ctx, rec) }

// RenewHook extends the external resource behind a lease to expire (the
// database engine's ALTER ROLE … VALID UNTIL); Renew calls it before it
// writes the new expiry. nil: nothing to extend.
type RenewHook func(ctx context.Context, rec *Record, expire time.Time) error

// Defaults applied to zero-valued Limits and Backoff fields.
const (
	// DefaultIntentWindow is how long an unconfirmed intent may stay
	// pending before the worker revokes it.
	DefaultIntentWindow = 30 * time.Second
	// DefaultMaxTTL bounds a lease created without a MaxTTL (Vault's
	// system default).
	DefaultMaxTTL = 768 * time.Hour
	// DefaultBackoffBase is the delay before the first retry of a failed
	// revocation; each failure doubles it.
	DefaultBackoffBase = time.Second
	// DefaultBackoffMax caps the delay between retries.
	DefaultBackoffMax = 5 * time.Minute
	// DefaultBackoffJitter spreads each delay by ±20 %, so that leases
	// that failed together do not retry together.
	DefaultBackoffJitter = 0.2
	// MaxTTLLimit is the longest MaxTTL a lease may have (100 years): a
	// due time much further away no longer fits in Unix nanoseconds (past
	// the year 2262), and would wrap around to the past.
	MaxTTLLimit = 100 * 365 * 24 * time.Hour
	// MaxListPage is the most records List returns at once.
	MaxListPage = 1000
	// writeBatch is how many leases one Raft command of RevokePrefix (and
	// of the worker) names.
	writeBatch = 256
)

// Limits bound the table. The zero value means no quota and the default
// intent window.
type Limits struct {
	// MaxTotal is the most live leases in all (0: no limit).
	MaxTotal uint64
	// MaxPerGroup is the most live leases of one group, a role (0: no
	// limit).
	MaxPerGroup uint64
	// IntentWindow is how long an intent may stay unconfirmed: the time
	// the caller has to create the resource and Confirm (default
	// DefaultIntentWindow).
	IntentWindow time.Duration
}

// Backoff spaces the retries of a failed revocation: Base, doubled by
// each further failure up to Max, each spread by ±Jitter.
type Backoff struct {
	Base   time.Duration
	Max    time.Duration
	Jitter float64
}

// delay is the wait after the attempts-th failure (attempts ≥ 1).
func (b Backoff) delay(attempts int) time.Duration {
	d := b.Base
	for i := 1; i < attempts && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if b.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + b.Jitter*(2*rand.Float64()-1)))
	}
	return max(d, time.Millisecond)
}

// Options configure a Table. The zero value gives the defaults.
type Options struct {
	// Clock is the leader's clock; default the system clock.
	Clock Clock
	// Logger receives the table's and the worker's logs (never a record's
	// data); default none.
	Logger  hclog.Logger
	Limits  Limits
	Backoff Backoff
}

// Validate reports whether the options can be used.
func (o Options) Validate() error {
	switch {
	case o.Limits.IntentWindow < 0:
		return errorf(ErrInvalid, "IntentWindow is negative (%v); use 0 for the default", o.Limits.IntentWindow)
	case o.Backoff.Base < 0 || o.Backoff.Max < 0:
		return errorf(ErrInvalid, "backoff delays must not be negative")
	case o.Backoff.Base > 0 && o.Backoff.Max > 0 && o.Backoff.Max < o.Backoff.Base:
		return errorf(ErrInvalid, "backoff Max (%v) is below Base (%v)", o.Backoff.Max, o.Backoff.Base)
	case o.Backoff.Jitter < 0 || o.Backoff.Jitter >= 1:
		return errorf(ErrInvalid, "backoff Jitter %v is outside [0, 1)", o.Backoff.Jitter)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Limits.IntentWindow == 0 {
		o.Limits.IntentWindow = DefaultIntentWindow
	}
	if o.Backoff.Base == 0 {
		o.Backoff.Base = DefaultBackoffBase
	}
	if o.Backoff.Max == 0 {
		o.Backoff.Max = max(DefaultBackoffMax, o.Backoff.Base)
	}
	if o.Backoff.Jitter == 0 {
		o.Backoff.Jitter = DefaultBackoffJitter
	}
	return o
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Table is the lease table's rules over the replicated state: creating
// intents under the quotas, confirming them, renewing, revoking. Its
// writes go through Raft (so they run on the leader); its reads come from
// the node's own state machine. A Table is safe for concurrent use.
type Table struct {
	reader  Reader
	props   Proposer
	sealer  Sealer
	clock   Clock
	logger  hclog.Logger
	limits  Limits
	backoff Backoff

	revMu    sync.RWMutex
	revokers map[string]Revoker

	// wake tells the worker that a write made something due earlier than
	// sleepUntil (Unix nanoseconds; MaxInt64 while it is awake or idle).
	wake       chan struct{}
	sleepUntil atomic.Int64
}

// New returns a table over the state machine's reader, the Raft proposer
// and the barrier.
func New(reader Reader, props Proposer, sealer Sealer, opts Options) (*Table, error) {
	if reader == nil || props == nil || sealer == nil {
		return nil, errorf(ErrInvalid, "a lease table needs a reader, a proposer and a sealer")
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	t := &Table{
		reader:   reader,
		props:    props,
		sealer:   sealer,
		clock:    opts.Clock,
		logger:   opts.Logger.Named("lease"),
		limits:   opts.Limits,
		backoff:  opts.Backoff,
		revokers: map[string]Revoker{},
		wake:     make(chan struct{}, 1),
	}
	t.sleepUntil.Store(math.MaxInt64)
	return t, nil
}

// RegisterRevoker makes rv revoke the leases of kind, replacing any
// earlier one. Leases of a kind without a revoker fail their revocation
// (and are retried) until one is registered.
func (t *Table) RegisterRevoker(kind string, rv Revoker) {
	t.revMu.Lock()
	defer t.revMu.Unlock()
	t.revokers[kind] = rv
}

// revoke runs the revoker of rec's kind.
func (t *Table) revoke(ctx context.Context, rec *Record) error {
	t.revMu.RLock()
	rv := t.revokers[rec.Kind]
	t.revMu.RUnlock()
	if rv == nil {
		return errorf(ErrInvalid, "no revoker is registered for leases of kind %q (is its secrets engine configured?)", rec.Kind)
	}
	return rv.Revoke(ctx, rec.clone())
}

// notify wakes the worker when due is earlier than it plans to wake.
func (t *Table) notify(due time.Time) {
	if due.UnixNano() < t.sleepUntil.Load() {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// dueNanos is t as a due time: Unix nanoseconds, never negative.
func dueNanos(t time.Time) int64 { return max(t.UnixNano(), 0) }

// write proposes one lease write of rec, due at due.
func (t *Table) write(ctx context.Context, rec *Record, due time.Time, expect uint64, create bool) (*fsm.Result, error) {
	w, err := t.leaseWrite(rec, due, expect, create)
	if err != nil {
		return nil, err
	}
	return t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: []*fsmpb.LeaseWrite{w}})
}

// leaseWrite seals rec into a write due at due.
func (t *Table) leaseWrite(rec *Record, due time.Time, expect uint64, create bool) (*fsmpb.LeaseWrite, error) {
	ct, err := t.seal(rec)
	if err != nil {
		return nil, err
	}
	w := &fsmpb.LeaseWrite{
		Id:          rec.ID,
		Group:       rec.Group,
		DueUnixNano: dueNanos(due),
		Record:      ct,
		ExpectIndex: expect,
		CreateOnly:  create,
	}
	if create {
		w.MaxInGroup, w.MaxTotal = t.limits.MaxPerGroup, t.limits.MaxTotal
		if rec.MaxInGroup > 0 && (w.MaxInGroup == 0 || rec.MaxInGroup < w.MaxInGroup) {
			w.MaxInGroup = rec.MaxInGroup
		}
	}
	return w, nil
}

// propose proposes cmd and translates the state machine's refusals into
// this package's errors (which still match the fsm sentinels).
func (t *Table) propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error) {
	res, err := t.props.Propose(ctx, cmd)
	if err == nil && res != nil {
		err = res.Err
	}
	if err == nil {
		if res == nil {
			return nil, errors.New("lease: the proposer returned no result")
		}
		return res, nil
	}
	switch {
	case errors.Is(err, fsm.ErrQuotaExceeded):
		return res, wrapCause(ErrQuotaExceeded, err, "%s", strings.TrimPrefix(err.Error(), fsm.ErrQuotaExceeded.Error()+": "))
	case errors.Is(err, fsm.ErrCASMismatch):
		return res, wrapCause(ErrConflict, err, "%s", strings.TrimPrefix(err.Error(), fsm.ErrCASMismatch.Error()+": "))
	case errors.Is(err, fsm.ErrAlreadyExists):
		return res, wrapCause(ErrConflict, err, "%s", strings.TrimPrefix(err.Error(), fsm.ErrAlreadyExists.Error()+": "))
	}
	return res, err
}

// CreatePending records the intent to create the resource behind rec,
// under the quotas, before the resource exists. From rec it takes Path,
// Group (default Path), Kind, TTL, MaxTTL (default DefaultMaxTTL; a TTL
// above it is cut to it), Renewable, Data, DisplayName and TokenAccessor,
// and ID when set (else NewID(Path)); the times and the state are set
// here. The returned record is pending, due at the end of the intent
// window: the caller must create the resource before its Due (use it as
// the creation's deadline, with a margin) and then Confirm with its Index,
// or Abandon it when the creation failed cleanly. An intent neither
// confirmed nor abandoned is revoked by whichever leader finds it due.
func (t *Table) CreatePending(ctx context.Context, rec *Record) (*Record, error) {
	if rec == nil {
		return nil, errorf(ErrInvalid, "no record")
	}
	r := rec.clone()
	if err := validatePath(r.Path); err != nil {
		return nil, err
	}
	if r.ID == "" {
		id, err := NewID(r.Path)
		if err != nil {
			return nil, err
		}
		r.ID = id
	}
	if r.Group == "" {
		r.Group = r.Path
	}
	switch {
	case !strings.HasPrefix(r.ID, r.Path+"/"):
		return nil, errorf(ErrInvalid, "lease id %q is not under its path %q", r.ID, r.Path)
	case len(r.ID) > fsm.MaxLeaseIDLen:
		return nil, errorf(ErrInvalid, "lease id longer than %d bytes", fsm.MaxLeaseIDLen)
	case len(r.Group) > fsm.MaxLeaseGroupLen:
		return nil, errorf(ErrInvalid, "lease group longer than %d bytes", fsm.MaxLeaseGroupLen)
	case r.Kind == "":
		return nil, errorf(ErrInvalid, "lease %q has no kind (which revoker revokes it)", r.ID)
	case r.TTL <= 0:
		return nil, errorf(ErrInvalid, "lease %q: the TTL must be positive, not %v", r.ID, r.TTL)
	case r.MaxTTL < 0:
		return nil, errorf(ErrInvalid, "lease %q: the max TTL must not be negative", r.ID)
	case r.MaxTTL > MaxTTLLimit:
		return nil, errorf(ErrInvalid, "lease %q: the max TTL %v is longer than 100 years", r.ID, r.MaxTTL)
	}
	if r.MaxTTL == 0 {
		r.MaxTTL = DefaultMaxTTL
	}
	r.TTL = min(r.TTL, r.MaxTTL)
	now := t.clock.Now().UTC()
	r.State = StatePending
	r.IssueTime = now
	r.ExpireTime = now.Add(r.TTL)
	r.MaxExpireTime = now.Add(r.MaxTTL)
	r.LastRenewal = time.Time{}
	r.Attempts, r.LastError, r.LastAttempt = 0, "", time.Time{}
	due := now.Add(t.limits.IntentWindow)
	res, err := t.write(ctx, r, due, 0, true)
	if err != nil {
		return nil, err
	}
	r.Due, r.Index = time.Unix(0, dueNanos(due)).UTC(), res.Index
	t.notify(due)
	return r, nil
}

// Confirm makes the intent id, written at expectIndex (the Index
// CreatePending returned; 0: whatever is stored), an active lease due at
// its expiry. ErrIntentLost means the intent was taken for revocation
// (its window passed, or it was revoked): the caller must undo the
// creation.
func (t *Table) Confirm(ctx context.Context, id string, expectIndex uint64) (*Record, error) {
	rec, err := t.Get(id)
	if errors.Is(err, ErrNotFound) {
		return nil, wrapCause(ErrIntentLost, err, "lease %q is gone", id)
	}
	if err != nil {
		return nil, err
	}
	if expectIndex != 0 && rec.Index != expectIndex {
		return nil, errorf(ErrIntentLost, "lease %q was written again since its intent (index %d, not %d)", id, rec.Index, expectIndex)
	}
	if rec.State != StatePending {
		return nil, errorf(ErrIntentLost, "lease %q is %s", id, rec.State)
	}
	rec.State = StateActive
	res, err := t.write(ctx, rec, rec.ExpireTime, rec.Index, false)
	if errors.Is(err, ErrConflict) {
		return nil, wrapCause(ErrIntentLost, err, "lease %q changed while it was confirmed", id)
	}
	if err != nil {
		return nil, err
	}
	rec.Due, rec.Index = time.Unix(0, dueNanos(rec.ExpireTime)).UTC(), res.Index
	t.notify(rec.ExpireTime)
	return rec, nil
}

// Abandon removes the intent id after a creation that failed cleanly
// (nothing was created). An active lease is refused: revoke it instead.
// An absent lease is not an error.
func (t *Table) Abandon(ctx context.Context, id string) error {
	for range 3 {
		rec, err := t.Get(id)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if rec.State == StateActive {
			return errorf(ErrInvalid, "lease %q is confirmed: revoke it instead of abandoning it", id)
		}
		_, err = t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_DELETE,
			LeaseDeletes: []*fsmpb.LeaseDelete{{Id: id, ExpectIndex: rec.Index}}})
		if !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return errorf(ErrConflict, "lease %q kept changing while it was abandoned", id)
}

// Get returns the lease id.
func (t *Table) Get(id string) (*Record, error) {
	e, err := t.reader.LeaseGet(id)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, wrapCause(ErrNotFound, err, "no lease %q", id)
	}
	if err != nil {
		return nil, err
	}
	return t.open(e)
}

// Count returns the live leases of group and in all.
func (t *Table) Count(group string) (inGroup, total uint64, err error) {
	return t.reader.LeaseCount(group)
}

// List returns the leases whose id starts with prefix, in id order, after
// the id `after` (exclusive; "" from the start), at most limit of them
// (limit ≤ 0 or above MaxListPage: MaxListPage). failedOnly keeps the
// leases whose revocation failed (Attempts > 0, with LastError). more
// reports that leases may follow: list again after the last id returned.
// A record that cannot be opened is listed with only its id, group, due
// time and index, and the reason in LastError (and counts as failed).
// Memory is bounded by the page.
func (t *Table) List(prefix, after string, limit int, failedOnly bool) (recs []*Record, more bool, err error) {
	if limit <= 0 || limit > MaxListPage {
		limit = MaxListPage
	}
	cursor := after
	for {
		page, pageMore, err := t.reader.LeaseList(prefix, cursor, writeBatch)
		if err != nil {
			return nil, false, err
		}
		for i, e := range page {
			rec, err := t.open(e)
			if err != nil {
				rec = &Record{ID: e.ID, Group: e.Group, Due: time.Unix(0, e.DueUnixNano).UTC(), Index: e.Index,
					Attempts: 1, LastError: err.Error()}
			}
			if failedOnly && !rec.Failed() {
				continue
			}
			recs = append(recs, rec)
			if len(recs) == limit {
				return recs, i < len(page)-1 || pageMore, nil
			}
		}
		if !pageMore || len(page) == 0 {
			return recs, false, nil
		}
		cursor = page[len(page)-1].ID
	}
}

// Renew extends the lease id, by Vault's rules: only an active, renewable
// lease that has not expired; the new expiry is now + increment (0: the
// lease's TTL), capped by its MaxExpireTime (capped reports it). hook, when
// set, extends the external resource first; the write then fails with
// ErrConflict if the lease changed meanwhile.
func (t *Table) Renew(ctx context.Context, id string, increment time.Duration, hook RenewHook) (rec *Record, capped bool, err error) {
	if increment < 0 {
		return nil, false, errorf(ErrInvalid, "the increment must not be negative, not %v", increment)
	}
	if rec, err = t.Get(id); err != nil {
		return nil, false, err
	}
	now := t.clock.Now().UTC()
	switch {
	case rec.State != StateActive:
		return nil, false, errorf(ErrNotActive, "lease %q is %s", id, rec.State)
	case !rec.Renewable:
		return nil, false, errorf(ErrNotRenewable, "lease %q", id)
	case !now.Before(rec.ExpireTime):
		return nil, false, errorf(ErrExpired, "lease %q expired at %s", id, rec.ExpireTime.Format(time.RFC3339))
	}
	if increment == 0 {
		increment = rec.TTL
	}
	expire := now.Add(increment)
	if expire.After(rec.MaxExpireTime) {
		expire, capped = rec.MaxExpireTime, true
	}
	if !expire.After(now) {
		return nil, false, errorf(ErrExpired, "lease %q reached its max TTL at %s", id, rec.MaxExpireTime.Format(time.RFC3339))
	}
	if hook != nil {
		if err := hook(ctx, rec.clone(), expire); err != nil {
			return nil, false, err
		}
	}
	rec.ExpireTime, rec.LastRenewal = expire, now
	res, err := t.write(ctx, rec, expire, rec.Index, false)
	if err != nil {
		return nil, false, err
	}
	rec.Due, rec.Index = time.Unix(0, dueNanos(expire)).UTC(), res.Index
	return rec, capped, nil
}

// Revoke revokes the lease id now: the revoker of its kind runs, and on
// success the lease is removed. A pending intent is first marked revoking,
// so that its creator's Confirm fails. When the revoker fails, the lease
// is marked revoking with the error and a retry time, the worker takes
// it, and Revoke returns ErrRevokeFailed.
func (t *Table) Revoke(ctx context.Context, id string) error {
	rec, err := t.Get(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.State == StatePending {
		if rec, err = t.claim(ctx, rec); err != nil {
			return err
		}
	}
	rerr := t.revoke(ctx, rec)
	if rerr == nil {
		_, err := t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_DELETE, LeaseDeletes: []*fsmpb.LeaseDelete{{Id: id}}})
		return err
	}
	t.logger.Warn("revocation failed; the worker retries it", "lease", id, "attempts", rec.Attempts+1, "error", rerr)
	due, err := t.recordFailure(ctx, rec, rerr)
	if err != nil && !errors.Is(err, ErrConflict) {
		return err
	}
	if err == nil {
		t.notify(due)
	}
	return wrapCause(ErrRevokeFailed, rerr, "lease %q: %v", id, rerr)
}

// claim marks a pending intent revoking (due after one backoff step, the
// time for the revocation to run), so that its creator can no longer
// confirm it.
func (t *Table) claim(ctx context.Context, rec *Record) (*Record, error) {
	c := rec.clone()
	c.State = StateRevoking
	due := t.clock.Now().Add(t.backoff.Base)
	res, err := t.write(ctx, c, due, rec.Index, false)
	if err != nil {
		return nil, err
	}
	c.Due, c.Index = time.Unix(0, dueNanos(due)).UTC(), res.Index
	return c, nil
}

// failureWrite is rec after a failed revocation: revoking, one more
// attempt, the error, due after the backoff.
func (t *Table) failureWrite(rec *Record, rerr error) (*fsmpb.LeaseWrite, time.Time, error) {
	f := rec.clone()
	now := t.clock.Now().UTC()
	f.State = StateRevoking
	f.Attempts++
	f.LastError = rerr.Error()
	f.LastAttempt = now
	due := now.Add(t.backoff.delay(f.Attempts))
	w, err := t.leaseWrite(f, due, rec.Index, false)
	return w, due, err
}

// recordFailure writes rec's failed revocation.
func (t *Table) recordFailure(ctx context.Context, rec *Record, rerr error) (time.Time, error) {
	w, due, err := t.failureWrite(rec, rerr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: []*fsmpb.LeaseWrite{w}})
	return due, err
}

// RevokePrefix makes every lease whose id is under prefix revoking and due
// now, so that the worker revokes them, and returns how many it found
// (those already due and revoking included). A prefix without a trailing
// slash gets one, as in Vault: "database/creds/app" does not reach
// "database/creds/app2/…". It writes in batches of a few hundred leases,
// one Raft command each, reading one page at a time.
func (t *Table) RevokePrefix(ctx context.Context, prefix string) (int, error) {
	if strings.Trim(prefix, "/") == "" {
		return 0, errorf(ErrInvalid, "name a prefix to revoke (an empty one would revoke every lease)")
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	now := t.clock.Now().UTC()
	count, after := 0, ""
	defer t.notify(now)
	for {
		page, more, err := t.reader.LeaseList(prefix, after, writeBatch)
		if err != nil {
			return count, err
		}
		var writes []*fsmpb.LeaseWrite
		var recs []*Record
		for _, e := range page {
			rec, err := t.open(e)
			if err != nil {
				return count, err
			}
			count++
			if rec.State == StateRevoking && !rec.Due.After(now) {
				continue
			}
			recs = append(recs, rec)
			r := rec.clone()
			r.State = StateRevoking
			w, err := t.leaseWrite(r, now, rec.Index, false)
			if err != nil {
				return count, err
			}
			writes = append(writes, w)
		}
		if len(writes) > 0 {
			_, err := t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: writes})
			if errors.Is(err, ErrConflict) {
				// One of the page changed meanwhile: one at a time.
				err = t.revokeEach(ctx, recs, now)
			}
			if err != nil {
				return count, err
			}
		}
		if !more || len(page) == 0 {
			return count, nil
		}
		after = page[len(page)-1].ID
	}
}

// ForgetPrefix removes every lease under prefix (a folder, as for
// RevokePrefix) without revoking what it stands for: Vault's revoke-force,
// for leases whose revocation can never succeed (a database that is gone,
// statements that fail for good). Whatever they stood for stays; the
// caller says so. It returns the leases removed.
func (t *Table) ForgetPrefix(ctx context.Context, prefix string) (int, error) {
	if strings.Trim(prefix, "/") == "" {
		return 0, errorf(ErrInvalid, "name a prefix to forget (an empty one would forget every lease)")
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	count := 0
	for {
		// Each page is deleted, so the next one starts from the prefix again.
		page, more, err := t.reader.LeaseList(prefix, "", writeBatch)
		if err != nil {
			return count, err
		}
		if len(page) == 0 {
			return count, nil
		}
		dels := make([]*fsmpb.LeaseDelete, 0, len(page))
		for _, e := range page {
			dels = append(dels, &fsmpb.LeaseDelete{Id: e.ID})
		}
		if _, err := t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_DELETE, LeaseDeletes: dels}); err != nil {
			return count, err
		}
		count += len(page)
		t.logger.Warn("leases forgotten without revocation", "prefix", prefix, "count", len(page))
		if !more {
			return count, nil
		}
	}
}

// revokeEach makes each lease of recs revoking and due at now, reading
// it again when it changed; a lease that is gone is done.
func (t *Table) revokeEach(ctx context.Context, recs []*Record, now time.Time) error {
	for _, rec := range recs {
		for attempt := 0; ; attempt++ {
			r := rec.clone()
			r.State = StateRevoking
			_, err := t.write(ctx, r, now, rec.Index, false)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrConflict) || attempt == 3 {
				return err
			}
			if rec, err = t.Get(rec.ID); errors.Is(err, ErrNotFound) {
				break
			} else if err != nil {
				return err
			}
		}
	}
	return nil
}
