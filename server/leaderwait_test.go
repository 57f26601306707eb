package server

import (
	"context"
	"sync"
	"testing"
	"time"

	pb "coffer/api/cofferpb"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestStatusLeaderWaitIsBounded: Sys.Status needs no token, and asked to
// it holds the call until a new leader is followed. The attack: a
// stranger, with no token, fills the node's waits (maxLeaderWaits calls
// over several connections) and asks for one more. That one is answered
// at once, the node serves its callers meanwhile, and once the flood ends
// a call waits again.
func TestStatusLeaderWaitIsBounded(t *testing.T) {
	n := startNode(t, "")
	_, root := n.initUnseal(1, 1)
	// A single node leads itself: a wait for another leader lasts its
	// whole wait_ms.
	wait := &pb.StatusRequest{WaitForLeaderNot: n.srv.NodeID(), WaitMs: 60_000}

	conns := make([]*grpc.ClientConn, maxLeaderWaits/maxStreamsPerConn+1)
	for i := range conns {
		cc, err := grpc.NewClient(n.srv.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		conns[i] = cc
	}
	flood, stopFlood := context.WithCancel(context.Background())
	defer stopFlood()
	var wg sync.WaitGroup
	for i := range maxLeaderWaits {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = pb.NewSysClient(conns[i%len(conns)]).Status(flood, wait)
		}()
	}
	waitFor(t, 20*time.Second, "the flood's calls all waiting", func() bool { return n.srv.link.leaderWaits.Load() == maxLeaderWaits })

	began := time.Now()
	st, err := n.sys.Status(ctx(t), wait)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 5*time.Second || st.LeaderId != n.srv.NodeID() {
		t.Fatalf("with %d calls waiting, one more answered after %s naming %q: want at once, naming %s", maxLeaderWaits, took, st.LeaderId, n.srv.NodeID())
	}
	if _, err := n.kv.Put(authed(t, root), &pb.PutRequest{Path: "secret/flood", Data: map[string]string{"k": "v"}}); err != nil {
		t.Fatalf("a write during the flood: %v", err)
	}

	stopFlood()
	wg.Wait()
	waitFor(t, 20*time.Second, "the flood's waits released", func() bool { return n.srv.link.leaderWaits.Load() == 0 })
	began = time.Now()
	if _, err := n.sys.Status(ctx(t), &pb.StatusRequest{WaitForLeaderNot: n.srv.NodeID(), WaitMs: 300}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Fatalf("after the flood a 300ms wait answered after %s: the count of waits did not come down", took)
	}
}
