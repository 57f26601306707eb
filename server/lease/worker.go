package lease

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

// Defaults applied to zero-valued WorkerOptions fields.
const (
	// DefaultConcurrency is how many revocations run at once.
	DefaultConcurrency = 16
	// DefaultRevokeTimeout bounds one revocation.
	DefaultRevokeTimeout = 30 * time.Second
	// DefaultStopGrace is how long revocations in flight may go on after
	// the worker's context ends (leadership lost) before they are
	// cancelled.
	DefaultStopGrace = 2 * time.Second
	// DefaultMaxIdle is the longest the worker sleeps without looking at
	// the due index. Every write of the Table wakes it when it makes
	// something due earlier, so this only bounds the delay after a change
	// of the state it was not told about (a snapshot restored under it).
	DefaultMaxIdle = time.Minute
)

// WorkerOptions configure a Worker. The zero value gives the defaults.
type WorkerOptions struct {
	// Concurrency is how many revocations run at once.
	Concurrency int
	// RevokeTimeout bounds one revocation.
	RevokeTimeout time.Duration
	// StopGrace is how long revocations in flight may finish after Run's
	// context ended.
	StopGrace time.Duration
	// MaxIdle is the longest sleep between two looks at the due index.
	MaxIdle time.Duration
	// Logger; default the Table's.
	Logger hclog.Logger
}

func (o WorkerOptions) withDefaults(t *Table) WorkerOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.RevokeTimeout <= 0 {
		o.RevokeTimeout = DefaultRevokeTimeout
	}
	if o.StopGrace <= 0 {
		o.StopGrace = DefaultStopGrace
	}
	if o.MaxIdle <= 0 {
		o.MaxIdle = DefaultMaxIdle
	}
	if o.Logger == nil {
		o.Logger = t.logger
	}
	return o
}

// Worker is the leader's expiry worker: it revokes the leases that are
// due — intents past their window and leases past their expiry alike —
// through the Revoker of each lease's kind. It loads nothing: each round
// reads the first due entries of the state machine's due index, so a new
// leader's first revocation follows its Run at once, whatever the size of
// the table. Between rounds it sleeps until the next due time or until a
// write of the Table makes something due earlier.
//
// Successes are removed in batches, one Raft command per batch, without
// a condition (the resource is gone, so must the lease be). A failure
// marks the lease revoking with one more attempt, the error and a retry
// time after a jittered exponential backoff, written only if the lease
// has not changed meanwhile. An intent is first marked revoking, so that a
// late Confirm fails instead of confirming a lease whose resource is
// being dropped. Nothing is revoked before its due time by the leader's
// clock.
type Worker struct {
	t    *Table
	opts WorkerOptions
	log  hclog.Logger

	running atomic.Bool

	revoked  atomic.Uint64
	failures atomic.Uint64
	retrying atomic.Int64
	inFlight atomic.Int64
}

// WorkerStats are the worker's counters, for metrics.
type WorkerStats struct {
	// Revoked counts leases revoked and removed.
	Revoked uint64
	// Failures counts failed revocation attempts.
	Failures uint64
	// Retrying is the leases whose last revocation by this worker failed
	// and that it has not revoked since. A new leader's worker starts at
	// 0: List with failedOnly is the cluster's whole truth.
	Retrying int64
	// InFlight is the revocations running now.
	InFlight int64
}

// NewWorker returns a worker for t. Run it while the node is a ready
// leader.
func NewWorker(t *Table, opts WorkerOptions) *Worker {
	opts = opts.withDefaults(t)
	return &Worker{t: t, opts: opts, log: opts.Logger.Named("expiry")}
}

// Stats returns the worker's counters.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{
		Revoked:  w.revoked.Load(),
		Failures: w.failures.Load(),
		Retrying: max(w.retrying.Load(), 0),
		InFlight: w.inFlight.Load(),
	}
}

// Wake makes the worker look at the due index now.
func (w *Worker) Wake() {
	select {
	case w.t.wake <- struct{}{}:
	default:
	}
}

// outcome is what a revocation leaves to write.
type outcome struct {
	entry fsm.LeaseEntry
	rec   *Record
	err   error // nil: revoked
}

// run is the state of one Run.
type run struct {
	w       *Worker
	base    context.Context // revocations' context: outlives Run's by StopGrace
	signal  chan struct{}   // a slot or an id was released
	results chan outcome

	mu     sync.Mutex
	held   map[string]time.Time // ids being revoked or written (zero), or deferred until then
	active int
	paused time.Time // after a failed read or write: no new round before then
}

