package api

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "coffer/api/cofferpb"

	"google.golang.org/grpc/connectivity"
)

// TestReadHedgesAroundFrozenNode: the client's connections to one follower
// freeze (open, carrying nothing, as with docker pause). A read that starts
// on it is also sent to the next node after HedgeAfter and answered from
// there, long before AttemptTimeout. With hedging off, a read that starts
// on it waits out its attempt.
func TestReadHedgesAroundFrozenNode(t *testing.T) {
	c := newTestCluster(t, 3)
	fr := newFreezer()
	const (
		hedgeAfter = 100 * time.Millisecond
		attempt    = 5 * time.Second
		offAttempt = time.Second
	)
	cl := c.client(t, Config{Dialer: fr.dial, AttemptTimeout: attempt, HedgeAfter: hedgeAfter})
	off := c.client(t, Config{Dialer: fr.dial, AttemptTimeout: offAttempt, DisableHedgedReads: true})
	const path = "secret/hedge/frozen"
	if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	// Every client's connection to every node is open when one freezes.
	for _, x := range []*Client{cl, off} {
		connectAll(t, x)
	}
	leader := c.WaitForLeader(t)
	frozen := c.Nodes()[0]
	if frozen == leader {
		frozen = c.Nodes()[1]
	}
	fr.Freeze(frozen.APIAddr())
	defer fr.Thaw()

	// Read until one has gone to the frozen node (a warm-up read slower
	// than the hedge may have put it last for 2 s), and a few more.
	held := fr.Held()
	deadline := time.Now().Add(10 * time.Second)
	for i, after := 0, -1; after < 3; i++ {
		began := time.Now()
		resp, info, err := cl.GetWithInfo(tctx(t), &pb.GetRequest{Path: path})
		took := time.Since(began)
		if err != nil {
			t.Fatalf("read %d with %s frozen: %v after %s", i, frozen.ID, err, took)
		}
		if resp.Data["v"] != "1" || info.Endpoint == frozen.APIAddr() {
			t.Fatalf("read %d: %v from %q, want v=1 from a node other than %s", i, resp.Data, info.Endpoint, frozen.APIAddr())
		}
		if took > attempt/2 {
			t.Fatalf("read %d with %s frozen took %s: not hedged (attempt timeout %s)", i, frozen.ID, took, attempt)
		}
		switch {
		case after >= 0:
			after++
		case fr.Held() > held:
			after = 0
			t.Logf("read %d went to the frozen %s and was answered by %s after %s", i, frozen.ID, info.Endpoint, took.Round(time.Millisecond))
		case time.Now().After(deadline):
			t.Fatalf("no read went to the frozen %s in %d reads: the test proves nothing", frozen.ID, i+1)
		}
	}

	// Without hedging, the read that starts on the frozen node waits out
	// its attempt.
	var worst time.Duration
	for range 3 {
		began := time.Now()
		if _, err := off.Get(tctx(t), &pb.GetRequest{Path: path}); err != nil {
			t.Fatal(err)
		}
		worst = max(worst, time.Since(began))
	}
	if worst < offAttempt {
		t.Fatalf("without hedging the slowest of 3 reads took %s, want its %s attempt timeout on the frozen node", worst, offAttempt)
	}
}

