package integration

import (
	"fmt"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestThreeNodesFormOneCluster: identical nodes with bootstrap_expect=3
// form one cluster; init through a follower works; every node unseals; a
// write through a follower is readable on every node at every consistency.
func TestThreeNodesFormOneCluster(t *testing.T) {
	c := NewCluster(t, 3)
	leader := c.WaitForLeader(t)
	followers := c.Followers(leader)
	if len(followers) != 2 {
		t.Fatalf("followers %v", ids(followers))
	}
	c.Init(t, followers[0])
	c.UnsealAll(t)

	put, err := followers[1].KV.Put(c.Auth(t), &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"password": "hunter2"}})
	if err != nil {
		t.Fatalf("put through follower %s: %v", followers[1].ID, err)
	}
	if put.Version != 1 || put.Index == 0 {
		t.Fatalf("put: %+v", put)
	}
	for _, n := range c.Running() {
		for _, cons := range []pb.Consistency{pb.Consistency_CONSISTENCY_STALE, pb.Consistency_CONSISTENCY_DEFAULT, pb.Consistency_CONSISTENCY_LINEARIZABLE} {
			g, err := n.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/app/db", Read: &pb.ReadOptions{Consistency: cons, MinIndex: put.Index}})
			if err != nil {
				t.Fatalf("%s read on %s: %v", cons, n.ID, err)
			}
			if g.Data["password"] != "hunter2" || g.ReadMeta.NodeId != n.ID || g.ReadMeta.LeaderId != leader.ID {
				t.Fatalf("%s read on %s: %+v", cons, n.ID, g)
			}
			if g.ReadMeta.AppliedIndex < put.Index {
				t.Fatalf("%s read on %s at index %d, before the write's %d", cons, n.ID, g.ReadMeta.AppliedIndex, put.Index)
			}
			wantStale := cons == pb.Consistency_CONSISTENCY_STALE && n != leader
			if g.ReadMeta.Stale != wantStale {
				t.Fatalf("%s read on %s: stale=%v", cons, n.ID, g.ReadMeta.Stale)
			}
		}
	}
	// Default reads on a follower without min_index still see the write
	// (read index), right after it was acknowledged.
	put2, err := leader.KV.Put(c.Auth(t), &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"password": "v2"}})
	if err != nil {
		t.Fatal(err)
	}
	g, err := followers[0].KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/app/db"})
	if err != nil || g.Data["password"] != "v2" || g.Metadata.Version != put2.Version {
		t.Fatalf("default read on a follower after a write: %v %v", g, err)
	}

	// Status on a follower names the leader and its API address.
	st, err := followers[0].Sys.Status(ctx(t), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaderId != leader.ID || st.LeaderAddress != leader.APIAddr() || st.RaftState != "follower" || st.Term == 0 {
		t.Fatalf("follower status: %+v", st)
	}
	// Gossip carries the unsealed state to every member shortly.
	testcluster.WaitFor(t, 5*time.Second, "members alive, unsealed voters", func() error {
		mem, err := followers[0].Op.Members(c.Auth(t), &pb.MembersRequest{})
		if err != nil {
			return err
		}
		if len(mem.Members) != 3 {
			return fmt.Errorf("members: %v", mem.Members)
		}
		for _, m := range mem.Members {
			if m.Status != "alive" || m.Sealed || !m.Voter {
				return fmt.Errorf("member %+v", m)
			}
		}
		return nil
	})
	c.WaitForApplied(t, put2.Index)
	peers, err := followers[1].Op.ListPeers(c.Auth(t), &pb.ListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	leaders := 0
	for _, p := range peers.Peers {
		if p.Leader {
			leaders++
		}
		if !p.Voter || !p.Reachable || p.AppliedIndex < put2.Index {
			t.Fatalf("peer %+v", p)
		}
	}
	if len(peers.Peers) != 3 || leaders != 1 {
		t.Fatalf("peers %v", peers.Peers)
	}
}