// Run revokes due leases until ctx ends (leadership lost), then lets the
// revocations in flight finish within StopGrace and returns ctx's error.
// Call it once the node is a ready leader (after its Raft barrier); it
// may be called again after it returned.
func (w *Worker) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return ErrWorkerRunning
	}
	defer w.running.Store(false)

	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	r := &run{
		w:       w,
		base:    base,
		signal:  make(chan struct{}, 1),
		results: make(chan outcome, w.opts.Concurrency),
		held:    map[string]time.Time{},
	}
	var revokers, committer sync.WaitGroup
	committer.Add(1)
	go func() {
		defer committer.Done()
		r.commit()
	}()

	w.log.Debug("expiry worker started")
	r.loop(ctx, &revokers)

	// Leadership is over: no new round; revocations in flight get
	// StopGrace, then their context ends.
	grace := time.AfterFunc(w.opts.StopGrace, cancelBase)
	revokers.Wait()
	close(r.results)
	committer.Wait()
	grace.Stop()
	w.t.sleepUntil.Store(math.MaxInt64)
	w.log.Debug("expiry worker stopped")
	return ctx.Err()
}

// loop runs rounds until ctx ends.
func (r *run) loop(ctx context.Context, revokers *sync.WaitGroup) {
	w := r.w
	t := w.t
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Awake: any write wakes the next sleep, so none made between the
		// reads below and the sleep is missed.
		t.sleepUntil.Store(math.MaxInt64)
		if ctx.Err() != nil {
			return
		}
		wakeAt := r.round(revokers)
		now := t.clock.Now()
		if wakeAt.IsZero() || wakeAt.After(now.Add(w.opts.MaxIdle)) {
			wakeAt = now.Add(w.opts.MaxIdle)
		}
		t.sleepUntil.Store(wakeAt.UnixNano())
		timer.Reset(max(wakeAt.Sub(now), 0))
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		case <-r.signal:
		case <-timer.C:
		}
	}
}

