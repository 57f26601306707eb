package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Three identical nodes with bootstrap_expect=3 form one cluster; writes reach
// every FSM; pre-vote ran; metadata, leadership transfer and a graceful leave
// behave.
func TestBootstrapExpectFormsOneCluster(t *testing.T) {
	logs := newLogSink(t)
	preVoted := logs.watch("pre-vote successful, starting election")
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		// Only a graceful leave may remove a server in this test.
		c.Gossip.DeadServerTimeout = time.Minute
	})
	leader := waitForLeader(t, nodes)

	// Every node bootstrapped (or received) the same configuration: all
	// three as voters at their gossiped Raft addresses.
	for _, n := range nodes {
		peers, err := n.Configuration()
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range peers {
			if p.ID != nodes[i].ID() || p.Address != nodes[i].Addr() || !p.Voter {
				t.Fatalf("%s: peer %d is %+v, want voter %s at %s", n.ID(), i, p, nodes[i].ID(), nodes[i].Addr())
			}
		}
	}
	if !leader.preVote || !preVoted.Load() {
		t.Fatalf("pre-vote: enabled %v, a node won a pre-vote %v", leader.preVote, preVoted.Load())
	}

	// A write on the leader is applied on all three FSMs.
	_, idx := put(t, leader.Node, "secret/a", "ct")
	ctx := ctxWait(t)
	for _, n := range nodes {
		if err := n.fsm.WaitApplied(ctx, idx); err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
	}

	// Gossip metadata: everyone sees everyone alive, with Raft state, and
	// knows the leader's API address.
	waitUntil(t, testWait, "members", func() error {
		for _, n := range nodes {
			ms := n.Members()
			if len(ms) != 3 {
				return fmt.Errorf("%s sees %d members", n.ID(), len(ms))
			}
			for i, m := range ms {
				if m.ID != nodes[i].ID() || m.Status != StatusAlive || !m.HasRaftState || m.RaftAddr != nodes[i].Addr() ||
					m.APIAddr != "api-"+m.ID+":8400" || m.GossipAddr != nodes[i].GossipAddr() || m.BootstrapExpect != 3 || m.Version != "test" {
					return fmt.Errorf("%s sees %+v", n.ID(), m)
				}
			}
			if got := n.LeaderAPIAddr(); got != "api-"+leader.ID()+":8400" {
				return fmt.Errorf("%s: leader API %q", n.ID(), got)
			}
		}
		return nil
	})

	// Sealed travels through gossip.
	var follower *tnode
	for _, n := range nodes {
		if n != leader {
			follower = n
			break
		}
	}
	var changes atomic.Int64
	leader.OnMembershipChange(func() { changes.Add(1) })
	if m, _ := leader.MemberByID(follower.ID()); m.Sealed {
		t.Fatalf("%s gossips sealed before SetSealed", follower.ID())
	}
	follower.SetSealed(true)
	waitUntil(t, testWait, "sealed gossiped", func() error {
		for _, n := range nodes {
			if m, _ := n.MemberByID(follower.ID()); !m.Sealed {
				return fmt.Errorf("%s sees %s unsealed", n.ID(), follower.ID())
			}
		}
		if changes.Load() == 0 {
			return errors.New("no membership change callback")
		}
		return nil
	})
	follower.SetSealed(false)
	waitUntil(t, testWait, "unsealed gossiped", func() error {
		if m, _ := leader.MemberByID(follower.ID()); m.Sealed {
			return errors.New("still sealed")
		}
		return nil
	})

	// Leadership transfer: refused on a follower, moves leadership on the
	// leader, to a chosen voter too.
	if err := follower.TransferLeadership(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("transfer on a follower: %v", err)
	}
	if err := follower.TransferLeadershipTo(ctx, leader.ID()); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("transfer-to on a follower: %v", err)
	}
	if err := leader.TransferLeadershipTo(ctx, "nobody"); !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("transfer to an unknown id: %v", err)
	}
	term := leader.Term()
	if err := leader.TransferLeadership(ctx); err != nil {
		t.Fatal(err)
	}
	next := waitForLeader(t, nodes)
	if next == leader || next.Term() <= term {
		t.Fatalf("after transfer: leader %s term %d (was %s term %d)", next.ID(), next.Term(), leader.ID(), term)
	}
	target := leader // hand it back to the old leader, by name
	if err := next.TransferLeadershipTo(ctx, target.ID()); err != nil {
		t.Fatal(err)
	}
	if got := waitForLeader(t, nodes); got != target {
		t.Fatalf("transfer to %s: leader is %s", target.ID(), got.ID())
	}
	leader = target

	// A graceful leave is removed at once (the dead-server timeout is a
	// minute here), and the others see it as left.
	var leaving *tnode
	var rest []*tnode
	for _, n := range nodes {
		if n != leader && leaving == nil {
			leaving = n
			continue
		}
		rest = append(rest, n)
	}
	if err := leaving.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	leaving.stop()
	want := map[string]bool{}
	for _, n := range rest {
		want[n.ID()] = true
	}
	for _, n := range rest {
		waitForPeers(t, n, want)
		waitUntil(t, testWait, n.ID()+" sees the departure", func() error {
			if s := memberStatus(n, leaving.ID()); s != StatusLeft {
				return fmt.Errorf("%s is %q, want left", leaving.ID(), s)
			}
			return nil
		})
	}
	put(t, leader.Node, "secret/a", "ct2")
}

