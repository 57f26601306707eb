package api

import (
	"context"
	"fmt"
	"slices"
	"time"

	pb "coffer/api/cofferpb"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
)

// outcome is how one attempt of a call ended on one endpoint.
type outcome struct {
	ep  *endpoint
	err error
}

// hedgeOrder is the order in which a read attempt on eps[i] hedges to the
// other endpoints of its pass: those not tried yet first, then those that
// failed earlier in the pass (a node that had no leader a moment ago may
// have one now).
func hedgeOrder(eps []*endpoint, i int, tried []*endpoint) []*endpoint {
	out := make([]*endpoint, 0, len(eps)-1)
	for _, ep := range eps[i+1:] {
		if !slices.Contains(tried, ep) {
			out = append(out, ep)
		}
	}
	for _, ep := range eps {
		if ep != eps[i] && !slices.Contains(out, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// attemptHedged runs fn on first; when p hedges (reads only), then every
// Config.HedgeAfter while no attempt has answered and one is still
// outstanding, it also starts fn on the next of others that is not down,
// not running and has not failed to connect in this attempt, as long as
// mayHedge agrees (it counts the extra attempts) and AttemptTimeout has not
// passed since the first began. It returns the outcomes in the order they
// came, ending with the first answer, if any: a success, or an error that
// is no reason to ask elsewhere (NotFound, PermissionDenied; not a stale
// read's NotFound, which a node that lags may give). The attempts still
// running are then cancelled and waited for, their outcomes dropped; those
// outstanding for HedgeAfter or longer were beaten (see beaten). Without
// an answer it returns once every attempt it started has failed.
//
// A node frozen by docker pause or a stalled VM keeps a read that went to
// it waiting; the hedges answer instead, at about HedgeAfter, or, while the
// others have no leader either (the frozen node led), once they elect one:
// a node that answered "no leader" is asked again at a later tick.
//
// fn may run on several endpoints at once.
func (c *Client) attemptHedged(ctx context.Context, p policy, stale bool, first *endpoint, others []*endpoint, mayHedge func() bool, fn func(ctx context.Context, ep *endpoint) error) []outcome {
	if !p.hedge || p.write || len(others) == 0 {
		return []outcome{{first, c.attempt(ctx, first, p.write, func(actx context.Context) error { return fn(actx, first) })}}
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	began := time.Now()
	done := make(chan outcome, 1+len(others))
	running := make(map[*endpoint]time.Time, 1+len(others)) // when each began
	var noConn []*endpoint
	launch := func(ep *endpoint) {
		running[ep] = time.Now()
		go func() {
			done <- outcome{ep, c.attempt(hctx, ep, false, func(actx context.Context) error { return fn(actx, ep) })}
		}()
	}
	launch(first)
	tick := time.NewTicker(c.cfg.HedgeAfter)
	defer tick.Stop()
	next := 0
	var out []outcome
	for len(running) > 0 {
		select {
		case o := <-done:
			delete(running, o.ep)
			out = append(out, o)
			if o.err != nil && ctx.Err() == nil && (Retryable(o.err) || stale && IsNotFound(o.err)) {
				if endpointDown(o.err, o.ep) {
					noConn = append(noConn, o.ep)
				}
				continue // the others may answer; a later tick asks again
			}
			if len(running) > 0 {
				cancel()
				now := time.Now()
				for ep, since := range running {
					<-done
					// Beaten by an answer, not by the caller giving up.
					if ctx.Err() == nil && now.Sub(since) >= c.cfg.HedgeAfter {
						c.beaten(ep, now.Sub(since))
					}
				}
			}
			return out
		case <-tick.C:
			if time.Since(began) >= c.cfg.AttemptTimeout {
				continue
			}
			for range others {
				ep := others[next%len(others)]
				next++
				if _, busy := running[ep]; busy || ep.isDown() || slices.Contains(noConn, ep) {
					continue
				}
				if mayHedge() {
					launch(ep)
				}
				break
			}
		}
	}
	return out
}

// beaten deals with an endpoint whose attempt was outstanding for longer
// than the hedge and was beaten by another node's answer: one that has not
// even connected is down, as if its attempt had run out of DialTimeout
// (a black-holed address); one that is connected goes after the others for
// a while, like a node that answered Unavailable.
func (c *Client) beaten(ep *endpoint, after time.Duration) {
	if ep.cc.GetState() != connectivity.Ready {
		c.markDown(ep, StatusError(codes.Unavailable, pb.ErrorReason_ENDPOINT_UNREACHABLE,
			fmt.Sprintf("connection error: %s did not connect within %s, while another node answered", ep.addr, after.Round(time.Millisecond))))
		return
	}
	ep.answeredUnavailable()
}
