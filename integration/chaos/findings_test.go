package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Deterministic reproductions of what the scenarios find by chance. Each
// names the promise of issue 5 it checks.

// inProcessCluster starts an initialized, unsealed in-process cluster.
func inProcessCluster(t *testing.T, ctx context.Context) *Cluster {
	t.Helper()
	d, err := NewInProcess(t, InProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCluster(ctx, d, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newClient(t *testing.T, c *Cluster, cfg api.Config) *api.Client {
	t.Helper()
	cfg.Endpoints, cfg.Token, cfg.TLS = c.Endpoints(), c.Token, c.D.ClientTLS()
	cl, err := api.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestStaleReadsNeverGoBackForOneClient: one client's stale reads through
// the endpoint list must not return an older version than it has already
// read. A follower cut off from the others keeps answering stale reads
// from its old state; the client goes round robin over the endpoints.
func TestStaleReadsNeverGoBackForOneClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := inProcessCluster(t, ctx)
	writer := newClient(t, c, api.Config{})
	const key = "secret/findings/monotonic"
	first, err := writer.Put(ctx, &pb.PutRequest{Path: key, Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	// Every node has version 1 before the follower is cut off.
	if err := c.WaitApplied(ctx, first.Index); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cut := c.Followers(leader)[0]
	if err := c.D.Partition(ctx, cut); err != nil {
		t.Fatal(err)
	}
	defer c.D.Heal(ctx, cut)
	if _, err := writer.Put(ctx, &pb.PutRequest{Path: key, Data: map[string]string{"v": "2"}}); err != nil {
		t.Fatal(err)
	}

	reader := newClient(t, c, api.Config{})
	stale := &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}
	seen := uint64(0)
	for i := 0; i < 12; i++ {
		g, err := reader.Get(ctx, &pb.GetRequest{Path: key, Read: stale})
		if err != nil {
			t.Fatal(err)
		}
		v := g.GetMetadata().GetVersion()
		if v < seen {
			t.Fatalf("read %d: version %d from %s after the client had read version %d: a client's stale reads went back in time (api.Client sends no floor for reads that did not follow a write of its own)", i, v, g.GetReadMeta().GetNodeId(), seen)
		}
		seen = max(seen, v)
	}
	if seen != 2 {
		t.Fatalf("never read version 2")
	}
}

// TestCacheServesChangedKeyDuringOutage: while no node answers, a client
// with a cache keeps reading the secrets it has read, marked stale. A
// secret that changed shortly before the outage must be served too (its
// last known value): the watch drops the entry of a changed path, and when
// the cluster goes down before the next read fetches it again, the read
// fails instead.
func TestCacheServesChangedKeyDuringOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := inProcessCluster(t, ctx)
	writer := newClient(t, c, api.Config{})
	const key = "secret/findings/cached"
	if _, err := writer.Put(ctx, &pb.PutRequest{Path: key, Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	reader := newClient(t, c, api.Config{Cache: &api.CacheConfig{TTL: time.Minute, MaxStale: time.Hour}})
	if _, err := reader.Get(ctx, &pb.GetRequest{Path: key}); err != nil {
		t.Fatal(err)
	}
	before := reader.CacheStats().Invalidations
	if _, err := writer.Put(ctx, &pb.PutRequest{Path: key, Data: map[string]string{"v": "2"}}); err != nil {
		t.Fatal(err)
	}
	// The reader's watch sees the change and drops the entry.
	if err := poll(ctx, "the cache to see the change", func() error {
		if reader.CacheStats().Invalidations == before {
			return errors.New("entry not invalidated yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range c.D.Nodes() {
		if err := c.D.Kill(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	g, info, err := reader.GetWithInfo(ctx, &pb.GetRequest{Path: key})
	if err != nil {
		t.Fatalf("no node is up and the cache has no answer for %s, which the client read a moment ago (it changed since): %v", key, err)
	}
	if !info.Stale || !info.Cached {
		t.Errorf("answer during the outage not marked as a stale cached one: %+v", info)
	}
	t.Logf("served %q from the cache during the outage (%+v)", g.Data["v"], info)
}

// TestFreshReadMetaOnANewLeader: an answer with ReadMeta.stale false may
// not miss a write acknowledged before the read began. A node that has
// just become leader (a step-down hands it leadership) answers stale reads
// marked not stale before it has applied the entries of the previous term
// (its barrier). Stale reads go straight to every node while one client
// writes and the leader steps down again and again.
func TestFreshReadMetaOnANewLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := inProcessCluster(t, ctx)
	writer := newClient(t, c, api.Config{})
	const key = "secret/findings/new-leader"

	// acked[i] is the version of the i-th acknowledged write and when it
	// was acknowledged.
	type ack struct {
		version uint64
		at      time.Time
	}
	var mu sync.Mutex
	var acked []ack
	ackedBefore := func(t0 time.Time) uint64 {
		mu.Lock()
		defer mu.Unlock()
		v := uint64(0)
		for _, a := range acked {
			if a.at.Before(t0) {
				v = max(v, a.version)
			}
		}
		return v
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := writer.Put(wctx, &pb.PutRequest{Path: key, Data: map[string]string{"v": strconv.Itoa(i)}})
			wcancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, ack{resp.Version, time.Now()})
				mu.Unlock()
			}
		}
	}()
	var violation atomic.Value
	for _, id := range c.D.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kv := pb.NewKVClient(c.conn(id))
			pace := time.NewTicker(time.Millisecond)
			defer pace.Stop()
			for {
				select {
				case <-stop:
					return
				case <-pace.C:
				}
				start := time.Now()
				rctx, rcancel := context.WithTimeout(c.authed(ctx), time.Second)
				g, err := kv.Get(rctx, &pb.GetRequest{Path: key, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
				rcancel()
				if err != nil || g.GetReadMeta().GetStale() {
					continue
				}
				if want := ackedBefore(start); g.GetMetadata().GetVersion() < want {
					violation.CompareAndSwap(nil, fmt.Sprintf("%s answered version %d with stale=false, but version %d was acknowledged before the read began (leader %q)",
						id, g.GetMetadata().GetVersion(), want, g.GetReadMeta().GetLeaderId()))
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for i := 0; i < 20 && violation.Load() == nil; i++ {
		leader, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(c.authed(ctx), 5*time.Second)
		_, err = pb.NewOperatorClient(c.conn(leader)).StepDown(sctx, &pb.StepDownRequest{})
		scancel()
		if err != nil {
			t.Logf("step-down of %s: %v", leader, err)
		}
		if err := poll(ctx, "a new leader", func() error {
			l, err := c.agreedLeader(ctx)
			if err == nil && l == leader {
				err = errors.New("same leader")
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if v := violation.Load(); v != nil {
		t.Fatal(v)
	}
}