// A node started later without bootstrap_expect is added as a non-voter and
// promoted once caught up; a read replica is added and never promoted.
func TestJoinPromoteAndReadReplica(t *testing.T) {
	logs := newLogSink(t)
	var reports reportLog
	var caughtUp atomic.Bool
	var mu sync.Mutex
	asked := map[string]int{}
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		c.onReconcile = reports.add
		c.CaughtUp = func(ctx context.Context, m Member) bool {
			mu.Lock()
			asked[m.ID]++
			mu.Unlock()
			return caughtUp.Load()
		}
	})
	leader := waitForLeader(t, nodes)
	seeds := []string{nodes[0].GossipAddr(), nodes[1].GossipAddr()}

	c4 := clusterConfig(t, logs, "n4")
	c4.Gossip.Join = seeds
	c4.onReconcile, c4.CaughtUp = reports.add, nodes[0].cfg.CaughtUp
	n4 := startNode(t, c4)
	waitForPeers(t, leader, map[string]bool{"n1": true, "n2": true, "n3": true, "n4": false})

	// Not caught up: stays a non-voter although asked repeatedly.
	waitUntil(t, testWait, "leader asks whether n4 caught up", func() error {
		mu.Lock()
		defer mu.Unlock()
		if asked["n4"] < 3 {
			return fmt.Errorf("asked %d times", asked["n4"])
		}
		return nil
	})
	if err := peersAre(leader, map[string]bool{"n1": true, "n2": true, "n3": true, "n4": false}); err != nil {
		t.Fatalf("promoted before caught up: %v", err)
	}
	caughtUp.Store(true)
	waitForPeers(t, leader, map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true})

	c5 := clusterConfig(t, logs, "n5")
	c5.Gossip.Join = seeds
	c5.ReadReplica = true
	c5.onReconcile, c5.CaughtUp = reports.add, nodes[0].cfg.CaughtUp
	n5 := startNode(t, c5)
	want := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": false}
	waitForPeers(t, leader, want)
	added := time.Now()
	// Rounds well past the promotion delay keep it a non-voter.
	reports.waitFor(t, added.Add(3*testPromoteAfter), "a round that keeps the read replica", func(r reconcileReport) bool {
		return has(r.Replicas, "n5")
	})
	if err := peersAre(leader, want); err != nil {
		t.Fatalf("read replica: %v", err)
	}
	mu.Lock()
	if asked["n5"] != 0 {
		t.Errorf("the leader asked whether the read replica caught up (%d times)", asked["n5"])
	}
	mu.Unlock()
	if m, _ := leader.MemberByID("n5"); !m.ReadReplica {
		t.Fatalf("n5 gossips %+v", m)
	}

	// Both receive the log (written through whoever leads now: on a loaded
	// machine leadership may have moved since).
	_, idx := put(t, waitForLeader(t, append(append([]*tnode{}, nodes...), n4)).Node, "secret/b", "ct")
	ctx := ctxWait(t)
	for _, n := range []*tnode{n4, n5} {
		if err := n.fsm.WaitApplied(ctx, idx); err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
	}
}

