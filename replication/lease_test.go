package replication

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"coffer/fsm"
)

// leaderRead is a default read on node n as the server answers one on the
// leader: take the read index, confirm leadership (lease or quorum), wait
// until the state machine applied the index, read.
func leaderRead(n *tnode, path string) (*fsm.Version, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	idx := n.ReadIndex()
	if err := n.ConfirmLeader(ctx); err != nil {
		return nil, err
	}
	if err := n.fsm.WaitApplied(ctx, idx); err != nil {
		return nil, err
	}
	return n.fsm.Get(path, 0)
}

// TestFrozenLeaderServesNoStaleRead is the frozen leader: a leader whose
// process stops (docker pause, SIGSTOP) runs none of its timers, so when
// it wakes Raft still believes it leads while the others have elected a
// new leader and written. Here n1 stands for it: its own Raft timers are
// slow (it would step down only after 6 s without a quorum), and it is cut
// off while the others, with 1.5 s timers, elect and write. Every read it
// answers as leader meanwhile, and after it is reconnected until it steps
// down, must see the new write or fail: its read lease lapsed with its
// contact to a quorum.
func TestFrozenLeaderServesNoStaleRead(t *testing.T) {
	logs := newLogSink(t)
	nets := make(map[string]*Network)
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		nets[c.NodeID] = &Network{}
		c.Network = nets[c.NodeID]
		if c.NodeID == "n1" {
			c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 6*time.Second, 6*time.Second, 6*time.Second
			// The lease its peers' timers allow (0.9 × 1.5 s).
			c.readLease = 1350 * time.Millisecond
			return
		}
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 1500*time.Millisecond, 1500*time.Millisecond, 1500*time.Millisecond
	})
	old := nodes[0]
	if leader := waitForLeader(t, nodes); leader != old {
		if err := leader.TransferLeadershipTo(ctxWait(t), old.ID()); err != nil {
			t.Fatalf("transfer leadership to %s: %v", old.ID(), err)
		}
	}
	if waitForLeader(t, nodes) != old {
		t.Fatalf("%s did not take leadership", old.ID())
	}
	put(t, old.Node, "secret/frozen", "v1")
	waitUntil(t, testWait, "read lease on "+old.ID(), func() error {
		if !old.LeaseHeld() {
			return errors.New("no lease yet")
		}
		return nil
	})
	if v, err := leaderRead(old, "secret/frozen"); err != nil || v.Version != 1 {
		t.Fatalf("read on the leader before the freeze: %+v, %v; want version 1", v, err)
	}

	nets[old.ID()].Isolate()
	rest := nodes[1:]
	newLeader := waitForLeader(t, rest)
	_, idx := put(t, newLeader.Node, "secret/frozen", "v2")
	if !old.IsLeader() {
		t.Fatalf("%s stepped down before the others elected and wrote: the stale window was not reached", old.ID())
	}

	// While cut off, and once reconnected until it steps down, it must not
	// answer version 1.
	reads, refused := 0, 0
	check := func() {
		reads++
		v, err := leaderRead(old, "secret/frozen")
		if err != nil {
			refused++
			return
		}
		if v.Version != 2 {
			t.Fatalf("the old leader %s answered version %d after %s was elected and wrote version 2 at index %d", old.ID(), v.Version, newLeader.ID(), idx)
		}
	}
	for i := 0; i < 3 && old.IsLeader(); i++ {
		check()
	}
	nets[old.ID()].Heal()
	for old.IsLeader() {
		check()
	}
	t.Logf("%d reads on the old leader after the new write, %d refused", reads, refused)
	if reads == 0 {
		t.Fatalf("%s stepped down before any read was tried", old.ID())
	}
	waitUntil(t, testWait, old.ID()+" applies version 2", func() error {
		return old.fsm.WaitApplied(context.Background(), idx)
	})
}

