package api

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"time"

	pb "coffer/api/cofferpb"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Back-off between two passes over the endpoint list: jittered, from
// passBackoff doubling up to maxPassBackoff.
const (
	passBackoff    = 50 * time.Millisecond
	maxPassBackoff = time.Second
)

// unreachableGrace is how long after an endpoint was last found down a call
// that reaches no node keeps trying (within RetryBudget) rather than
// failing at once. When the node a client used dies, the others may be
// marked down from earlier failures (a node restarted a moment ago, not
// probed since) or their connections may still be in gRPC's reconnect
// back-off (at most 1 s): they are tried again until this has passed. A
// cluster dead for longer fails calls at once, so a cached answer can
// serve.
const unreachableGrace = 2 * time.Second

// attemptFunc is one attempt of a call on one endpoint; stale is true for
// the stale-fallback attempts of a read.
type attemptFunc func(ctx context.Context, ep *endpoint, stale bool) error

// run is the retry loop of every KV and Sys call that may go to any node.
//
// One pass tries the candidates in order (see candidates), moving on after
// a retryable error (Unavailable, or an attempt that ran out of
// AttemptTimeout). An endpoint that could not be reached, or answered that
// it is sealed, is marked down. A node that refused the call as OVERLOADED
// stays in rotation; a write refused so ends the pass at once (every node
// would forward it to the same leader) and backs off. After a failed pass a read with
// staleFallback tries the reachable endpoints once more as a stale read.
// Then the call backs off (jittered) and starts another pass, until the
// caller's context ends or RetryBudget has passed since the call began (no
// attempt starts after it, except in the first pass, which tries every
// endpoint whatever it costs). A pass that reached no node at all ends the
// call — at once when every endpoint was already down when it started,
// after a second pass otherwise — once no endpoint was found down within
// unreachableGrace: waiting does not bring a dead cluster back within one
// call, and a cached value may answer instead; but the moment a node dies,
// the others may be about to be reachable again.
//
// fellBack reports that the answer came from a stale-fallback attempt.
func (c *Client) run(ctx context.Context, p policy, fn attemptFunc) (fellBack bool, err error) {
	if c.isClosed() {
		return false, ErrClosed
	}
	ctx, cancel := c.outgoing(ctx)
	defer cancel()
	deadline := time.Now().Add(c.cfg.RetryBudget)
	var lastErr error
	// staleMiss is a NotFound from a stale-fallback attempt: a lagging node
	// may simply not have the secret yet (a write acknowledged just before
	// the leader died), so it is the answer only when nothing better
	// comes within the budget.
	var staleMiss error
	fail := func() (bool, error) {
		if staleMiss != nil {
			return true, staleMiss
		}
		return false, lastErr
	}
	attempts := 0
	for pass := 0; ; pass++ {
		eps, allDown := c.candidates(p)
		answered := false
	pass:
		for _, stale := range []bool{false, true} {
			if stale {
				if !p.staleFallback {
					break
				}
				// Only endpoints still up are worth a stale read.
				eps, _ = c.candidates(p)
				if len(eps) == 0 || (allDown && !answered) {
					break
				}
			}
			tried := make([]*endpoint, 0, len(eps))
			for i, ep := range eps {
				if slices.Contains(tried, ep) || (stale && ep.isDown()) {
					continue
				}
				if attempts++; c.cfg.Retries > 0 && attempts > c.cfg.Retries+1 {
					return fail()
				}
				if pass > 0 && !time.Now().Before(deadline) {
					return fail()
				}
				var others []*endpoint
				if p.hedge {
					others = hedgeOrder(eps, i, tried)
				}
				mayHedge := func() bool {
					if (c.cfg.Retries > 0 && attempts >= c.cfg.Retries+1) || (pass > 0 && !time.Now().Before(deadline)) {
						return false
					}
					attempts++
					return true
				}
				outcomes := c.attemptHedged(ctx, p, stale, ep, others, mayHedge, func(actx context.Context, ep *endpoint) error { return fn(actx, ep, stale) })
				for _, o := range outcomes {
					ep, err := o.ep, o.err
					tried = append(tried, ep)
					if err == nil {
						if ep.isDown() {
							c.markUp(ep)
						}
						return stale, nil
					}
					if stale && IsNotFound(err) {
						staleMiss, answered = err, true
						continue
					}
					lastErr = err
					if ctx.Err() != nil {
						return false, err
					}
					if !Retryable(err) {
						return false, err
					}
					switch {
					case endpointDown(err, ep):
						c.markDown(ep, err)
					case IsOverloaded(err):
						// The node is busy, not wrong: it stays the leader and
						// in rotation. A write backs off before it tries again,
						// since any other node would forward it to the same
						// leader; a read tries another node first.
						answered = true
						if p.write {
							break pass
						}
						ep.answeredUnavailable()
					default:
						answered = true
						ep.answeredUnavailable()
						if p.write {
							// The node we took for the leader could not take the
							// write: find out who leads now.
							c.forgetLeader(ep)
							if c.leaderEndpoint() == nil {
								c.wantLeader()
							}
						}
					}
				}
			}
		}
		if !answered && (allDown || pass >= 1) && c.unreachableFor() >= unreachableGrace {
			return fail()
		}
		if !time.Now().Before(deadline) {
			return fail()
		}
		d := min(passBackoff<<min(pass, 10), maxPassBackoff)
		d = d/2 + mrand.N(d/2+1)
		d = min(d, time.Until(deadline))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fail()
		case <-c.bg.Done():
			t.Stop()
			return false, ErrClosed
		case <-t.C:
		}
	}
}

// attempt runs fn on one endpoint, bounded by DialTimeout for the
// connection and AttemptTimeout for the call; a write to the leader also
// by the leader check (leadercheck.go). An attempt that runs out of
// its own time (not the caller's) is reported as Unavailable, so that the
// call moves on.
func (c *Client) attempt(ctx context.Context, ep *endpoint, write bool, fn func(ctx context.Context) error) error {
	if err := c.ready(ctx, ep); err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel()
	if write {
		var stop func()
		actx, stop = c.watchLeader(actx, ep)
		defer stop()
	}
	began := time.Now()
	err := c.explain(ctx, ep, fn(actx))
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errLeaderMoved) {
		return leaderMovedError(ep, time.Since(began))
	}
	// The node may notice the attempt's deadline (sent along with the
	// call) a moment before this side does.
	if err != nil && ctx.Err() == nil && (actx.Err() != nil || status.Code(err) == codes.DeadlineExceeded) {
		return StatusError(codes.Unavailable, pb.ErrorReason_ATTEMPT_TIMEOUT, fmt.Sprintf("%s did not answer within %s (%v): trying another endpoint", ep.addr, c.cfg.AttemptTimeout, status.Convert(err).Message()))
	}
	return err
}
