package api

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestClientCache: a caching client on n3 answers repeated reads from its
// cache; a change written through n1 reaches it by its watch, which drops
// the entry (the propagation time is measured); its own writes drop their
// path at once; TTL expiry sends the next read to the cluster;
// linearizable reads skip the cache.
func TestClientCache(t *testing.T) {
	c := newTestCluster(t, 3)
	writer := c.client(t, Config{}, c.Nodes()[0])
	reader := c.client(t, Config{Cache: &CacheConfig{TTL: time.Minute, Jitter: -1}}, c.Nodes()[2])
	clock := newFakeClock()
	reader.cache.now = clock.Now

	const path = "secret/cache/db"
	if _, err := writer.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "0"}}); err != nil {
		t.Fatal(err)
	}
	// The writer's index is not the reader's: wait until n3 has it.
	get := func() (*pb.GetResponse, ReadInfo) {
		t.Helper()
		resp, info, err := reader.GetWithInfo(tctx(t), &pb.GetRequest{Path: path})
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		return resp, info
	}
	first, info := get()
	if info.Cached || first.Data["v"] != "0" || first.ReadMeta.NodeId != "n3" {
		t.Fatalf("first read: %+v %+v", first, info)
	}
	second, info := get()
	if !info.Cached || info.Stale || second.Data["v"] != "0" {
		t.Fatalf("second read: %+v %+v", second, info)
	}
	// The cached answer is served only with the token that read it:
	// another token's read goes to the cluster, which refuses it.
	if _, info, err := reader.GetWithInfo(WithToken(tctx(t), "not-a-token"), &pb.GetRequest{Path: path}); status.Code(err) != codes.Unauthenticated || info.Cached {
		t.Fatalf("read with another token: %+v %v", info, err)
	}

	// Propagation: a write through n1 until the caching client on n3 has
	// dropped the entry (its watch) and until its reads return the new
	// value.
	var dropped, visible []time.Duration
	key := CacheKey{TokenHash: reader.tokenHash, Path: path}
	for i := 1; i <= 10; i++ {
		// Cached again: a fresh answer is cached; on a loaded machine a read
		// may fall back to a stale one, which is kept for stale-if-error
		// only, so read until a fresh answer is cached.
		testcluster.WaitFor(t, 5*time.Second, "a fresh answer cached", func() error {
			get()
			if e := reader.cache.lookup(key, false); e.State != CacheFresh {
				return fmt.Errorf("round %d: not cached before the write: %v", i, e.State)
			}
			return nil
		})
		want := fmt.Sprint(i)
		start := time.Now()
		put, err := writer.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": want}})
		if err != nil {
			t.Fatal(err)
		}
		var d time.Duration
		testcluster.WaitFor(t, 5*time.Second, "the cached entry to be expired", func() error {
			if e := reader.cache.lookup(key, false); e.State == CacheFresh {
				return fmt.Errorf("entry still %s", e.State)
			}
			d = time.Since(start)
			return nil
		})
		dropped = append(dropped, d)
		testcluster.WaitFor(t, 5*time.Second, "the new value", func() error {
			resp, _ := get()
			if resp.Data["v"] != want {
				return fmt.Errorf("read %q", resp.Data["v"])
			}
			if resp.Metadata.Version != put.Version {
				return fmt.Errorf("read version %d, want %d", resp.Metadata.Version, put.Version)
			}
			d = time.Since(start)
			return nil
		})
		visible = append(visible, d)
	}
	slices.Sort(dropped)
	slices.Sort(visible)
	t.Logf("write through n1 → cache entry on n3's client dropped: min %s median %s max %s",
		dropped[0].Round(time.Microsecond), dropped[len(dropped)/2].Round(time.Microsecond), dropped[len(dropped)-1].Round(time.Microsecond))
	t.Logf("write through n1 → new value read by n3's caching client: min %s median %s max %s",
		visible[0].Round(time.Microsecond), visible[len(visible)/2].Round(time.Microsecond), visible[len(visible)-1].Round(time.Microsecond))
	if dropped[len(dropped)-1] > 2*time.Second {
		t.Fatalf("propagation took up to %s", dropped[len(dropped)-1])
	}

	// The client's own write drops the entry before it returns, and the
	// next read reads it (read-your-writes through the cache).
	get()
	if _, err := reader.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "own"}}); err != nil {
		t.Fatal(err)
	}
	if resp, info := get(); resp.Data["v"] != "own" || info.Cached {
		t.Fatalf("read after own write: %v %+v", resp.Data, info)
	}

	// TTL: past it, the next read asks the cluster again.
	if _, info := get(); !info.Cached {
		t.Fatal("not cached")
	}
	clock.Advance(time.Minute)
	if _, info := get(); info.Cached {
		t.Fatal("read after the TTL came from the cache")
	}
	// Linearizable reads skip the cache.
	_, info, err := reader.GetWithInfo(tctx(t), &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}})
	if err != nil || info.Cached {
		t.Fatalf("linearizable read: %+v %v", info, err)
	}
	st := reader.CacheStats()
	t.Logf("cache stats: %+v", st)
	if st.Hits == 0 || st.Invalidations < 10 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCacheStaleIfError: with every node stopped, cached reads keep