// TestLeaderReadIndexCoversFollowerApplied: a follower applies an entry as
// soon as it learns it is committed, which may be before the leader's own
// state machine has. A read index taken from the leader's applied index
// then misses a write a follower already served, and a read on the leader
// goes back in time. The read index is the committed index.
func TestLeaderReadIndexCoversFollowerApplied(t *testing.T) {
	logs := newLogSink(t)
	gates := make(map[string]*gatedFSM)
	var mu sync.Mutex
	start := func(t *testing.T, cfg Config) *tnode {
		f, err := fsm.Open(filepath.Join(cfg.DataDir, "fsm.db"), fsm.Options{})
		if err != nil {
			t.Fatal(err)
		}
		g := &gatedFSM{FSM: f, open: make(chan struct{})}
		n, err := New(cfg, g)
		if err != nil {
			f.Close()
			t.Fatal(err)
		}
		tn := &tnode{Node: n, fsm: f, cfg: cfg}
		t.Cleanup(tn.stop)
		mu.Lock()
		gates[cfg.NodeID] = g
		mu.Unlock()
		return tn
	}
	nodes := startExpectClusterWith(t, logs, 3, nil, start)
	leader := waitForLeader(t, nodes)
	put(t, leader.Node, "secret/ri", "v1")

	gate := gates[leader.ID()]
	gate.closed.Store(true)
	openGate := sync.OnceFunc(func() { close(gate.open) })
	t.Cleanup(openGate) // before the nodes stop: they wait for their FSM
	done := make(chan error, 1)
	go func() {
		data, err := fsm.EncodeCommand(putCommand("secret/ri", "v2"))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			_, _, err = leader.Apply(ctx, data)
		}
		done <- err
	}()
	var follower *tnode
	for _, n := range nodes {
		if n != leader {
			follower = n
		}
	}
	var served uint64
	waitUntil(t, testWait, "the follower applies version 2", func() error {
		v, err := follower.fsm.Get("secret/ri", 0)
		if err != nil {
			return err
		}
		if v.Version != 2 {
			return fmt.Errorf("version %d", v.Version)
		}
		served = follower.fsm.AppliedIndex()
		return nil
	})
	if leader.fsm.AppliedIndex() >= served {
		t.Fatalf("the leader's state machine applied %d, not behind the follower's %d: the gate did not hold", leader.fsm.AppliedIndex(), served)
	}
	ri := leader.ReadIndex()
	if ri < served {
		t.Fatalf("leader read index %d is below index %d, which a follower already applied and may have served (leader applied %d)", ri, served, leader.fsm.AppliedIndex())
	}
	openGate()
	v, err := leaderRead(leader, "secret/ri")
	if err != nil || v.Version != 2 {
		t.Fatalf("read on the leader after a follower served version 2: %+v, %v", v, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("write of version 2: %v", err)
	}
}

// TestReadIndexSkipsEntriesTheFSMNeverSees: a leader's commit index often
// names its barrier (or a new term's noop), which the state machine is
// never handed; the read index is the newest entry it is, so a reader
// waiting for it does not wait for ever.
func TestReadIndexSkipsEntriesTheFSMNeverSees(t *testing.T) {
	logs := newLogSink(t)
	nodes := startExpectCluster(t, logs, 3, nil)
	leader := waitForLeader(t, nodes)
	_, idx := put(t, leader.Node, "secret/barrier", "v1")
	if err := leader.Barrier(ctxWait(t)); err != nil {
		t.Fatal(err)
	}
	if ci := leader.CommitIndex(); ci <= idx {
		t.Fatalf("commit index %d after a barrier, want above the write's %d", ci, idx)
	}
	if ri := leader.ReadIndex(); ri != idx {
		t.Fatalf("read index %d, want the write's index %d (commit index %d)", ri, idx, leader.CommitIndex())
	}
	for _, n := range nodes {
		if err := n.fsm.WaitApplied(ctxWait(t), leader.ReadIndex()); err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
	}
}
