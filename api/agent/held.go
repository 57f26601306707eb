package agent

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// How the agent keeps the database credentials it holds (see the package
// documentation, "Database credentials").
const (
	// The agent fetches new credentials when a share of the lease's whole
	// life (issue to max TTL) is left, drawn per lease from
	// [minSwitchShare, maxSwitchShare) so that agents that fetched
	// together do not switch together (Vault's lifetime watcher takes the
	// same 10–20 % grace) …
	minSwitchShare = 0.10
	maxSwitchShare = 0.20
	// … but never with less than switchMargins × LeaseMargin left, so that
	// the credentials it hands out just before the switch stay usable, nor
	// before half of the lease's life has passed.
	switchMargins = 3
	// Renewals come at renewShare of the remaining TTL, and never closer
	// together than minRenewInterval.
	renewShare       = 2.0 / 3.0
	minRenewInterval = 100 * time.Millisecond
	// A failed renewal or switch is retried after a jittered back-off
	// doubling from minHeldBackoff to maxHeldBackoff, never past the
	// lease's end.
	minHeldBackoff = 250 * time.Millisecond
	maxHeldBackoff = 30 * time.Second
)

// credsKey names what the agent holds for one token (by hash) and one
// dynamic role, or one static role.
type credsKey struct {
	tokenHash string
	role      string
}

// heldLease is one set of dynamic credentials and what the agent knows of
// its lease. Times are the agent's: each is anchor plus a duration the
// cluster reported (end minus issue, both on the cluster's clock), so
// that the agent's clock and the nodes' may differ; anchor is when the
// Creds call was sent, no later than the lease's issue, so these times
// are never later than the cluster's. Ends are taken down to the whole
// second, as the database has them: the creation and renewal statements
// write VALID UNTIL in whole seconds ({{expiration}}), so the user stops
// logging in up to a second before its lease ends.
type heldLease struct {
	creds     *pb.DatabaseCreds
	anchor    time.Time
	fetched   time.Time // when the answer came
	expire    time.Time
	maxExpire time.Time // zero while unknown (no renewal or lookup yet)
	renewable bool
	// atMax: renewals cannot extend it (capped by its max TTL, or the
	// token may not renew): new credentials are fetched before it ends.
	atMax bool
	// renewAt is when the next renewal is due; switchTry the earliest
	// retry of a failed switch; failures counts failed renewals or
	// switches in a row (for the back-off).
	renewAt   time.Time
	switchTry time.Time
	failures  int
	// share of the lease's life left when new credentials are fetched.
	share float64
}

// newHeldLease returns the lease of a Creds answer sent at anchor and
// received at now.
//
// Until the cluster tells the lease's issue time (a renewal, a lookup),
// its end is taken a second early: the issue time's fraction of a second
// is not known, and VALID UNTIL drops it.
func newHeldLease(cr *pb.DatabaseCreds, anchor, now time.Time) *heldLease {
	l := &heldLease{
		creds: cr, anchor: anchor, fetched: now,
		expire:    anchor.Add(time.Duration(cr.GetLeaseDurationSeconds()-1) * time.Second),
		renewable: cr.GetRenewable(),
		share:     minSwitchShare + mrand.Float64()*(maxSwitchShare-minSwitchShare),
	}
	l.atMax = !l.renewable
	l.planRenewal(now)
	return l
}

// servable reports whether the credentials may be handed out at now: at
// least margin of the lease is left.
func (l *heldLease) servable(now time.Time, margin time.Duration) bool {
	return l.creds != nil && now.Before(l.expire.Add(-margin))
}

// planRenewal sets the next renewal at renewShare of the remaining TTL.
func (l *heldLease) planRenewal(now time.Time) {
	l.renewAt = now.Add(max(time.Duration(float64(l.expire.Sub(now))*renewShare), minRenewInterval))
}

// update takes what the cluster said of the lease (a renewal's or a
// lookup's answer).
func (l *heldLease) update(info *pb.LeaseInfo, now time.Time) {
	issue := info.GetIssueTimeUnixNano()
	if issue == 0 || info.GetExpireTimeUnixNano() == 0 {
		return
	}
	l.expire = l.anchor.Add(time.Duration(wholeSecond(info.GetExpireTimeUnixNano()) - issue))
	if m := info.GetMaxExpireTimeUnixNano(); m != 0 {
		l.maxExpire = l.anchor.Add(time.Duration(wholeSecond(m) - issue))
		if info.GetExpireTimeUnixNano() >= m {
			l.atMax = true
		}
	}
	if !info.GetRenewable() || len(info.GetWarnings()) > 0 {
		l.atMax = true
	}
	l.renewable = info.GetRenewable()
	// A lease shortened elsewhere (a renewal with a short increment) is
	// renewed in time.
	if next := now.Add(time.Duration(float64(l.expire.Sub(now)) * renewShare)); l.renewAt.After(next) {
		l.renewAt = next
	}
}