// succeeding, marked stale with their age, until max_stale; then they fail
// with an error that says so. Restarted (same data dirs) and unsealed, the
// cluster answers fresh reads again through the same client.
func TestCacheStaleIfError(t *testing.T) {
	c := newTestCluster(t, 3)
	cl := c.client(t, Config{
		Cache:       &CacheConfig{TTL: time.Minute, Jitter: -1, MaxStale: 10 * time.Minute},
		DownBackoff: 100 * time.Millisecond, MaxDownBackoff: 400 * time.Millisecond,
	})
	clock := newFakeClock()
	cl.cache.now = clock.Now

	const path = "secret/outage/db"
	put, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"password": "before"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: path}); err != nil {
		t.Fatal(err)
	}
	// A path never read is not cached: it fails like any read.
	const uncached = "secret/outage/never-read"

	for _, n := range c.Running() {
		c.Kill(n)
	}
	// Within the TTL the cache answers without asking.
	if _, info, err := cl.GetWithInfo(tctx(t), &pb.GetRequest{Path: path}); err != nil || !info.Cached || info.Stale {
		t.Fatalf("within TTL: %+v %v", info, err)
	}
	// Past the TTL, every node is down: the cached value, marked stale,
	// with its age.
	clock.Advance(time.Minute + time.Second)
	for i := range 5 {
		start := time.Now()
		resp, info, err := cl.GetWithInfo(tctx(t), &pb.GetRequest{Path: path})
		took := time.Since(start)
		if err != nil {
			t.Fatalf("stale-if-error read %d: %v", i, err)
		}
		if resp.Data["password"] != "before" || !resp.ReadMeta.Stale || !info.Cached || !info.Stale || !info.Fallback {
			t.Fatalf("stale-if-error read %d: %+v %+v", i, resp, info)
		}
		if info.Age < time.Minute || resp.ReadMeta.LastContactMs < info.Age.Milliseconds() {
			t.Fatalf("age %s, last contact %dms", info.Age, resp.ReadMeta.LastContactMs)
		}
		if i == 0 {
			t.Logf("stale-if-error read: age %s, took %s", info.Age, took.Round(time.Microsecond))
		}
		clock.Advance(time.Minute)
	}
	if _, err := cl.Get(tctx(t), &pb.GetRequest{Path: uncached}); !Retryable(err) || errors.Is(err, ErrCacheTooStale) {
		t.Fatalf("uncached read with the cluster down: %v", err)
	}
	// Past TTL + max_stale: a clear error.
	clock.Advance(10 * time.Minute)
	_, err = cl.Get(tctx(t), &pb.GetRequest{Path: path})
	if !errors.Is(err, ErrCacheTooStale) || status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "past max_stale") {
		t.Fatalf("past max_stale: %v", err)
	}
	var cse *CacheStaleError
	if !errors.As(err, &cse) || cse.Path != path || cse.MaxStale != 10*time.Minute || !Retryable(cse.Err) {
		t.Fatalf("past max_stale: %#v", err)
	}
	t.Logf("past max_stale: %v", err)
	if st := cl.CacheStats(); st.StaleServed != 5 {
		t.Fatalf("stats %+v", st)
	}

	// The cluster comes back: fresh reads again, without a new client.
	start := time.Now()
	c.RestartAll(t)
	c.UnsealAll(t)
	c.WaitForLeader(t)
	testcluster.WaitFor(t, 20*time.Second, "a fresh read", func() error {
		resp, info, err := cl.GetWithInfo(tctx(t), &pb.GetRequest{Path: path})
		if err != nil {
			return err
		}
		if info.Cached || info.Stale || resp.Data["password"] != "before" || resp.Metadata.Version != put.Version {
			return fmt.Errorf("read %+v %+v", resp, info)
		}
		return nil
	})
	t.Logf("cluster restarted and unsealed: fresh reads again %s after the restart began", time.Since(start).Round(time.Millisecond))
	if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"password": "after"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := cl.Get(tctx(t), &pb.GetRequest{Path: path}); err != nil || resp.Data["password"] != "after" {
		t.Fatalf("after the outage: %v %v", resp, err)
	}
}