// In a five-node cluster a crashed follower is removed once it has been dead
// for DeadServerTimeout.
func TestDeadServerRemovedWhenQuorumAllows(t *testing.T) {
	var reports reportLog
	_, victim, rest := clusterWithVictim(t, 5, &reports)
	want := voters(rest)
	crashed := time.Now()
	victim.crash()
	rep := reports.waitFor(t, crashed, "removal of "+victim.ID(), func(r reconcileReport) bool {
		return has(r.Removed, victim.ID())
	})
	// Death is noticed after the crash, and removal waits a further
	// DeadServerTimeout.
	if d := rep.at.Sub(crashed); d < time.Second {
		t.Fatalf("removed %s %s after the crash, before the 1s dead-server timeout", victim.ID(), d)
	}
	cur := waitForLeader(t, rest)
	waitForPeers(t, cur, want)
	if s := memberStatus(cur, victim.ID()); s != StatusDead {
		t.Fatalf("%s sees %s as %q", cur.ID(), victim.ID(), s)
	}
	put(t, cur.Node, "secret/a", "after removal")
}

// In a three-node cluster with two followers failed, nothing is removed.
// Follower A loses only its gossip (Raft still reaches it, so it is kept);
// then follower B crashes: B is removable by itself, but the voters left (the
// leader and A, which gossip calls dead) would have no healthy quorum, so it
// is kept too. When A crashes as well, the leader steps down and the
// configuration still holds all three.
func TestFailedServersKeptWithoutQuorum(t *testing.T) {
	logs := newLogSink(t)
	var reports reportLog
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		c.onReconcile = reports.add
		c.Gossip.DeadServerTimeout = 300 * time.Millisecond
	})
	leader := waitForLeader(t, nodes)
	all := map[string]bool{"n1": true, "n2": true, "n3": true}
	var a, b *tnode
	for _, n := range nodes {
		switch {
		case n == leader:
		case a == nil:
			a = n
		default:
			b = n
		}
	}

	start := time.Now()
	if err := a.gossip.stop(); err != nil {
		t.Fatal(err)
	}
	reports.waitFor(t, start, a.ID()+" kept as reachable", func(r reconcileReport) bool {
		return has(r.KeptReachable, a.ID())
	})

	start = time.Now()
	b.crash()
	reports.waitFor(t, start, b.ID()+" kept for quorum", func(r reconcileReport) bool {
		return has(r.KeptForQuorum, b.ID()) && has(r.KeptReachable, a.ID())
	})
	if !leader.IsLeader() {
		t.Fatal("the leader lost leadership while raft still reached a majority")
	}
	if err := peersAre(leader, all); err != nil {
		t.Fatal(err)
	}
	if _, ok := reports.find(time.Time{}, func(r reconcileReport) bool { return len(r.Removed) > 0 }); ok {
		t.Fatal("a server was removed")
	}

	a.crash()
	waitUntil(t, testWait, "leader steps down", func() error {
		if leader.IsLeader() {
			return errors.New("still leader")
		}
		return nil
	})
	if err := peersAre(leader, all); err != nil {
		t.Fatal(err)
	}
}

// A node with another cluster key (or none) never gets in.
func TestWrongClusterKeyCannotJoin(t *testing.T) {
	logs := newLogSink(t)
	key := bytes.Repeat([]byte{1}, 32)
	c1 := clusterConfig(t, logs, "k1")
	c1.Gossip.ClusterKey = key
	c1.Bootstrap = true
	k1 := startNode(t, c1)
	c2 := clusterConfig(t, logs, "k2")
	c2.Gossip.ClusterKey = key
	c2.Gossip.Join = []string{k1.GossipAddr()}
	k2 := startNode(t, c2)
	waitUntil(t, testWait, "same key joins", func() error {
		if s := memberStatus(k1, "k2"); s != StatusAlive {
			return fmt.Errorf("k1 sees k2 %q", s)
		}
		return nil
	})

	cw := clusterConfig(t, logs, "wrong")
	cw.Gossip.ClusterKey = bytes.Repeat([]byte{2}, 32)
	cw.Gossip.Join = []string{k1.GossipAddr(), k2.GossipAddr()}
	wrong := startNode(t, cw)
	cn := clusterConfig(t, logs, "nokey")
	cn.Gossip.Join = []string{k1.GossipAddr()}
	nokey := startNode(t, cn)
	waitUntil(t, testWait, "join attempts fail", func() error {
		if w, n := wrong.gossip.joinFailures.Load(), nokey.gossip.joinFailures.Load(); w < 3 || n < 3 {
			return fmt.Errorf("failed attempts: wrong key %d, no key %d", w, n)
		}
		return nil
	})
	for _, n := range []*tnode{k1, k2} {
		for _, m := range n.Members() {
			if m.ID == "wrong" || m.ID == "nokey" {
				t.Fatalf("%s sees %+v", n.ID(), m)
			}
		}
	}
	for _, n := range []*tnode{wrong, nokey} {
		if ms := n.Members(); len(ms) != 1 {
			t.Fatalf("%s sees %d members", n.ID(), len(ms))
		}
	}
}