// wholeSecond takes a time in unix nanoseconds down to its second.
func wholeSecond(ns int64) int64 {
	return ns - ns%int64(time.Second)
}

// switchAt is when new credentials should be fetched; ok is false while
// renewals may still carry the lease further than the agent knows (its
// max TTL is not known yet).
func (l *heldLease) switchAt(margin time.Duration) (at time.Time, ok bool) {
	var end time.Time
	switch {
	case l.atMax:
		end = l.expire
	case !l.maxExpire.IsZero():
		end = l.maxExpire
	default:
		return time.Time{}, false
	}
	life := end.Sub(l.anchor)
	grace := max(time.Duration(float64(life)*l.share), switchMargins*margin)
	at = end.Add(-grace)
	if half := l.anchor.Add(life / 2); at.Before(half) {
		at = half
	}
	if at.Before(l.switchTry) {
		at = l.switchTry
	}
	return at, true
}

// backoff returns the wait before the next try after failures failures.
func backoff(failures int) time.Duration {
	d := min(minHeldBackoff<<min(failures-1, 16), maxHeldBackoff)
	return d/2 + mrand.N(d/2+1)
}

// credsSlot is what the agent holds for one token and one dynamic role.
// Its fields are guarded by credsStore.mu.
type credsSlot struct {
	key credsKey
	// token is the token its upstream calls use; "" for a slot restored
	// from the cache file until a caller with that token comes (the file
	// holds token hashes only).
	token string
	cur   *heldLease // nil: none (ended, dropped, not fetched yet)
	// used: cur has been handed to a caller. Credentials nobody took are
	// not replaced when their lease nears its end: they end with it.
	used bool
	// vouched is when the cluster last accepted the token.
	vouched time.Time
	fetch   *fetchCall // the Creds call in flight, if any
	// ended is when the last lease ended (zero: none), for the error that
	// explains why nothing is served.
	ended   time.Time
	running bool          // its renewer runs
	wake    chan struct{} // wakes the renewer to plan again
	gone    bool          // removed from the store
}

// fetchCall is one Creds call of a slot; whoever needs new credentials of
// the slot meanwhile waits for it.
type fetchCall struct {
	done chan struct{}
	// Set before done closes: the lease installed in the slot, or the
	// answer when it was not held (too short a lease), or the error.
	lease *heldLease
	creds *pb.DatabaseCreds
	err   error
}

// staticSnap is the last StaticCreds answer for one token and static
// role, kept for outages until the role's next rotation.
type staticSnap struct {
	resp    *pb.DatabaseStaticCreds
	fetched time.Time
	until   time.Time // anchor + ttl: the next scheduled rotation
}

// credsStore holds the agent's database credentials: the dynamic ones it
// renews and hands out, and the static ones it keeps for outages.
type credsStore struct {
	a       *Agent
	margin  time.Duration
	max     int
	mu      sync.Mutex
	started bool // Start ran: renewers may run
	closed  bool // Shutdown began: no goroutine starts
	slots   map[credsKey]*credsSlot
	statics map[credsKey]*staticSnap
	changed chan struct{} // poked after each change, for the cache file
}

func newCredsStore(a *Agent) *credsStore {
	return &credsStore{
		a: a, margin: a.cfg.LeaseMargin, max: a.cfg.MaxHeldLeases,
		slots: make(map[credsKey]*credsSlot), statics: make(map[credsKey]*staticSnap),
		changed: make(chan struct{}, 1),
	}
}

// credsState says how a Creds or StaticCreds answer was made (the
// coffer-agent-cache header).
type credsState struct {
	state string // "miss", "hit" or "stale"
	age   time.Duration
}

