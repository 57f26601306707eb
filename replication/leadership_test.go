package replication

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestLeadershipContexts: the leader is ready only after its barrier and
// its leader context ends when it loses leadership; a follower's
// FollowingContext ends as soon as the leader it follows is gone, well
// before any deadline; ready observers run once per term with a context
// that ends with it.
func TestLeadershipContexts(t *testing.T) {
	logs := newLogSink(t)
	terms := make(chan context.Context, 8)
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		c.Gossip.DeadServerTimeout = time.Minute
	})
	for _, n := range nodes {
		n.OnReadyLeader(func(ctx context.Context) { terms <- ctx })
	}
	leader := waitForLeader(t, nodes)
	if err := leader.WaitReadyLeader(ctxWait(t)); err != nil {
		t.Fatalf("the leader never became ready: %v", err)
	}
	lctx, ok := leader.LeaderContext()
	if !ok || lctx.Err() != nil {
		t.Fatalf("a ready leader has no live leader context: %v", ok)
	}
	var followers []*tnode
	for _, n := range nodes {
		if n != leader {
			followers = append(followers, n)
			if n.ReadyLeader() {
				t.Fatalf("follower %s says it is a ready leader", n.ID())
			}
			if _, ok := n.LeaderContext(); ok {
				t.Fatalf("follower %s has a leader context", n.ID())
			}
		}
	}

	// A follower's call to the leader, watched by FollowingContext.
	f := followers[0]
	id, _ := f.Following()
	if id != leader.ID() {
		t.Fatalf("%s follows %q, want %s", f.ID(), id, leader.ID())
	}
	fctx, cancel := f.FollowingContext(context.Background(), id)
	defer cancel()
	// A context for a leader the node does not follow ends at once.
	stale, cancelStale := f.FollowingContext(context.Background(), "someone-else")
	defer cancelStale()
	if stale.Err() == nil {
		t.Fatal("FollowingContext of a leader not followed is live")
	}

	killed := time.Now()
	leader.crash()
	select {
	case <-fctx.Done():
		t.Logf("the follower's call context ended %s after the leader died", time.Since(killed).Round(time.Millisecond))
	case <-time.After(testWait):
		t.Fatal("the follower's FollowingContext outlived the dead leader")
	}
	if !errors.Is(fctx.Err(), context.Canceled) {
		t.Fatalf("FollowingContext ended with %v", fctx.Err())
	}
	if lctx.Err() == nil {
		t.Fatal("the killed leader's leader context is still live")
	}

	// A new leader: ready after its barrier, its ready observer ran with a
	// live context of the new term.
	next := waitForLeader(t, followers)
	if err := next.WaitReadyLeader(ctxWait(t)); err != nil {
		t.Fatalf("the new leader never became ready: %v", err)
	}
	// Its ready observer ran with this very term's context (terms of
	// other nodes, or short-lived ones during the election, may come
	// first).
	nctx, ok := next.LeaderContext()
	if !ok {
		t.Fatal("the new leader has no leader context")
	}
	var term context.Context
	deadline := time.After(testWait)
	for term != nctx {
		select {
		case term = <-terms:
		case <-deadline:
			t.Fatal("no ready observer ran for the new leader's term")
		}
	}

	// Stepping down ends the new leader's term too.
	if err := next.TransferLeadership(ctxWait(t)); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	select {
	case <-nctx.Done():
	case <-time.After(testWait):
		t.Fatal("the leader context outlived a leadership transfer")
	}
	if term.Err() == nil {
		t.Fatal("the ready observer's context outlived the term")
	}
	if next.ReadyLeader() {
		t.Fatal("a node that transferred leadership says it is a ready leader")
	}
}

// TestWaitReadyLeaderHonoursContext: on a node that never leads, the wait
// ends with the caller's context and says no leader.
func TestWaitReadyLeaderHonoursContext(t *testing.T) {
	logs := newLogSink(t)
	c := clusterConfig(t, logs, "lonely")
	c.BootstrapExpect = 3 // never bootstraps alone
	n := startNode(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := n.WaitReadyLeader(ctx); !errors.Is(err, ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReadyLeader = %v, want no leader and the deadline", err)
	}
}

// TestNoReadyLeaderWhileHandingOver: while a leadership transfer runs the
// leader is no ready leader (its target may be elected and commit writes
// before it hears of the new term, so reads from its own state could miss
// them), and a transfer that failed leaves it a ready leader again.
func TestNoReadyLeaderWhileHandingOver(t *testing.T) {
	logs := newLogSink(t)
	nets := map[string]*Network{}
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		c.Network = &Network{}
		nets[c.NodeID] = c.Network
		c.Gossip.DeadServerTimeout = time.Minute
	})
	leader := waitForLeader(t, nodes)
	if err := leader.WaitReadyLeader(ctxWait(t)); err != nil {
		t.Fatalf("the leader never became ready: %v", err)
	}
	var target *tnode
	for _, n := range nodes {
		if n != leader {
			target = n
			break
		}
	}
	// The target is cut off and misses entries: the transfer waits to
	// catch it up until Raft gives up (an election timeout).
	nets[target.ID()].Isolate()
	for i := range 3 {
		put(t, leader.Node, fmt.Sprintf("secret/p%d", i), "v")
	}
	done := make(chan error, 1)
	go func() { done <- leader.TransferLeadershipTo(ctxWait(t), target.ID()) }()
	handingOver := false
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var transferErr error
wait:
	for {
		select {
		case transferErr = <-done:
			break wait
		case <-tick.C:
			if leader.IsLeader() && !leader.ReadyLeader() {
				handingOver = true
			}
		}
	}
	if transferErr == nil {
		t.Fatalf("leadership went to %s, which is cut off", target.ID())
	}
	if !handingOver {
		t.Error("the leader stayed a ready leader while it handed leadership over")
	}
	nets[target.ID()].Heal()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := leader.WaitReadyLeader(ctx); err != nil {
		t.Fatalf("after the failed transfer (%v) %s is no ready leader: %v", transferErr, leader.ID(), err)
	}
}
