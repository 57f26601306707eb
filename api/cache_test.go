package api

import (
	"fmt"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
)

// answer builds a Get answer read at index.
func answer(v string, version, index uint64) *pb.GetResponse {
	return &pb.GetResponse{
		Data:     map[string]string{"v": v},
		Metadata: &pb.VersionMetadata{Version: version},
		ReadMeta: &pb.ReadMeta{NodeId: "n1", AppliedIndex: index},
	}
}

func newTestCache(t testing.TB, cfg CacheConfig) (*Cache, *fakeClock) {
	t.Helper()
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	c.now = clock.Now
	return c, clock
}

func TestCacheTTLAndMaxStale(t *testing.T) {
	c, clock := newTestCache(t, CacheConfig{TTL: time.Minute, Jitter: 10 * time.Second, MaxStale: 10 * time.Minute})
	tok := TokenHash("t1")
	key := CacheKey{TokenHash: tok, Path: "secret/a"}
	if e := c.Get(key); e.State != CacheMiss {
		t.Fatalf("empty cache: %+v", e)
	}
	if !c.Put(key, answer("1", 1, 10)) {
		t.Fatal("put refused")
	}
	e := c.Get(key)
	if e.State != CacheFresh || e.Response.Data["v"] != "1" || e.Index != 10 || e.Age != 0 {
		t.Fatalf("fresh entry: %+v", e)
	}
	// The answer is a copy: changing it does not change the cache.
	e.Response.Data["v"] = "changed"
	if e := c.Get(key); e.Response.Data["v"] != "1" {
		t.Fatal("the cache shares its answer with callers")
	}
	// Another token does not see it.
	if e := c.Get(CacheKey{TokenHash: TokenHash("t2"), Path: "secret/a"}); e.State != CacheMiss {
		t.Fatalf("another token's lookup: %+v", e)
	}
	// Jitter: fresh until at least TTL - Jitter, expired from TTL on.
	clock.Advance(50 * time.Second)
	if e := c.Get(key); e.State != CacheFresh {
		t.Fatalf("at 50s (TTL 1m, jitter 10s): %+v", e)
	}
	clock.Advance(10 * time.Second)
	e = c.Get(key)
	if e.State != CacheExpired || e.Response.Data["v"] != "1" || e.Age != time.Minute || e.Expired < 0 || e.Expired > 10*time.Second {
		t.Fatalf("at TTL: %+v", e)
	}
	clock.Advance(10 * time.Minute)
	if e := c.Get(key); e.State != CacheTooStale || e.Response != nil || e.Age != 11*time.Minute {
		t.Fatalf("past max_stale: %+v", e)
	}
	// The data is gone for good; a new answer replaces the entry.
	if e := c.Get(key); e.State != CacheTooStale {
		t.Fatalf("second look past max_stale: %+v", e)
	}
	c.Put(key, answer("2", 2, 20))
	if e := c.Get(key); e.State != CacheFresh || e.Response.Data["v"] != "2" {
		t.Fatalf("after a new answer: %+v", e)
	}
	st := c.Stats()
	if st.Hits != 4 || st.Misses != 5 || st.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}

	// Jitter spreads expiries: over many entries, not all expire at once.
	j, jclock := newTestCache(t, CacheConfig{TTL: time.Minute, Jitter: 30 * time.Second, MaxEntries: 100})
	for i := range 100 {
		j.Put(CacheKey{Path: fmt.Sprint("secret/j", i)}, answer("x", 1, 1))
	}
	jclock.Advance(45 * time.Second)
	fresh := 0
	for i := range 100 {
		if j.Get(CacheKey{Path: fmt.Sprint("secret/j", i)}).State == CacheFresh {
			fresh++
		}
	}
	if fresh < 20 || fresh > 80 {
		t.Fatalf("%d of 100 entries fresh half-way through the jitter window", fresh)
	}

	// MaxStale < 0: no stale-if-error.
	n, nclock := newTestCache(t, CacheConfig{TTL: time.Minute, Jitter: -1, MaxStale: -1})
	n.Put(key, answer("1", 1, 1))
	nclock.Advance(time.Minute)
	if e := n.Get(key); e.State != CacheTooStale {
		t.Fatalf("expired without max_stale: %+v", e)
	}
}