// creds returns the dynamic credentials of role for token: the ones the
// agent holds while their lease has LeaseMargin left, new ones otherwise
// (one Creds call, whoever asks meanwhile).
func (st *credsStore) creds(ctx context.Context, token, role string) (*pb.DatabaseCreds, credsState, error) {
	key := credsKey{tokenHash: api.TokenHash(token), role: role}
	for {
		st.mu.Lock()
		s, err := st.slotLocked(key)
		if err != nil {
			st.mu.Unlock()
			return nil, credsState{}, err
		}
		now := time.Now()
		if l := s.cur; l != nil && l.servable(now, st.margin) {
			st.adoptLocked(s, token)
			if st.vouchedLocked(s, now) {
				out := st.handOutLocked(s, now)
				st.mu.Unlock()
				return out, credsState{"hit", now.Sub(l.fetched)}, nil
			}
			id := l.creds.GetLeaseId()
			st.mu.Unlock()
			out, state, err := st.recheck(ctx, s, l, id, token)
			if err != nil || out != nil {
				return out, state, err
			}
			continue // the lease is gone: fetch new credentials
		}
		call := s.fetch
		if call == nil {
			call = st.startFetchLocked(s, token)
		}
		st.mu.Unlock()
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, credsState{}, ctx.Err()
		}
		if call.err != nil {
			return nil, credsState{}, st.fetchError(s, call.err)
		}
		if call.lease == nil {
			// Too short a lease to hold: this caller gets it as the
			// cluster gave it.
			return proto.Clone(call.creds).(*pb.DatabaseCreds), credsState{state: "miss"}, nil
		}
		st.mu.Lock()
		if s.cur == call.lease && call.lease.servable(time.Now(), st.margin) {
			now := time.Now()
			out := st.handOutLocked(s, now)
			st.mu.Unlock()
			return out, credsState{"miss", now.Sub(call.lease.fetched)}, nil
		}
		st.mu.Unlock()
	}
}

// vouchedLocked reports whether the cluster accepted the slot's token
// within the cache's TokenRecheck.
func (st *credsStore) vouchedLocked(s *credsSlot, now time.Time) bool {
	d := st.a.cache.Config().TokenRecheck
	return d < 0 || (!s.vouched.IsZero() && now.Sub(s.vouched) < d)
}

// handOutLocked returns a copy of the slot's credentials whose
// lease_duration_seconds is what is left of the lease.
func (st *credsStore) handOutLocked(s *credsSlot, now time.Time) *pb.DatabaseCreds {
	l := s.cur
	if !s.used {
		s.used = true
		st.wakeLocked(s) // a switch may now be planned
	}
	out := proto.Clone(l.creds).(*pb.DatabaseCreds)
	out.LeaseDurationSeconds = int64(l.expire.Sub(now) / time.Second)
	return out
}

// adoptLocked gives a slot restored from the cache file the token of its
// first caller, so that its lease is renewed again.
func (st *credsStore) adoptLocked(s *credsSlot, token string) {
	if s.token == "" {
		s.token = token
		st.ensureRunningLocked(s)
		st.wakeLocked(s)
	}
}

