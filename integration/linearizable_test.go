package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"coffer/api"
	"coffer/integration/chaos"
	"coffer/internal/testcluster"
)

// TestLinearizableReadsAcrossLeaderKills: three writers and four readers,
// each with its own api.Client over every endpoint in the default
// configuration (the stale fallback on), run while the leader is killed
// twice: kill it, wait for a new leader, restart and unseal the killed
// node, then kill the new leader the same way. Every read asks for
// linearizable consistency. The workload, its history and the checks are
// integration/chaos's (Load, ReadFinal, Check).
//
// A linearizable read succeeds linearizably or fails: the history of
// writes and successful reads is linearizable (porcupine, a register per
// key; a write whose outcome is unknown stays open-ended), no read came
// back marked stale, as a fallback or from a cache, reads were in flight
// while each kill left the cluster without a leader, and reads succeeded
// again after each kill. Failed reads are allowed and counted.
func TestLinearizableReadsAcrossLeaderKills(t *testing.T) {
	// Dead members stay voters: the killed node comes back as one.
	c := NewCluster(t, 3, ClusterOptions{DeadServerTimeout: time.Minute})
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	c.WaitForLeader(t)

	ctx := testcluster.Context(t, 3*time.Minute)
	begin := time.Now()
	load, err := chaos.StartLoad(ctx, chaos.LoadConfig{
		Endpoints: c.APIAddrs(), Token: c.Token, Prefix: "secret/lin", Keys: 3,
		Writers: 3, Readers: 4,
		StaleEvery: -1, LinearizableEvery: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(load.Stop)
	wait := func(n int, what string, match func(chaos.Op) bool) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := load.WaitOps(wctx, n, what, match); err != nil {
			t.Fatal(err)
		}
	}
	answeredSince := func(t0 time.Time) func(chaos.Op) bool {
		return func(op chaos.Op) bool { return op.Linearizable() && op.OK() && op.Start.After(t0) }
	}
	ackedSince := func(t0 time.Time) func(chaos.Op) bool {
		return func(op chaos.Op) bool { return op.Kind == chaos.OpWrite && op.OK() && op.Start.After(t0) }
	}
	wait(20, "linearizable reads answered before the first kill", answeredSince(begin))
	wait(20, "writes acknowledged before the first kill", ackedSince(begin))

	// A kill: the node, when it was killed, and when the test saw the
	// survivors agree on a new leader (between the two, there was none).
	type kill struct {
		node             string
		at, leaderAgreed time.Time
	}
	var kills []kill
	for round := 1; round <= 2; round++ {
		leader := c.WaitForLeader(t)
		term := c.Status(t, leader).Term
		at := time.Now()
		c.Kill(leader)
		newLeader := c.WaitForNewLeader(t, leader)
		kills = append(kills, kill{leader.ID, at, time.Now()})
		if st := c.Status(t, newLeader); st.Term <= term {
			t.Fatalf("kill %d: term did not rise (%d before, %d after)", round, term, st.Term)
		}
		// Both writes and linearizable reads begun after the kill are
		// answered, without the killed node.
		wait(10, fmt.Sprintf("writes begun after kill %d acknowledged", round), ackedSince(at))
		wait(10, fmt.Sprintf("linearizable reads begun after kill %d answered", round), answeredSince(at))

		// The killed node comes back, unsealed, caught up and a reachable
		// voter, before the next kill needs it for a quorum.
		c.Restart(t, leader)
		c.Unseal(t, leader, round)
		c.WaitForApplied(t, c.Status(t, newLeader).AppliedIndex)
		waitVoters(t, c, newLeader, 3)
		t.Logf("kill %d: %s killed, %s agreed on after %s, %s back", round, leader.ID, newLeader.ID,
			kills[round-1].leaderAgreed.Sub(at).Round(time.Millisecond), leader.ID)
	}
	wait(10, "linearizable reads answered after the last restart", answeredSince(time.Now()))
	load.Stop()

	ops := load.History().Ops()
	final, err := chaos.ReadFinal(ctx, api.Config{Endpoints: c.APIAddrs(), Token: c.Token}, load.Keys())
	if err != nil {
		t.Fatal(err)
	}
	rep := chaos.Check(ops, final, chaos.CheckOptions{})
	for _, v := range rep.Violations {
		t.Errorf("%s: %s", v.Check, v.Detail)
	}
	if rep.Reads == 0 || rep.LinearizableReads+rep.FailedLinearizableReads != rep.Reads {
		t.Fatalf("%d reads, %d of them linearizable: the load was told to make only linearizable reads", rep.Reads, rep.LinearizableReads+rep.FailedLinearizableReads)
	}

	// Checked here too, not only by Check: the property this test is for.
	var downgraded, failed []chaos.Op
	for _, op := range ops {
		switch {
		case op.Downgraded():
			downgraded = append(downgraded, op)
		case op.Linearizable() && !op.OK():
			failed = append(failed, op)
		}
	}
	if len(downgraded) > 0 {
		first := downgraded[0]
		t.Errorf("%d linearizable reads were answered stale, as a fallback or from a cache, the first: %s at %s",
			len(downgraded), first, first.Start.Format("15:04:05.000"))
	}
	for i, k := range kills {
		end := time.Now()
		if i+1 < len(kills) {
			end = kills[i+1].at
		}
		var inFlight, inFlightOK, after, afterOK int
		for _, op := range ops {
			if !op.Linearizable() {
				continue
			}
			if !op.Start.After(k.leaderAgreed) && !op.End.Before(k.at) {
				inFlight++
				if op.OK() {
					inFlightOK++
				}
			}
			if op.Start.After(k.at) && op.Start.Before(end) {
				after++
				if op.OK() {
					afterOK++
				}
			}
		}
		t.Logf("kill %d (%s): %d linearizable reads in flight while there was no agreed leader (%d answered, %d failed); %d begun after the kill until the next one or the end (%d answered, %d failed)",
			i+1, k.node, inFlight, inFlightOK, inFlight-inFlightOK, after, afterOK, after-afterOK)
		if inFlight == 0 {
			t.Errorf("kill %d: no linearizable read was in flight between the kill and the new leader: the test did not exercise the failover", i+1)
		}
		if afterOK == 0 {
			t.Errorf("kill %d: no linearizable read begun after it succeeded", i+1)
		}
	}
	for i, op := range failed {
		if i == 5 {
			t.Logf("… %d more failed linearizable reads", len(failed)-i)
			break
		}
		t.Logf("failed linearizable read: %s at %s after %s", op, op.Start.Format("15:04:05.000"), op.Latency().Round(time.Millisecond))
	}
	t.Logf("%d ops: %d writes (%d acknowledged, %d failed, %d of those took effect); %d linearizable reads: %d answered, %d failed; porcupine %s",
		rep.Ops, rep.Writes, rep.AckedWrites, rep.FailedWrites, rep.AmbiguousWrites,
		rep.Reads, rep.LinearizableReads, rep.FailedLinearizableReads, rep.LinearizabilityTime.Round(time.Millisecond))
}
