package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no endpoints"},
		{Config{Endpoints: []string{"a:1"}, AttemptTimeout: -1}, "AttemptTimeout is negative"},
		{Config{Endpoints: []string{"a:1"}, Consistency: 9}, "unknown Consistency 9"},
		{Config{Endpoints: []string{"a:1"}, Cache: &CacheConfig{MaxEntries: -1}}, "Cache.MaxEntries is negative"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
	cl, err := New(Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if err := cl.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := cl.Get(context.Background(), &pb.GetRequest{Path: "secret/x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if _, err := cl.Watch(context.Background(), "secret/", 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestDeadEndpointSkipped: with endpoints [dead, n1, n2, n3] every call
// succeeds, the dead endpoint is marked down after its first failure and
// then dialled only by the prober's back-off, not once per call. The
// leader is learned, writes go to it; SyncEndpoints learns the members'
// addresses from a single configured endpoint.
func TestDeadEndpointSkipped(t *testing.T) {
	c := newTestCluster(t, 3)
	dead := deadAddr(t)
	dialer := &countingDialer{}
	cfg := Config{Endpoints: []string{dead}, Dialer: dialer.dial}
	cl := c.client(t, cfg)

	const calls = 200
	start := time.Now()
	for i := range calls {
		if i%4 == 0 {
			if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: "secret/dead/k", Data: map[string]string{"i": strconv.Itoa(i)}}); err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
			continue
		}
		if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: "secret/dead/k"}); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	dials := dialer.count(dead)
	t.Logf("%d calls in %s (%s per call); %d dials to the dead endpoint", calls, elapsed, elapsed/calls, dials)
	// One dial on first use, then a few per second at most from the
	// prober and gRPC's (short) reconnect back-off: never one per call.
	if limit := 3 + 4*int(elapsed/time.Second+1); dials > limit {
		t.Fatalf("the dead endpoint was dialled %d times in %s (limit %d): it is retried on every call", dials, elapsed, limit)
	}
	// Calls about one node act on the first endpoint that can be reached.
	ns, err := cl.Status(tctx(t))
	if err != nil || ns.NodeId == "" {
		t.Fatalf("status with a dead first endpoint: %v %v", ns, err)
	}
	st := cl.EndpointStates()
	if st[0].Address != dead || st[0].Up || st[0].DownSince.IsZero() || st[0].LastError == "" {
		t.Fatalf("dead endpoint state: %+v", st[0])
	}
	leader := c.Leader()
	for _, s := range st[1:] {
		if !s.Up || s.NodeID == "" {
			t.Fatalf("live endpoint state: %+v", s)
		}
		if s.Leader != (s.NodeID == leader.ID) {
			t.Fatalf("leader flag wrong: %+v (leader %s)", s, leader.ID)
		}
	}

	// A black-holed endpoint (it accepts connections and never answers)
	// costs DialTimeout once, then it is skipped.
	hung := hungListener(t)
	hcl := c.client(t, Config{Endpoints: []string{hung}, DialTimeout: 200 * time.Millisecond})
	start = time.Now()
	for i := range 50 {
		if _, err := hcl.Get(tctx(t), &pb.GetRequest{Path: "secret/dead/k"}); err != nil {
			t.Fatalf("get %d with a hung endpoint: %v", i, err)
		}
	}
	elapsed = time.Since(start)
	t.Logf("50 reads with a hung endpoint first: %s", elapsed)
	if hst := hcl.EndpointStates()[0]; hst.Up || hst.LastError == "" {
		t.Fatalf("hung endpoint state: %+v", hst)
	}
	if elapsed > 2*time.Second {
		t.Fatalf("50 reads took %s: the hung endpoint is waited for on every call", elapsed)
	}

	// Endpoint sync: one configured endpoint, the others learned.
	synced := c.client(t, Config{SyncEndpoints: 50 * time.Millisecond}, c.Nodes()[0])
	testcluster.WaitFor(t, 10*time.Second, "synced endpoints", func() error {
		if eps := synced.Endpoints(); len(eps) != 3 {
			return fmt.Errorf("endpoints %v", eps)
		}
		return nil
	})
	want := c.APIAddrs()
	got := synced.Endpoints()
	sort.Strings(want)
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Fatalf("synced endpoints %v, want %v", got, want)
	}
}

// hungListener returns the address of a listener that accepts
// connections and never writes to them.
func hungListener(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, conn := range held {
			conn.Close()
		}
	})
	return l.Addr().String()
}

