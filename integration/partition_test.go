package integration

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestMinorityPartition cuts one follower off from the others (its Raft
// traffic and its calls to peers' APIs; clients still reach it). On it:
// writes fail with a retryable Unavailable within the forward hold (~3s;
// the call's own deadline is 5s, so DeadlineExceeded would be a failure
// too); default and linearizable reads fail with Unavailable; stale reads
// succeed, marked stale, until the time since leader contact exceeds the
// read's max_staleness, after which they are refused with Unavailable.
// The majority keeps taking writes. The cut-off node's term does not rise
// (pre-vote), so after healing it converges without deposing the leader.
func TestMinorityPartition(t *testing.T) {
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)
	followers := c.Followers(leader)
	cut, other := followers[0], followers[1]
	majority := c.Client(t, leader, other)

	w, err := majority.Put(ctx(t), &pb.PutRequest{Path: "secret/part/k", Data: map[string]string{"v": "0"}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, w.Index)
	termBefore := c.Status(t, leader).Term

	// The node cut off must be a follower of the leader at that moment
	// (an election since the pick would make it something else).
	if st := c.Status(t, cut); st.RaftState != "follower" || st.LeaderId != leader.ID {
		t.Fatalf("%s is no longer a follower of %s: %+v", cut.ID, leader.ID, st)
	}
	cutAt := time.Now()
	cut.Net.Isolate()

	// Writes on the cut-off node: Unavailable, within the forward hold.
	// The write runs while the reads below are checked.
	type answer struct {
		took time.Duration
		err  error
	}
	writeDone := make(chan answer, 1)
	go func() {
		wctx, cancel := c.Authed(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := cut.KV.Put(wctx, &pb.PutRequest{Path: "secret/part/k", Data: map[string]string{"v": "minority"}})
		writeDone <- answer{time.Since(start), err}
	}()

	// Default and linearizable reads: Unavailable.
	for _, cons := range []pb.Consistency{pb.Consistency_CONSISTENCY_DEFAULT, pb.Consistency_CONSISTENCY_LINEARIZABLE} {
		rctx, cancel := c.Authed(context.Background(), 5*time.Second)
		_, err := cut.KV.Get(rctx, &pb.GetRequest{Path: "secret/part/k", Read: &pb.ReadOptions{Consistency: cons}})
		cancel()
		wantCode(t, cons.String()+" read on the cut-off node", err, codes.Unavailable)
	}

	// Stale reads: served, marked stale, with the old value.
	g, err := cut.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/part/k", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
	if err != nil {
		t.Fatalf("stale read on the cut-off node: %v", err)
	}
	if g.Data["v"] != "0" || !g.ReadMeta.Stale || g.ReadMeta.NodeId != cut.ID {
		t.Fatalf("stale read on the cut-off node: %v %+v", g.Data, g.ReadMeta)
	}

	// Bounded stale reads are refused once the last leader contact is
	// older than the bound.
	const bound = 500 * time.Millisecond
	var refused error
	testcluster.WaitFor(t, 5*time.Second, "a stale read bounded by 500ms to be refused", func() error {
		_, refused = cut.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/part/k", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MaxStalenessMs: bound.Milliseconds()}})
		if refused == nil {
			return fmt.Errorf("still served %s after the cut", time.Since(cutAt).Round(time.Millisecond))
		}
		return nil
	})
	wantCode(t, "stale read beyond max_staleness", refused, codes.Unavailable)
	// The last contact may precede the cut by a heartbeat interval, not by
	// a heartbeat timeout (150ms).
	if since := time.Since(cutAt); since < bound-150*time.Millisecond {
		t.Fatalf("stale read refused %s after the cut, before the %s bound could be exceeded", since, bound)
	}
	if st := c.Status(t, cut); st.LastContactMs <= bound.Milliseconds() {
		t.Fatalf("refused for staleness, but status reports last contact %dms ago", st.LastContactMs)
	}
	// An unbounded stale read is still served.
	if _, err := cut.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/part/k", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}}); err != nil {
		t.Fatalf("unbounded stale read on the cut-off node: %v", err)
	}

	wa := <-writeDone
	t.Logf("write on the cut-off node answered after %s: %v", wa.took.Round(time.Millisecond), wa.err)
	wantCode(t, "write on the cut-off node", wa.err, codes.Unavailable)

	// The majority keeps taking writes meanwhile.
	for i := 1; i <= 10; i++ {
		w, err = majority.Put(ctx(t), &pb.PutRequest{Path: "secret/part/k", Data: map[string]string{"v": strconv.Itoa(i)}})
		if err != nil {
			t.Fatalf("write %d on the majority: %v", i, err)
		}
	}
	if st := c.Status(t, cut); st.AppliedIndex >= w.Index {
		t.Fatalf("the cut-off node applied %d, past the majority's write at %d", st.AppliedIndex, w.Index)
	}

	// Pre-vote: the cut-off node campaigned without raising its term, so
	// it cannot depose the majority's leader when it comes back.
	if st := c.Status(t, cut); st.Term != termBefore {
		t.Fatalf("the cut-off node's term moved from %d to %d while it was cut off", termBefore, st.Term)
	}

	cut.Net.Heal()
	c.WaitForApplied(t, w.Index)
	var g2 *pb.GetResponse
	testcluster.WaitFor(t, 5*time.Second, "a default read on the healed node", func() error {
		rctx, cancel := c.Authed(context.Background(), 2*time.Second)
		defer cancel()
		g2, err = cut.KV.Get(rctx, &pb.GetRequest{Path: "secret/part/k"})
		return err
	})
	if g2.Data["v"] != "10" || g2.Metadata.Version != w.Version || g2.ReadMeta.Stale {
		t.Fatalf("healed node reads %v version %d meta %+v, want v=10 version %d", g2.Data, g2.Metadata.Version, g2.ReadMeta, w.Version)
	}
	if l := c.WaitForLeader(t); l == cut {
		t.Fatalf("the healed node %s took over leadership", cut.ID)
	} else if l != leader {
		// Only a scheduling stall on the majority (a missed 100ms lease)
		// moves it; the cut-off node's term was checked above.
		t.Logf("leader moved from %s to %s during the partition", leader.ID, l.ID)
	}
	// Writes through the healed node are forwarded again.
	wctx, cancel := c.Authed(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cut.KV.Put(wctx, &pb.PutRequest{Path: "secret/part/k", Data: map[string]string{"v": "healed"}}); err != nil {
		t.Fatalf("write through the healed node: %v (code %s)", err, status.Code(err))
	}
}
