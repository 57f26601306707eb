package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "coffer/api/cofferpb"

	"google.golang.org/grpc/codes"
)

// DefaultLeaderCheck is how long a write to the leader may be outstanding
// before the client asks another node whether that node still leads.
const DefaultLeaderCheck = 200 * time.Millisecond

// A leader whose process is frozen (docker pause, SIGSTOP, a VM stall)
// keeps its connections open and answers nothing: a write sent to it
// would wait out AttemptTimeout (5 s) although the other nodes elect a new
// leader within about a second. The leader check bounds that: once a
// write to the endpoint the client takes for the leader has been
// outstanding for Config.LeaderCheck, the client asks the other nodes,
// all at once, to answer as soon as they follow another leader
// (Sys.Status with wait_for_leader_not: an event on the node, not a poll,
// held for at most leaderWait). As soon as one names another leader it
// abandons the attempt (LEADER_UNRESPONSIVE) and sends the write to the
// new leader with the same request id: the cluster makes one version of
// it whichever of the two sends commits. A slow leader that others still
// follow is left alone: only a new leader ends the attempt. Concurrent
// writes share one round of questions (leaderRound); rounds start at most
// every LeaderCheck, so a node too old to wait (it answers at once) is
// polled at that pace.
//
// Polling every LeaderCheck instead put the write's return on the first
// tick after the election: 0.63, 0.83 or 1.03 s after a 2 s pause, by
// the election's luck (the chaos suite's frozen-leader goal is 1 s).

// leaderWait is how long a node asked in a round holds the question
// before it answers with the leader it still follows.
const leaderWait = 2 * time.Second

// errLeaderMoved is the cause that ends an attempt on a leader another
// node no longer follows.
var errLeaderMoved = errors.New("api: another node names a new leader")

// leaderRound is one round of asking the other nodes who leads, shared by
// the writes outstanding on the same leader.
type leaderRound struct {
	ep       *endpoint // the endpoint taken for the leader, not asked
	leaderID string    // its node id
	started  time.Time
	done     chan struct{}
	// id and addr name the new leader when found.
	id, addr string
	found    bool
}

// watchLeader returns the context of a write attempt on ep: when ep is the
// leader the client knows, it ends with cause errLeaderMoved once another
// node names a new leader while the attempt is still outstanding. stop
// ends the watch (call it when the attempt returns).
func (c *Client) watchLeader(ctx context.Context, ep *endpoint) (wctx context.Context, stop func()) {
	l := c.leader.Load()
	if c.cfg.DisableLeaderCheck || l == nil || l.ep != ep || l.id == "" || len(c.endpoints()) < 2 {
		return ctx, func() {}
	}
	wctx, cancel := context.WithCancelCause(ctx)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return wctx, func() { cancel(nil) }
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		t := time.NewTimer(c.cfg.LeaderCheck)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-c.bg.Done():
				return
			case <-t.C:
			}
			asked := time.Now()
			if r := c.askLeader(wctx, ep, l.id); r != nil && r.found {
				c.noteLeader(r.id, r.addr)
				cancel(errLeaderMoved)
				return
			}
			t.Reset(max(c.cfg.LeaderCheck-time.Since(asked), 0))
		}
	}()
	return wctx, func() { cancel(nil) }
}

// askLeader joins the round asking the other nodes whether one follows a
// leader other than leaderID (at ep), or starts one when none is in
// flight or recent. It returns nil when ctx ends first.
func (c *Client) askLeader(ctx context.Context, ep *endpoint, leaderID string) *leaderRound {
	c.mu.Lock()
	r := c.round
	if r == nil || r.ep != ep || r.leaderID != leaderID || time.Since(r.started) >= c.cfg.LeaderCheck/2 && isClosed(r.done) {
		r = &leaderRound{ep: ep, leaderID: leaderID, started: time.Now(), done: make(chan struct{})}
		if c.closed {
			c.mu.Unlock()
			return nil
		}
		c.round = r
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer close(r.done)
			r.id, r.addr, r.found = c.otherLeader(ep, leaderID)
		}()
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r
	case <-ctx.Done():
		return nil
	}
}

// isClosed reports whether ch is closed.
func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// otherLeader asks the healthy endpoints other than ep, all at once, to
// answer once they follow a leader other than leaderID (or leaderWait has
// passed), and returns the first leader named that is not leaderID; the
// other questions are then withdrawn.
func (c *Client) otherLeader(ep *endpoint, leaderID string) (id, addr string, found bool) {
	ctx, cancel := context.WithTimeout(c.bg, leaderWait+c.cfg.LeaderCheck)
	defer cancel()
	eps := c.endpoints()
	answers := make(chan *pb.StatusResponse, len(eps))
	asked := 0
	for _, other := range eps {
		if other == ep || other.isDown() {
			continue
		}
		asked++
		go func() { answers <- askFollows(ctx, other, leaderID) }()
	}
	for range asked {
		if st := <-answers; st != nil && !found && st.LeaderId != "" && st.LeaderId != leaderID {
			id, addr, found = st.LeaderId, st.LeaderAddress, true
			cancel()
		}
	}
	return id, addr, found
}

// askFollows asks ep to answer once it follows a leader other than
// leaderID, or after leaderWait; nil when it could not answer.
func askFollows(ctx context.Context, ep *endpoint, leaderID string) *pb.StatusResponse {
	st, err := pb.NewSysClient(ep.cc).Status(ctx, &pb.StatusRequest{WaitForLeaderNot: leaderID, WaitMs: uint32(leaderWait / time.Millisecond)})
	if err != nil {
		return nil
	}
	ep.learn(st.NodeId, st.AppliedIndex)
	return st
}

// leaderMovedError is the error of an attempt abandoned by the leader
// check.
func leaderMovedError(ep *endpoint, after time.Duration) error {
	return StatusError(codes.Unavailable, pb.ErrorReason_LEADER_UNRESPONSIVE,
		fmt.Sprintf("%s did not answer the write within %s and another node names a new leader: sending it there (same request id)", ep.addr, after.Round(time.Millisecond)))
}