// TestLeaderKill: a client loops writes and reads (default consistency)
// while the leader is killed. No read fails (retries and the stale
// fallback), every write completes after the failover with exactly one
// version each (request ids deduplicate retries), and every read after a
// write sees it, whichever node answers. Then, with a quorum lost, a
// default read falls back to a stale read that says so, unless the
// fallback is disabled.
func TestLeaderKill(t *testing.T) {
	c := newTestCluster(t, 3)
	cl := c.client(t, Config{})
	const path = "secret/kill/w"

	var (
		mu        sync.Mutex
		readErrs  []error
		reads     int
		fallbacks int
		nodes     = map[string]int{}
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// A reader loop, concurrent with the writes.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, info, err := cl.GetWithInfo(ctx, &pb.GetRequest{Path: path})
			cancel()
			mu.Lock()
			reads++
			if err != nil && status.Code(err) != codes.NotFound {
				readErrs = append(readErrs, err)
			}
			if err == nil {
				nodes[resp.ReadMeta.NodeId]++
				if info.Fallback {
					fallbacks++
				}
			}
			mu.Unlock()
		}
	}()

	// The writer: each write, then a read of it through the same client.
	var versions []uint64
	var killedAt time.Time
	var leader *testcluster.Node
	var firstAfterKill time.Duration
	for i := 1; i <= 60; i++ {
		if i == 25 {
			leader = c.Leader()
			killedAt = time.Now()
			c.Kill(leader)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		put, err := cl.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"i": strconv.Itoa(i)}})
		if err != nil {
			cancel()
			t.Fatalf("write %d: %v", i, err)
		}
		if i == 25 {
			firstAfterKill = time.Since(killedAt)
		}
		versions = append(versions, put.Version)
		got, info, err := cl.GetWithInfo(ctx, &pb.GetRequest{Path: path})
		cancel()
		if err != nil {
			t.Fatalf("read after write %d: %v", i, err)
		}
		if got.Metadata.Version < put.Version || got.ReadMeta.AppliedIndex < put.Index {
			t.Fatalf("read-your-writes broken after write %d: read version %d at index %d from %s (%s), wrote version %d at index %d",
				i, got.Metadata.Version, got.ReadMeta.AppliedIndex, got.ReadMeta.NodeId, info.Endpoint, put.Version, put.Index)
		}
	}
	close(stop)
	wg.Wait()

	t.Logf("killed leader %s; first write after the kill took %s; %d reads (%d stale fallbacks) by node %v",
		leader.ID, firstAfterKill.Round(time.Millisecond), reads, fallbacks, nodes)
	for _, err := range readErrs {
		t.Errorf("read failed: %v", err)
	}
	for i, v := range versions {
		if v != uint64(i+1) {
			t.Fatalf("write %d made version %d: versions %v (a retry wrote twice or a write was lost)", i+1, v, versions)
		}
	}
	md, err := cl.ReadMetadata(tctx(t), &pb.ReadMetadataRequest{Path: path})
	if err != nil || md.CurrentVersion != uint64(len(versions)) {
		t.Fatalf("metadata after %d writes: %v %v", len(versions), md, err)
	}

	// Quorum lost: default reads fall back to stale ones and say so;
	// linearizable reads never do: they fail with a retryable error.
	c.Kill(c.Leader())
	only := c.Running()[0]
	fallback := c.client(t, Config{RetryBudget: 300 * time.Millisecond}, only)
	got, info, err := fallback.GetWithInfo(tctx(t), &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_DEFAULT}})
	if err != nil {
		t.Fatalf("default read without quorum: %v", err)
	}
	if !got.ReadMeta.Stale || !info.Fallback || !info.Stale || got.Metadata.Version != uint64(len(versions)) {
		t.Fatalf("default read without quorum: %+v %+v", got, info)
	}
	lin, info, err := fallback.GetWithInfo(tctx(t), &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}})
	if err == nil || !Retryable(err) || info.Fallback {
		t.Fatalf("linearizable read without quorum answered %+v (%+v), err %v: want a retryable error and no fallback", lin, info, err)
	}
	strict := c.client(t, Config{RetryBudget: 300 * time.Millisecond, AttemptTimeout: 500 * time.Millisecond, DisableStaleFallback: true}, only)
	if _, err := strict.Get(tctx(t), &pb.GetRequest{Path: path}); !Retryable(err) {
		t.Fatalf("read without quorum and without fallback: %v, want Unavailable", err)
	}
	if _, err := strict.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"i": "x"}}); !Retryable(err) {
		t.Fatalf("write without quorum: %v, want Unavailable", err)
	}
}