func TestCacheLRU(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{MaxEntries: 3})
	key := func(p string) CacheKey { return CacheKey{Path: "secret/" + p} }
	for i, p := range []string{"a", "b", "c"} {
		c.Put(key(p), answer(p, 1, uint64(i+1)))
	}
	c.Get(key("a")) // a is now the most recently used
	c.Put(key("d"), answer("d", 1, 4))
	if e := c.Get(key("b")); e.State != CacheMiss {
		t.Fatalf("b (least recently used) was not evicted: %+v", e)
	}
	for _, p := range []string{"a", "c", "d"} {
		if e := c.Get(key(p)); e.State != CacheFresh {
			t.Fatalf("%s evicted: %+v", p, e)
		}
	}
	if st := c.Stats(); st.Entries != 3 || st.Evictions != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheInvalidate(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{MaxEntries: 4})
	t1, t2 := TokenHash("t1"), TokenHash("t2")
	c.Put(CacheKey{TokenHash: t1, Path: "secret/a"}, answer("1", 1, 10))
	c.Put(CacheKey{TokenHash: t2, Path: "secret/a"}, answer("1", 1, 10))
	c.Put(CacheKey{TokenHash: t1, Path: "secret/a", Version: 1}, answer("1", 1, 10))
	c.Put(CacheKey{TokenHash: t1, Path: "secret/b"}, answer("1", 1, 10))
	if n := c.Invalidate("secret/a", 12); n != 3 {
		t.Fatalf("invalidated %d entries of secret/a, want 3 (every token and version)", n)
	}
	// The entries stay, expired: never fresh again, yet there for
	// stale-if-error.
	if c.Len() != 4 {
		t.Fatalf("%d entries left, want all 4 kept", c.Len())
	}
	for _, k := range []CacheKey{{TokenHash: t1, Path: "secret/a"}, {TokenHash: t2, Path: "secret/a"}, {TokenHash: t1, Path: "secret/a", Version: 1}} {
		if e := c.Get(k); e.State != CacheExpired || e.Response == nil {
			t.Fatalf("%+v after invalidation: %v, want expired with its answer", k, e.State)
		}
	}
	if e := c.Get(CacheKey{TokenHash: t1, Path: "secret/b"}); e.State != CacheFresh {
		t.Fatalf("secret/b after invalidating secret/a: %v", e.State)
	}
	// A slow read from before the change is refused; one from after it is
	// stored.
	if c.Put(CacheKey{TokenHash: t1, Path: "secret/a"}, answer("old", 1, 11)) {
		t.Fatal("an answer read before the change was stored")
	}
	if !c.Put(CacheKey{TokenHash: t1, Path: "secret/a"}, answer("new", 2, 12)) {
		t.Fatal("an answer read at the change was refused")
	}
	// Compacted: everything under the prefix goes, older answers anywhere
	// are refused.
	if n := c.InvalidatePrefix("secret/", 30); n != 2 {
		t.Fatalf("prefix invalidation dropped %d", n)
	}
	if c.Put(CacheKey{Path: "secret/z"}, answer("z", 1, 29)) {
		t.Fatal("an answer from before the compaction was stored")
	}
	// The change records are bounded: dropping the oldest raises the floor.
	for i := range 2000 {
		c.Invalidate(fmt.Sprint("secret/p", i), uint64(100+i))
	}
	if c.floor < 100 || len(c.changes) > 1024 {
		t.Fatalf("floor %d with %d change records", c.floor, len(c.changes))
	}
	st := c.Stats()
	if st.Invalidations != 5 || st.Rejected != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheRecords(t *testing.T) {
	c, clock := newTestCache(t, CacheConfig{TTL: time.Minute, Jitter: -1, MaxStale: time.Minute, MaxEntries: 3})
	key := func(p string) CacheKey { return CacheKey{TokenHash: "h", Path: "secret/" + p} }
	c.Put(key("old"), answer("old", 1, 1))
	clock.Advance(90 * time.Second) // expired, within max_stale
	c.Put(key("a"), answer("a", 1, 2))
	c.Put(key("b"), answer("b", 1, 3))
	c.Put(key("gone"), answer("gone", 1, 3))
	c.Invalidate("secret/gone", 4)
	clock.Advance(time.Minute) // "old" is now past max_stale
	recs := c.Records()
	if len(recs) != 2 || recs[0].Key != key("b") || recs[1].Key != key("a") || recs[0].Response.Data["v"] != "b" {
		t.Fatalf("records %+v", recs)
	}

	d, dclock := newTestCache(t, CacheConfig{TTL: time.Minute, Jitter: -1, MaxStale: time.Minute, MaxEntries: 3})
	dclock.Advance(150 * time.Second)
	if n := d.Restore(recs); n != 2 {
		t.Fatalf("restored %d", n)
	}
	if e := d.Get(key("a")); e.State != CacheExpired || e.Response.Data["v"] != "a" || e.Age != time.Minute {
		t.Fatalf("restored entry: %+v", e)
	}
	// Restore keeps the order of use: a was just read, so b goes first.
	d.Put(key("c"), answer("c", 1, 5))
	d.Put(key("d"), answer("d", 1, 5))
	if e := d.Get(key("b")); e.State != CacheMiss {
		t.Fatalf("b: %+v", e)
	}
	// Past max_stale nothing is restored.
	dclock.Advance(time.Hour)
	if n := d.Restore(recs); n != 0 {
		t.Fatalf("restored %d stale records", n)
	}
}