// TestHedgedReadsAnswerOnce: with a hedge after 2 ms many reads run on two
// or three nodes at once. Each call still returns one whole answer
// (the race detector watches the two attempts), NotFound stays NotFound,
// and Lists and metadata reads agree with the writes.
func TestHedgedReadsAnswerOnce(t *testing.T) {
	c := newTestCluster(t, 3)
	cl := c.client(t, Config{HedgeAfter: 2 * time.Millisecond})
	// Every connection open first: one still connecting when another node
	// answers is marked down.
	connectAll(t, cl)
	const n = 8
	for i := range n {
		if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: fmt.Sprintf("secret/hedge/once/k%d", i), Data: map[string]string{"i": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				path := fmt.Sprintf("secret/hedge/once/k%d", (i+w)%n)
				resp, err := cl.Get(tctx(t), &pb.GetRequest{Path: path})
				if err != nil || resp.Data["i"] != fmt.Sprint((i+w)%n) {
					errs <- fmt.Errorf("get %s: %v %v", path, resp.GetData(), err)
					continue
				}
				md, err := cl.ReadMetadata(tctx(t), &pb.ReadMetadataRequest{Path: path})
				if err != nil || md.CurrentVersion != 1 {
					errs <- fmt.Errorf("metadata %s: version %d %v", path, md.GetCurrentVersion(), err)
				}
				l, err := cl.List(tctx(t), &pb.ListRequest{Path: "secret/hedge/once"})
				if err != nil || len(l.Keys) != n {
					errs <- fmt.Errorf("list: %v %v", l.GetKeys(), err)
				}
				if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: "secret/hedge/once/missing"}); !IsNotFound(err) {
					errs <- fmt.Errorf("get of a missing secret: %v, want NotFound", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if err := errors.Join(all...); err != nil {
		t.Fatal(err)
	}
}

// TestHedgeMarksBlackHoleDown: an endpoint that accepts connections and
// never answers, with a DialTimeout longer than HedgeAfter: the first read
// that starts on it is answered by the next node after HedgeAfter, and the
// black hole is marked down (so the prober, not every read, tries it).
func TestHedgeMarksBlackHoleDown(t *testing.T) {
	c := newTestCluster(t, 3)
	hung := hungListener(t)
	const hedgeAfter = 100 * time.Millisecond
	cl := c.client(t, Config{Endpoints: []string{hung}, DialTimeout: 5 * time.Second, HedgeAfter: hedgeAfter})
	if _, err := c.client(t, Config{}).Put(tctx(t), &pb.PutRequest{Path: "secret/hedge/hole", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		began := time.Now()
		if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: "secret/hedge/hole"}); err != nil {
			t.Fatalf("read %d with a black hole first: %v", i, err)
		}
		if took := time.Since(began); took > 2*time.Second {
			t.Fatalf("read %d took %s: the black hole's 5 s dial was waited for", i, took)
		}
	}
	// Down within reads shorter than its DialTimeout: the hedge did it. (The
	// prober's failed probes may have replaced the error since.)
	if st := cl.EndpointStates()[0]; st.Address != hung || st.Up || st.LastError == "" {
		t.Fatalf("black hole state: %+v, want down", st)
	}
}

// TestReadHedgesAroundFrozenLeader: the leader freezes (its client
// connections carry nothing, and it is cut off from the others, which
// elect another). Default reads that start on it are hedged to the
// followers, which answer Unavailable until they have a new leader and
// then answer: every read comes back long before the attempt timeout, with
// the value written.
func TestReadHedgesAroundFrozenLeader(t *testing.T) {
	c := newTestCluster(t, 3)
	fr := newFreezer()
	const attempt = 10 * time.Second
	cl := c.client(t, Config{Dialer: fr.dial, AttemptTimeout: attempt, RetryBudget: 2 * attempt, HedgeAfter: 100 * time.Millisecond})
	const path = "secret/hedge/leader"
	if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: path}); err != nil {
			t.Fatal(err)
		}
	}
	leader := c.WaitForLeader(t)
	fr.Freeze(leader.APIAddr())
	leader.Net.Isolate()
	defer func() {
		fr.Thaw()
		leader.Net.Heal()
	}()
	var worst time.Duration
	for i := range 6 {
		began := time.Now()
		resp, info, err := cl.GetWithInfo(tctx(t), &pb.GetRequest{Path: path})
		took := time.Since(began)
		if err != nil || resp.Data["v"] != "1" {
			t.Fatalf("read %d with the leader %s frozen: %v %v after %s", i, leader.ID, resp.GetData(), err, took)
		}
		t.Logf("read %d: %s from %s (stale %v)", i, took.Round(time.Millisecond), info.Endpoint, info.Stale)
		worst = max(worst, took)
	}
	if worst > attempt/2 {
		t.Fatalf("the slowest read with the leader frozen took %s: it waited for the frozen leader (attempt timeout %s)", worst, attempt)
	}
}

// connectAll opens cl's connection to every endpoint.
func connectAll(t *testing.T, cl *Client) {
	t.Helper()
	for _, ep := range cl.endpoints() {
		if err := cl.ready(tctx(t), ep); err != nil || ep.cc.GetState() != connectivity.Ready {
			t.Fatalf("connecting to %s: %v (%s)", ep.addr, err, ep.cc.GetState())
		}
	}
}