// round starts the revocation of every due lease it has a slot for and
// returns when to look again: the next due time or deferral (zero: only
// when a slot frees or a write wakes it).
func (r *run) round(revokers *sync.WaitGroup) time.Time {
	w := r.w
	t := w.t
	now := t.clock.Now()

	// The lock is held from the read of the due index until every id read
	// is marked: an outcome is released (under the lock) only after its
	// write applied, so an entry this read returns is either still held
	// or current — never one revoked and removed meanwhile.
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Before(r.paused) {
		return r.paused
	}
	var next time.Time
	for id, until := range r.held {
		if until.IsZero() {
			continue
		}
		if !until.After(now) {
			delete(r.held, id)
		} else if next.IsZero() || until.Before(next) {
			next = until
		}
	}
	free := w.opts.Concurrency - r.active
	if free <= 0 {
		return next // a slot frees: signal
	}
	limit := free + len(r.held)
	due, err := t.reader.LeaseDue(dueNanos(now), limit)
	if err != nil {
		w.log.Error("cannot read the due leases; trying again shortly", "error", err)
		return r.pauseLocked(now)
	}
	started := 0
	for _, e := range due {
		if started == free {
			break
		}
		if _, busy := r.held[e.ID]; busy {
			continue
		}
		r.held[e.ID] = time.Time{}
		r.active++
		started++
		w.inFlight.Add(1)
		revokers.Add(1)
		go func() {
			defer revokers.Done()
			r.revokeOne(e)
		}()
	}
	if started == free || len(due) == limit {
		// No slot left, or more may be due than this round saw: the
		// next round comes when a slot frees (signal).
		return next
	}
	// Everything due now is started or held: sleep until the next due
	// time after now.
	at, ok, err := t.reader.NextLeaseDue(dueNanos(now))
	if err != nil {
		w.log.Error("cannot read the next due time; trying again shortly", "error", err)
		return r.pauseLocked(now)
	}
	if ok {
		if d := time.Unix(0, at); next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next
}

// pause holds new rounds for one backoff step after a failed read or
// write of the state (a node shutting down, a storage failure).
func (r *run) pause(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pauseLocked(now)
}

func (r *run) pauseLocked(now time.Time) time.Time {
	r.paused = now.Add(r.w.t.backoff.Base)
	return r.paused
}

// releaseSlot frees the slot of a finished revocation.
func (r *run) releaseSlot() {
	r.mu.Lock()
	r.active--
	r.mu.Unlock()
	r.w.inFlight.Add(-1)
	r.notify()
}

// releaseID lets the next rounds see id again (after its outcome was
// written), or from until on (a deferral).
func (r *run) releaseID(id string, until time.Time) {
	r.mu.Lock()
	if until.IsZero() {
		delete(r.held, id)
	} else {
		r.held[id] = until
	}
	r.mu.Unlock()
	r.notify()
}

func (r *run) notify() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// revokeOne revokes one due lease and hands its outcome to the committer.
func (r *run) revokeOne(e fsm.LeaseEntry) {
	w := r.w
	t := w.t
	defer r.releaseSlot()
	rec, err := t.open(e)
	if err != nil {
		// Not the revoker's failure: the record cannot be read here (a
		// node that lost its keys, a damaged record). Nothing is written;
		// it is looked at again after the longest backoff.
		w.log.Error("cannot open a due lease's record; it stays due", "lease", e.ID, "error", err)
		r.releaseID(e.ID, t.clock.Now().Add(t.backoff.Max))
		return
	}
	ctx, cancel := context.WithTimeout(r.base, w.opts.RevokeTimeout)
	defer cancel()
	if rec.State == StatePending {
		claimed, err := t.claim(ctx, rec)
		if err != nil {
			// Confirmed (or changed) meanwhile: the next round reads it
			// again. Any other failure is the state's: pause.
			if !errors.Is(err, ErrConflict) {
				w.log.Warn("cannot take an unconfirmed intent for revocation", "lease", e.ID, "error", err)
				r.pause(t.clock.Now())
			}
			r.releaseID(e.ID, time.Time{})
			return
		}
		w.log.Info("revoking an intent that was never confirmed", "lease", e.ID)
		rec = claimed
	}
	rerr := t.revoke(ctx, rec)
	r.results <- outcome{entry: e, rec: rec, err: rerr}
}

// commit writes the outcomes: successes removed together, failures
// recorded together (one at a time when one of them changed meanwhile).
// Each outcome's id is released once written.
func (r *run) commit() {
	for first := range r.results {
		batch := []outcome{first}
	drain:
		for len(batch) < writeBatch {
			select {
			case o, ok := <-r.results:
				if !ok {
					break drain
				}
				batch = append(batch, o)
			default:
				break drain
			}
		}
		var revoked, failed []outcome
		for _, o := range batch {
			if o.err == nil {
				revoked = append(revoked, o)
			} else {
				failed = append(failed, o)
			}
		}
		if len(revoked) > 0 {
			r.commitRevoked(revoked)
		}
		if len(failed) > 0 {
			r.commitFailed(failed)
		}
		for _, o := range batch {
			r.releaseID(o.entry.ID, time.Time{})
		}
	}
}

// commitRevoked removes revoked leases in one command.
func (r *run) commitRevoked(outs []outcome) {
	w := r.w
	cmd := &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_DELETE}
	for _, o := range outs {
		cmd.LeaseDeletes = append(cmd.LeaseDeletes, &fsmpb.LeaseDelete{Id: o.entry.ID})
	}
	ctx, cancel := context.WithTimeout(r.base, w.opts.RevokeTimeout)
	defer cancel()
	if _, err := w.t.propose(ctx, cmd); err != nil {
		// Revoked but still in the table: revoked again (idempotently) by
		// this worker or the next leader's.
		w.log.Warn("revoked leases could not be removed; they will be revoked again", "leases", len(outs), "error", err)
		r.pause(w.t.clock.Now())
		return
	}
	for _, o := range outs {
		w.revoked.Add(1)
		if o.rec.Attempts > 0 {
			w.retrying.Add(-1)
		}
	}
	w.log.Debug("revoked leases", "count", len(outs))
}

// commitFailed records failed revocations, all at once or, when one of
// them changed meanwhile, one at a time (a changed one is left alone: the
// next round reads it again).
func (r *run) commitFailed(outs []outcome) {
	w := r.w
	t := w.t
	ctx, cancel := context.WithTimeout(r.base, w.opts.RevokeTimeout)
	defer cancel()
	cmd := &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT}
	for _, o := range outs {
		w.failures.Add(1)
		if o.rec.Attempts == 0 {
			w.retrying.Add(1)
		}
		w.log.Warn("revocation failed; retrying with backoff", "lease", o.entry.ID, "attempts", o.rec.Attempts+1, "error", o.err)
		wr, _, err := t.failureWrite(o.rec, o.err)
		if err != nil {
			w.log.Error("cannot record a failed revocation", "lease", o.entry.ID, "error", err)
			continue
		}
		cmd.LeaseWrites = append(cmd.LeaseWrites, wr)
	}
	if len(cmd.LeaseWrites) == 0 {
		return
	}
	_, err := t.propose(ctx, cmd)
	if errors.Is(err, ErrConflict) && len(cmd.LeaseWrites) > 1 {
		err = nil
		for _, wr := range cmd.LeaseWrites {
			_, e := t.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: []*fsmpb.LeaseWrite{wr}})
			if e != nil && !errors.Is(e, ErrConflict) {
				err = e
			}
		}
	} else if errors.Is(err, ErrConflict) {
		err = nil
	}
	if err != nil {
		w.log.Warn("failed revocations could not be recorded; they stay due", "leases", len(outs), "error", err)
		r.pause(t.clock.Now())
	}
}