// Seeds that do not answer yet are retried until one does.
func TestJoinRetriedUntilSeedAnswers(t *testing.T) {
	logs := newLogSink(t)
	ca := clusterConfig(t, logs, "a")
	a := startNode(t, ca)
	addr := a.GossipAddr()
	a.crash()

	cb := clusterConfig(t, logs, "b")
	cb.Gossip.Join = []string{addr}
	b := startNode(t, cb)
	waitUntil(t, testWait, "a failed join", func() error {
		if b.gossip.joinFailures.Load() == 0 {
			return errors.New("no failed attempt yet")
		}
		return nil
	})

	ca = clusterConfig(t, logs, "a")
	ca.Gossip.BindAddr = addr
	ca.Sealed = true // gossiped from the first message on
	if _, err := tryStartNode(t, ca); err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			t.Skipf("port of %s was taken while it was down: %v", addr, err)
		}
		t.Fatal(err)
	}
	waitUntil(t, testWait, "b joins the seed once it answers", func() error {
		if m, ok := b.MemberByID("a"); !ok || m.Status != StatusAlive || !m.Sealed {
			return fmt.Errorf("b sees a as %+v", m)
		}
		return nil
	})
}

// A server an operator removes stays out of Raft while it is alive in
// gossip (killed a moment ago, or still running), however many rounds the
// leader reconciles, and is added back once it restarts. Without the
// leader's memory of the removal, the next round added it back as a
// non-voter (CI's e2e TestCluster found it after a kill and remove-peer).
func TestOperatorRemovalHoldsUntilRestart(t *testing.T) {
	var reports reportLog
	leader, victim, others := clusterWithVictim(t, 3, &reports)
	rest := voters(others)

	removed := time.Now()
	if err := leader.RemoveServer(ctxWait(t), victim.ID()); err != nil {
		t.Fatalf("remove %s: %v", victim.ID(), err)
	}
	// The victim runs on, alive in gossip: a second of rounds (100 ms
	// apart) leaves it out.
	reports.waitFor(t, removed.Add(time.Second), "rounds a second after the removal", func(reconcileReport) bool { return true })
	if r, ok := reports.find(removed, func(r reconcileReport) bool { return has(r.Added, victim.ID()) }); ok {
		t.Fatalf("%s after the removal, the leader added %s back: %+v", r.at.Sub(removed), victim.ID(), r.reconcileReport)
	}
	if _, ok := reports.find(removed, func(r reconcileReport) bool { return has(r.KeptOut, victim.ID()) }); !ok {
		t.Fatalf("no round reported keeping %s out", victim.ID())
	}
	if s := memberStatus(leader, victim.ID()); s != StatusAlive {
		t.Fatalf("the leader's gossip sees %s as %q: the test needs it alive", victim.ID(), s)
	}
	if !leader.IsLeader() {
		t.Fatal("the removed server unseated the leader")
	}
	if err := peersAre(leader, rest); err != nil {
		t.Fatal(err)
	}
	put(t, leader.Node, "secret/a", "after removal")

	// Restarted on its addresses (a new Boot), it rejoins and is promoted
	// once stable.
	cfg := victim.cfg
	g := *cfg.Gossip
	cfg.Gossip = &g
	cfg.BindAddr, g.BindAddr, g.Join = victim.Addr(), victim.GossipAddr(), []string{leader.GossipAddr()}
	victim.stop()
	back := startNode(t, cfg)
	waitForPeers(t, leader, voters(append(others, back)))
}

// clusterWithVictim starts size nodes that report their reconciliation
// rounds to reports, and returns the leader, a follower to fail (the
// victim) and the nodes other than the victim.
func clusterWithVictim(t *testing.T, size int, reports *reportLog) (leader, victim *tnode, rest []*tnode) {
	t.Helper()
	nodes := startExpectCluster(t, newLogSink(t), size, func(c *Config) { c.onReconcile = reports.add })
	leader = waitForLeader(t, nodes)
	for _, n := range nodes {
		if n != leader && victim == nil {
			victim = n
			continue
		}
		rest = append(rest, n)
	}
	return leader, victim, rest
}

// voters is the Raft configuration of nodes as voters (id → true).
func voters(nodes []*tnode) map[string]bool {
	out := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		out[n.ID()] = true
	}
	return out
}