// TestCacheChanged: Changed closes at the next store, drop or restore of
// an entry, and not on a lookup.
func TestCacheChanged(t *testing.T) {
	c, _ := newTestCache(t, CacheConfig{TTL: time.Minute, MaxEntries: 1})
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	key := func(p string) CacheKey { return CacheKey{TokenHash: "h", Path: "secret/" + p} }
	ch := c.Changed()
	if closed(ch) || c.Changed() != ch {
		t.Fatal("Changed closed, or not shared, before any change")
	}
	c.Put(key("a"), answer("a", 1, 1))
	if !closed(ch) {
		t.Fatal("Put did not close Changed")
	}
	ch = c.Changed()
	c.Get(key("a"))
	c.Get(key("none"))
	if closed(ch) {
		t.Fatal("a lookup closed Changed")
	}
	c.Invalidate("secret/none", 2) // expires nothing
	if closed(ch) {
		t.Fatal("an invalidation that expired nothing closed Changed")
	}
	c.Invalidate("secret/a", 3)
	if !closed(ch) {
		t.Fatal("Invalidate did not close Changed")
	}
	recs := []CacheRecord{{Key: key("b"), Response: answer("b", 1, 4), Index: 4, Fetched: c.now(), Expires: c.now().Add(time.Minute)}}
	ch = c.Changed()
	if n := c.Restore(recs); n != 1 || !closed(ch) {
		t.Fatalf("Restore added %d, Changed closed %v", n, closed(ch))
	}
}

// BenchmarkCacheHit measures a Client.Get answered by the client cache.
func BenchmarkCacheHit(b *testing.B) {
	cl, err := New(Config{Endpoints: []string{"127.0.0.1:1"}, Token: "t", Cache: &CacheConfig{TTL: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	req := &pb.GetRequest{Path: "secret/bench/db"}
	cl.cache.Put(CacheKey{TokenHash: cl.tokenHash, Path: req.Path}, &pb.GetResponse{
		Data:     map[string]string{"username": "app", "password": "correct horse battery staple"},
		Metadata: &pb.VersionMetadata{Version: 3, CreatedTimeUnixNano: 1},
		ReadMeta: &pb.ReadMeta{NodeId: "n1", AppliedIndex: 42, LeaderId: "n1"},
	})
	ctx := b.Context()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := cl.Get(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := cl.Get(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	if st := cl.CacheStats(); st.Misses != 0 {
		b.Fatalf("cache misses: %+v", st)
	}
}
