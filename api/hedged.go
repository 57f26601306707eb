package api

import (
	"context"
	"fmt"
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

// attemptHedged runs fn on first, and once it has been outstanding for
// Config.HedgeAfter also on second when second is not nil and mayHedge
// agrees (it counts the extra attempt). It returns the outcomes in the
// order they came, ending with the first answer, if any: a success or an
// error that is no reason to try elsewhere (NotFound, PermissionDenied).
// The other attempt is then cancelled and waited for, its outcome dropped;
// when that is the first, it was beaten (see beaten).
// Without a second endpoint, or unless p hedges (never a write), it is a
// plain attempt.
//
// fn may run twice at once: on first and on second.
func (c *Client) attemptHedged(ctx context.Context, p policy, first, second *endpoint, mayHedge func() bool, fn func(ctx context.Context, ep *endpoint) error) []outcome {
	if second == nil || !p.hedge || p.write {
		return []outcome{{first, c.attempt(ctx, first, p.write, func(actx context.Context) error { return fn(actx, first) })}}
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan outcome, 2)
	launch := func(ep *endpoint) {
		go func() {
			done <- outcome{ep, c.attempt(hctx, ep, false, func(actx context.Context) error { return fn(actx, ep) })}
		}()
	}
	began := time.Now()
	launch(first)
	running, hedged := 1, false
	timer := time.NewTimer(c.cfg.HedgeAfter)
	defer timer.Stop()
	var out []outcome
	for running > 0 {
		select {
		case o := <-done:
			running--
			out = append(out, o)
			if o.err != nil && Retryable(o.err) && ctx.Err() == nil {
				continue // the other attempt, if any, may still answer
			}
			if running > 0 {
				cancel()
				if loser := <-done; loser.ep == first {
					c.beaten(first, time.Since(began))
				}
			}
			return out
		case <-timer.C:
			if !hedged && running == 1 && mayHedge() {
				hedged = true
				running++
				launch(second)
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