// recheck asks the cluster, with the caller's token, whether credentials
// the agent holds may still be handed out, once the token's recheck is
// due: whether the token may still read the role's credentials (its
// capabilities on database/creds/ROLE: a policy change counts within the
// recheck, as for cached KV answers) and whether their lease still runs
// (Lease.Lookup). A refused token drops everything held for it; a token
// that may no longer read, or a lease revoked or no longer active, ends
// the credentials (out and err nil: the caller asks the cluster again);
// an answer vouches for the token; no answer leaves them served (marked
// stale) while their lease lasts.
func (st *credsStore) recheck(ctx context.Context, s *credsSlot, l *heldLease, id, token string) (*pb.DatabaseCreds, credsState, error) {
	tctx := api.WithToken(ctx, token)
	end := func(why string) (*pb.DatabaseCreds, credsState, error) {
		st.a.noteContact()
		st.mu.Lock()
		if s.cur == l {
			st.endLocked(s, why, true)
		}
		st.mu.Unlock()
		return nil, credsState{}, nil
	}
	// refused handles the errors both calls share; done is false when the
	// cluster could not answer.
	refused := func(err error) (done bool, rerr error) {
		switch {
		case api.IsUnauthenticated(err):
			st.dropToken(s.key.tokenHash, "the cluster refused the token")
			return true, &upstreamError{err}
		case ctx.Err() != nil:
			return true, ctx.Err()
		}
		return false, nil
	}
	var info *pb.LeaseInfo
	vouched := false
	caps, err := st.a.client.Capabilities(tctx, "", "database/creds/"+s.key.role)
	switch {
	case err == nil:
		vouched = true
		if !mayRead(caps) {
			return end("the token may no longer read the role's credentials")
		}
	case api.IsPermissionDenied(err):
		// Its policies leave out sys/capabilities-self: the lookup vouches.
	default:
		if done, rerr := refused(err); done {
			return nil, credsState{}, rerr
		}
	}
	if err == nil || api.IsPermissionDenied(err) {
		info, err = st.a.client.LookupLease(tctx, id)
		switch {
		case err == nil, api.IsPermissionDenied(err):
			vouched = true // valid; a PermissionDenied token may not look leases up
		case api.IsNotFound(err):
			return end("its lease was revoked")
		default:
			if done, rerr := refused(err); done {
				return nil, credsState{}, rerr
			}
		}
	}
	now := time.Now()
	state := "hit"
	if vouched {
		st.a.noteContact()
	}
	if err != nil && !api.IsPermissionDenied(err) {
		// The cluster could not answer: the lease still runs.
		state = "stale"
		st.a.logger.Debug("could not check a token's held database credentials with the cluster; serving them while their lease lasts", "role", s.key.role, "error", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if s.cur != l {
		return nil, credsState{}, nil
	}
	if state == "hit" {
		s.vouched = now
	}
	if info != nil && err == nil {
		if info.GetState() != "active" {
			st.endLocked(s, "its lease is "+info.GetState(), true)
			return nil, credsState{}, nil
		}
		l.update(info, now)
		st.wakeLocked(s)
		st.noteChangedLocked()
	}
	if !l.servable(now, st.margin) {
		return nil, credsState{}, nil
	}
	return st.handOutLocked(s, now), credsState{state, now.Sub(l.fetched)}, nil
}

// mayRead reports whether capabilities allow reading every path asked.
func mayRead(caps *pb.CapabilitiesResponse) bool {
	if len(caps.GetPaths()) == 0 {
		return false
	}
	for _, p := range caps.GetPaths() {
		if !slices.Contains(p.GetCapabilities(), "read") && !slices.Contains(p.GetCapabilities(), "root") {
			return false
		}
	}
	return true
}

// slotLocked returns the slot of key, creating it; past MaxHeldLeases
// slots that hold nothing are dropped first, and a caller that would need
// more is refused.
func (st *credsStore) slotLocked(key credsKey) (*credsSlot, error) {
	if s := st.slots[key]; s != nil {
		return s, nil
	}
	if len(st.slots) >= st.max {
		for k, s := range st.slots {
			if s.cur == nil && s.fetch == nil {
				s.gone = true
				delete(st.slots, k)
			}
		}
		if len(st.slots) >= st.max {
			return nil, api.StatusError(codes.ResourceExhausted, pb.ErrorReason_QUOTA_EXCEEDED,
				fmt.Sprintf("coffer agent: it holds database credentials for %d tokens and roles already (-max-held-leases=%d): raise -max-held-leases, or use fewer tokens per agent", len(st.slots), st.max))
		}
	}
	s := &credsSlot{key: key, wake: make(chan struct{}, 1)}
	st.slots[key] = s
	return s, nil
}

// startFetchLocked starts the slot's Creds call with token and returns
// it (done at once, failed, once the agent is shutting down). It runs on
// the agent's context, not a caller's: credentials issued for a caller
// that gave up are held for the next.
func (st *credsStore) startFetchLocked(s *credsSlot, token string) *fetchCall {
	call := &fetchCall{done: make(chan struct{})}
	if st.closed {
		call.err = ErrShuttingDown
		close(call.done)
		return call
	}
	s.fetch = call
	st.a.bg.Add(1)
	go func() {
		defer st.a.bg.Done()
		st.runFetch(s, token, call)
	}()
	return call
}

// runFetch makes the slot's Creds call and installs its answer.
func (st *credsStore) runFetch(s *credsSlot, token string, call *fetchCall) {
	anchor := time.Now()
	cr, err := st.a.client.DatabaseCreds(api.WithToken(st.a.stopCtx, token), s.key.role)
	now := time.Now()
	if err != nil && api.IsUnauthenticated(err) {
		st.dropToken(s.key.tokenHash, "the cluster refused the token")
	}
	st.mu.Lock()
	defer func() {
		s.fetch = nil
		close(call.done)
		st.mu.Unlock()
	}()
	if err != nil {
		call.err = err
		return
	}
	st.a.noteContact()
	l := newHeldLease(cr, anchor, now)
	if s.gone || !l.servable(now, st.margin) {
		if !s.gone {
			st.a.logger.Warn("the lease of new database credentials is shorter than -lease-margin: handed out once, not held", "role", s.key.role, "lease_seconds", cr.GetLeaseDurationSeconds(), "lease_margin", st.margin)
		}
		call.creds = cr
		return
	}
	old := s.cur
	s.cur, s.token, s.vouched, s.used, s.ended = l, token, now, false, time.Time{}
	call.lease = l
	if old != nil && old.creds != nil {
		st.a.logger.Info("switched to new database credentials before the old lease ends", "role", s.key.role,
			"old_user", old.creds.GetUsername(), "new_user", cr.GetUsername(), "old_lease_left", old.expire.Sub(now).Round(time.Millisecond))
	} else {
		st.a.logger.Debug("holding new database credentials", "role", s.key.role, "user", cr.GetUsername(), "lease_seconds", cr.GetLeaseDurationSeconds())
	}
	st.ensureRunningLocked(s)
	st.wakeLocked(s)
	st.noteChangedLocked()
}

// fetchError explains a Creds call that failed: the cluster's answer when
// it gave one; when no node could answer, that the credentials held for
// the token ended (or that none were held).
func (st *credsStore) fetchError(s *credsSlot, err error) error {
	if !staleIfError(err) {
		return &upstreamError{err}
	}
	st.mu.Lock()
	ended := s.ended
	if l := s.cur; l != nil && !l.servable(time.Now(), st.margin) {
		ended = l.expire
	}
	st.mu.Unlock()
	msg := status.Convert(err).Message()
	if !ended.IsZero() {
		return api.StatusError(codes.Unavailable, pb.ErrorReason_CACHE_TOO_STALE, fmt.Sprintf(
			"coffer agent: the lease of the database credentials of role %q held for this token is over (it ends at %s, and credentials are handed out only while -lease-margin=%s of their lease is left) and the cluster is unreachable, so no new ones could be issued: bring a node back or check COFFER_ADDR; last error: %s",
			s.key.role, ended.UTC().Format(time.RFC3339), st.margin, msg))
	}
	return unreachableError(err, fmt.Sprintf("the agent holds no database credentials of role %q for this token", s.key.role))
}

// unreachableError is the agent's answer when no upstream node could
// answer and it holds nothing to answer with instead: the cluster's
// Unavailable, said from the agent's side.
func unreachableError(err error, why string) error {
	st := status.Convert(err)
	msg := fmt.Sprintf("coffer agent: no upstream node could answer, and %s: %s", why, st.Message())
	if api.IsUnreachable(err) {
		// The caller reached the agent; the agent reached no node.
		return api.StatusError(codes.Unavailable, pb.ErrorReason_UPSTREAM_UNREACHABLE, msg)
	}
	return restate(st, msg)
}

// staleIfError reports whether err means the cluster could not answer, so
// that what the agent holds may: Unavailable (any node, or none reached),
// or the caller's deadline spent trying.
func staleIfError(err error) bool {
	return api.Retryable(err) || status.Code(err) == codes.DeadlineExceeded
}

// ensureRunningLocked starts the slot's renewer unless it runs (or the
// agent is not serving).
func (st *credsStore) ensureRunningLocked(s *credsSlot) {
	if s.running || !st.started || st.closed || s.gone || s.cur == nil {
		return
	}
	s.running = true
	st.a.bg.Add(1)
	go st.run(s)
}

func (st *credsStore) wakeLocked(s *credsSlot) {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (st *credsStore) noteChangedLocked() {
	select {
	case st.changed <- struct{}{}:
	default:
	}
}

// endLocked drops the slot's credentials: their lease ends (at its
// expire time) or was revoked (now, when revoked is true). The slot
// remembers when, for the error that explains why nothing is served.
func (st *credsStore) endLocked(s *credsSlot, why string, revoked bool) {
	l := s.cur
	if l == nil {
		return
	}
	s.cur, s.ended = nil, l.expire
	if revoked {
		s.ended = time.Now()
	}
	st.a.logger.Debug("dropped held database credentials", "role", s.key.role, "user", l.creds.GetUsername(), "why", why)
	l.creds = nil
	st.wakeLocked(s)
	st.noteChangedLocked()
}

// dropToken forgets everything held for a token the cluster refused
// (revoked, expired), as the KV cache does: its credentials are not
// served again and their leases are no longer renewed.
func (st *credsStore) dropToken(hash, why string) {
	st.mu.Lock()
	n := 0
	for k, s := range st.slots {
		if k.tokenHash != hash {
			continue
		}
		if s.cur != nil {
			n++
			s.cur.creds = nil
			s.cur = nil
		}
		s.gone = true
		delete(st.slots, k)
		st.wakeLocked(s)
	}
	for k := range st.statics {
		if k.tokenHash == hash {
			n++
			delete(st.statics, k)
		}
	}
	if n > 0 {
		st.noteChangedLocked()
	}
	st.mu.Unlock()
	st.a.cache.InvalidateToken(hash)
	if n > 0 {
		st.a.logger.Info("dropped the database credentials held for a token", "count", n, "why", why)
	}
}

// dropLease ends the held credentials whose lease id is id, or that start
// with it when prefix is true (a revocation passed upstream).
func (st *credsStore) dropLease(id string, prefix bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, s := range st.slots {
		if l := s.cur; l != nil && (l.creds.GetLeaseId() == id || prefix && strings.HasPrefix(l.creds.GetLeaseId(), id)) {
			st.endLocked(s, "its lease was revoked through the agent", true)
		}
	}
}

// renewed takes a renewal passed upstream: a held lease's end moves (a
// short increment may bring it closer).
func (st *credsStore) renewed(info *pb.LeaseInfo) {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now()
	for _, s := range st.slots {
		if l := s.cur; l != nil && l.creds.GetLeaseId() == info.GetId() {
			l.update(info, now)
			st.wakeLocked(s)
			st.noteChangedLocked()
		}
	}
}

// The renewer's actions.
const (
	actDrop = iota
	actRenew
	actSwitch
)

// run is the renewer of one slot: it renews the lease at renewShare of
// its remaining TTL, fetches new credentials before a lease that cannot
// be extended ends (when they were handed out), and drops the credentials
// LeaseMargin before their lease ends. It returns when the slot holds
// nothing or the agent stops.
func (st *credsStore) run(s *credsSlot) {
	defer st.a.bg.Done()
	for {
		st.mu.Lock()
		l := s.cur
		if s.gone || l == nil {
			s.running = false
			st.mu.Unlock()
			return
		}
		now := time.Now()
		at, act := l.expire.Add(-st.margin), actDrop
		if !now.Before(at) {
			st.endLocked(s, "its lease ended", false)
			s.running = false
			st.mu.Unlock()
			return
		}
		token, id := s.token, l.creds.GetLeaseId()
		if token != "" {
			if l.renewable && !l.atMax && l.renewAt.Before(at) {
				at, act = l.renewAt, actRenew
			}
			if sw, ok := l.switchAt(st.margin); ok && s.used && sw.Before(at) {
				at, act = sw, actSwitch
			}
		}
		st.mu.Unlock()
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-st.a.stopCtx.Done():
				t.Stop()
				return
			case <-s.wake:
				t.Stop()
				continue
			case <-t.C:
			}
		}
		switch act {
		case actRenew:
			st.renew(s, l, id, token)
		case actSwitch:
			st.switchCreds(s, l, token)
		}
	}
}

// renew renews the slot's lease with its token.
func (st *credsStore) renew(s *credsSlot, l *heldLease, id, token string) {
	info, err := st.a.client.RenewLease(api.WithToken(st.a.stopCtx, token), id, 0)
	now := time.Now()
	if st.a.stopCtx.Err() != nil {
		return // shutting down: the lease stays as it is
	}
	if err != nil && api.IsUnauthenticated(err) {
		st.dropToken(s.key.tokenHash, "the cluster refused the token when the agent renewed a lease")
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if s.cur != l || l.creds == nil {
		return
	}
	switch {
	case err == nil:
		st.a.noteContact()
		l.update(info, now)
		l.planRenewal(now)
		l.failures = 0
		s.vouched = now
		st.noteChangedLocked()
		if l.atMax {
			sw, _ := l.switchAt(st.margin)
			st.a.logger.Debug("renewed a held lease up to its max TTL", "role", s.key.role, "user", l.creds.GetUsername(), "ends_in", l.expire.Sub(now).Round(time.Millisecond), "new_credentials_in", sw.Sub(now).Round(time.Millisecond))
		} else {
			st.a.logger.Debug("renewed a held lease", "role", s.key.role, "user", l.creds.GetUsername(), "ends_in", l.expire.Sub(now).Round(time.Millisecond))
		}
	case api.IsNotFound(err), api.IsInvalidArgument(err):
		// Revoked, being revoked, or past its end on the cluster's clock.
		st.a.noteContact()
		st.a.logger.Info("the cluster no longer renews a held lease: its credentials are dropped", "role", s.key.role, "user", l.creds.GetUsername(), "error", status.Convert(err).Message())
		st.endLocked(s, "the cluster refused its renewal", true)
	case api.IsPermissionDenied(err):
		st.a.noteContact()
		s.vouched = now
		l.atMax = true
		st.a.logger.Warn("the token may not renew its lease (policy sys/leases/renew): new credentials are fetched before it ends", "role", s.key.role)
	default:
		l.failures++
		l.renewAt = now.Add(backoff(l.failures))
		st.a.logger.Warn("renewing a held lease failed; retrying while it lasts", "role", s.key.role, "user", l.creds.GetUsername(), "ends_in", l.expire.Sub(now).Round(time.Millisecond), "error", status.Convert(err).Message())
	}
}

// switchCreds fetches new credentials for a slot whose lease nears its
// end. The old lease is left to run out: a caller given it before the
// switch may still use it (Vault Agent does the same).
func (st *credsStore) switchCreds(s *credsSlot, l *heldLease, token string) {
	st.mu.Lock()
	if s.cur != l || s.gone {
		st.mu.Unlock()
		return
	}
	call := s.fetch
	if call == nil {
		call = st.startFetchLocked(s, token)
	}
	st.mu.Unlock()
	select {
	case <-call.done:
	case <-st.a.stopCtx.Done():
		return
	}
	if st.a.stopCtx.Err() != nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if s.cur != l {
		return // switched (or dropped)
	}
	l.failures++
	l.switchTry = time.Now().Add(backoff(l.failures))
	if call.err != nil {
		st.a.logger.Warn("fetching new database credentials before the lease ends failed; the old ones are served while their lease lasts", "role", s.key.role,
			"ends_in", time.Until(l.expire).Round(time.Millisecond), "error", status.Convert(call.err).Message())
	}
}

// staticCreds returns a static role's password: the cluster's answer,
// kept for outages; when no node answers, the kept one until the role's
// next scheduled rotation (less LeaseMargin), never after it.
func (st *credsStore) staticCreds(ctx context.Context, token, name string) (*pb.DatabaseStaticCreds, credsState, error) {
	key := credsKey{tokenHash: api.TokenHash(token), role: name}
	anchor := time.Now()
	resp, err := st.a.client.DatabaseStaticCreds(api.WithToken(ctx, token), name)
	now := time.Now()
	if err == nil {
		st.a.noteContact()
		st.keepStatic(key, resp, anchor, now)
		return resp, credsState{state: "miss"}, nil
	}
	switch {
	case api.IsUnauthenticated(err):
		st.dropToken(key.tokenHash, "the cluster refused the token")
		return nil, credsState{}, &upstreamError{err}
	case ctx.Err() != nil:
		return nil, credsState{}, ctx.Err()
	case !staleIfError(err):
		if api.IsNotFound(err) || api.IsPermissionDenied(err) {
			st.mu.Lock()
			delete(st.statics, key)
			st.mu.Unlock()
		}
		return nil, credsState{}, &upstreamError{err}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	snap := st.statics[key]
	if snap == nil {
		return nil, credsState{}, unreachableError(err, fmt.Sprintf("the agent holds no password of static role %q for this token", name))
	}
	if !now.Before(snap.until.Add(-st.margin)) {
		delete(st.statics, key)
		st.noteChangedLocked()
		return nil, credsState{}, api.StatusError(codes.Unavailable, pb.ErrorReason_CACHE_TOO_STALE, fmt.Sprintf(
			"coffer agent: the password of static role %q held for this token was due for rotation (at %s, less -lease-margin=%s) and the cluster is unreachable, so the current one cannot be read: bring a node back or check COFFER_ADDR; last error: %s",
			name, snap.until.UTC().Format(time.RFC3339), st.margin, status.Convert(err).Message()))
	}
	out := proto.Clone(snap.resp).(*pb.DatabaseStaticCreds)
	out.TtlSeconds = int64(snap.until.Sub(now) / time.Second)
	return out, credsState{"stale", now.Sub(snap.fetched)}, nil
}

// keepStatic keeps a StaticCreds answer until the role's next rotation.
func (st *credsStore) keepStatic(key credsKey, resp *pb.DatabaseStaticCreds, anchor, now time.Time) {
	until := anchor.Add(time.Duration(resp.GetTtlSeconds()) * time.Second)
	st.mu.Lock()
	defer st.mu.Unlock()
	if !now.Before(until.Add(-st.margin)) {
		delete(st.statics, key)
		return
	}
	if _, ok := st.statics[key]; !ok && len(st.statics) >= st.max {
		for k, s := range st.statics {
			if !now.Before(s.until.Add(-st.margin)) {
				delete(st.statics, k)
			}
		}
		if len(st.statics) >= st.max {
			return // served upstream only
		}
	}
	st.statics[key] = &staticSnap{resp: proto.Clone(resp).(*pb.DatabaseStaticCreds), fetched: now, until: until}
	st.noteChangedLocked()
}

// rotated forgets every kept password of a static role rotated through
// the agent.
func (st *credsStore) rotated(name string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for k := range st.statics {
		if k.role == name {
			delete(st.statics, k)
			st.noteChangedLocked()
		}
	}
}

// start lets renewers run (Start), and starts those of restored slots.
func (st *credsStore) start() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.started = true
	for _, s := range st.slots {
		st.ensureRunningLocked(s)
	}
}

// close stops new goroutines (Shutdown, before it waits for them).
func (st *credsStore) close() {
	st.mu.Lock()
	st.closed = true
	st.mu.Unlock()
}

// heldRecord is a slot's credentials as the cache file keeps them.
type heldRecord struct {
	Key                                credsKey
	Creds                              *pb.DatabaseCreds
	Anchor, Fetched, Expire, MaxExpire time.Time
	Renewable, AtMax                   bool
}

// staticRecord is a kept StaticCreds answer as the cache file keeps it.
type staticRecord struct {
	Key            credsKey
	Creds          *pb.DatabaseStaticCreds
	Fetched, Until time.Time
}

// records returns what the cache file keeps: the credentials whose lease
// has more than LeaseMargin left, and the static answers before their
// rotation.
func (st *credsStore) records() ([]heldRecord, []staticRecord) {
	now := time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	var held []heldRecord
	for _, s := range st.slots {
		if l := s.cur; l != nil && l.servable(now, st.margin) {
			held = append(held, heldRecord{
				Key: s.key, Creds: proto.Clone(l.creds).(*pb.DatabaseCreds),
				Anchor: l.anchor.Round(0), Fetched: l.fetched.Round(0), Expire: l.expire.Round(0), MaxExpire: l.maxExpire.Round(0),
				Renewable: l.renewable, AtMax: l.atMax,
			})
		}
	}
	var statics []staticRecord
	for k, s := range st.statics {
		if now.Before(s.until.Add(-st.margin)) {
			statics = append(statics, staticRecord{Key: k, Creds: proto.Clone(s.resp).(*pb.DatabaseStaticCreds), Fetched: s.fetched.Round(0), Until: s.until.Round(0)})
		}
	}
	return held, statics
}

// restore takes the cache file's records (before Start): credentials
// whose lease still has more than LeaseMargin left, held without a token
// until a caller with theirs comes (the cluster is asked about the lease
// first, as at a token recheck), and static answers before their
// rotation. It returns how many it kept.
func (st *credsStore) restore(held []heldRecord, statics []staticRecord) (int, int) {
	now := time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	nh, ns := 0, 0
	for _, r := range held {
		l := &heldLease{
			creds: r.Creds, anchor: r.Anchor, fetched: r.Fetched, expire: r.Expire, maxExpire: r.MaxExpire,
			renewable: r.Renewable, atMax: r.AtMax,
			share: minSwitchShare + mrand.Float64()*(maxSwitchShare-minSwitchShare),
		}
		if !l.servable(now, st.margin) || len(st.slots) >= st.max || st.slots[r.Key] != nil {
			continue
		}
		l.planRenewal(now)
		st.slots[r.Key] = &credsSlot{key: r.Key, cur: l, wake: make(chan struct{}, 1)}
		nh++
	}
	for _, r := range statics {
		if !now.Before(r.Until.Add(-st.margin)) || len(st.statics) >= st.max {
			continue
		}
		st.statics[r.Key] = &staticSnap{resp: r.Creds, fetched: r.Fetched, until: r.Until}
		ns++
	}
	return nh, ns
}