// TestReadYourWrites: reads at stale consistency are spread over every
// node, one of which is cut off from the others and lags. A stale read on
// it without min_index goes back in time; the client's reads never do:
// they carry the index of its last write, the lagging node answers
// Unavailable, and another node answers. Once healed, the node serves the
// client's reads again.
func TestReadYourWrites(t *testing.T) {
	c := newTestCluster(t, 3)
	leader := c.WaitForLeader(t)
	lagging := c.Followers(leader)[0]
	cl := c.client(t, Config{Consistency: pb.Consistency_CONSISTENCY_STALE, AttemptTimeout: time.Second})
	const path = "secret/ryw/k"
	first, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "0"}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, first.Index)
	lagging.Net.Isolate()

	check := func(round int) map[string]int {
		served := map[string]int{}
		for i := range 20 {
			put, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": fmt.Sprint(round, "-", i)}})
			if err != nil {
				t.Fatalf("put: %v", err)
			}
			got, err := cl.Get(tctx(t), &pb.GetRequest{Path: path})
			if err != nil {
				t.Fatalf("get after put: %v", err)
			}
			if got.Metadata.Version != put.Version {
				t.Fatalf("read version %d from %s after writing version %d", got.Metadata.Version, got.ReadMeta.NodeId, put.Version)
			}
			served[got.ReadMeta.NodeId]++
		}
		return served
	}
	// The lagging node never serves one of them. Both others do, though a
	// slow answer under load can steer the client off a node for a round.
	served := map[string]int{}
	round := 0
	testcluster.WaitFor(t, 20*time.Second, "reads served by both nodes that keep up", func() error {
		round++
		for id, n := range check(round) {
			served[id] += n
		}
		if served[lagging.ID] != 0 {
			t.Fatalf("the lagging node %s served a read: %v", lagging.ID, served)
		}
		if len(served) != 2 {
			return fmt.Errorf("served by %v", served)
		}
		return nil
	})
	// The control: without min_index the lagging node answers with what it
	// has, an older version.
	lagConn := c.client(t, Config{Consistency: pb.Consistency_CONSISTENCY_STALE}, lagging)
	old, err := lagConn.Get(tctx(t), &pb.GetRequest{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if old.Metadata.Version != first.Version {
		t.Fatalf("lagging node answered version %d, want the old %d", old.Metadata.Version, first.Version)
	}
	t.Logf("while %s lagged (it still answers version %d): reads served by %v", lagging.ID, old.Metadata.Version, served)
	lagging.Net.Heal()
	var after map[string]int
	testcluster.WaitFor(t, 20*time.Second, "reads served by the healed node", func() error {
		after = check(2)
		if after[lagging.ID] == 0 {
			return fmt.Errorf("served by %v", after)
		}
		return nil
	})
	t.Logf("after healing %s: reads served by %v", lagging.ID, after)
}

// TestWriteRidesOutEndpointsWrittenOffEarlier: the client had written off
// the other nodes (down from earlier failures, their connections in
// gRPC's reconnect back-off) when the node it used — the leader — dies,
// just as the others become reachable again (in the docker chaos suite: a
// node restarted a moment before the next leader kill). The write must
// reach the new leader, not fail within milliseconds because one pass and
// a second found no node.
func TestWriteRidesOutEndpointsWrittenOffEarlier(t *testing.T) {
	c := newTestCluster(t, 3)
	leader := c.Leader()
	var blocked sync.Map // address → true while dials to it fail
	for _, f := range c.Followers(leader) {
		blocked.Store(f.APIAddr(), true)
	}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		if _, ok := blocked.Load(addr); ok {
			return nil, fmt.Errorf("dial tcp %s: connect: connection refused (blocked by the test)", addr)
		}
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", addr)
	}
	// A long down back-off: the prober does not bring the followers back
	// during the test.
	cl := c.client(t, Config{Dialer: dial, DownBackoff: time.Minute, MaxDownBackoff: time.Minute})
	const path = "secret/written-off"
	testcluster.WaitFor(t, 10*time.Second, "both followers written off", func() error {
		if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: path}); err != nil && !IsNotFound(err) {
			return err
		}
		down := 0
		for _, ep := range cl.endpoints() {
			if ep.isDown() {
				down++
			}
		}
		if down != 2 {
			return fmt.Errorf("%d endpoints down", down)
		}
		return nil
	})
	// The leader dies; the followers are reachable again.
	c.Kill(leader)
	blocked.Clear()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	put, err := cl.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatalf("write after the leader died, %s after it: %v", time.Since(start).Round(time.Millisecond), err)
	}
	t.Logf("the write reached the new leader %s after the kill (version %d)", time.Since(start).Round(time.Millisecond), put.Version)
}
