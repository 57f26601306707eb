package api

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "coffer/api/cofferpb"
)

// Defaults of the CacheConfig fields whose zero value means "default".
const (
	DefaultCacheEntries  = 1024
	DefaultCacheTTL      = time.Minute
	DefaultCacheMaxStale = time.Hour
	DefaultTokenRecheck  = 5 * time.Second
)

// CacheConfig configures a Cache. The zero value of each field means its
// default.
type CacheConfig struct {
	// MaxEntries bounds the number of cached answers; the least recently
	// used one is evicted first. Default 1024.
	MaxEntries int
	// TTL is how long a cached answer is served without asking the
	// cluster. Default 1m. Within it a Watch keeps the cache fresh (in
	// a Client): a change to a cached path drops its entries.
	TTL time.Duration
	// Jitter shortens each entry's TTL by a random duration in [0, Jitter),
	// so that entries cached together do not expire together. Default
	// TTL/10; negative means none.
	Jitter time.Duration
	// MaxStale is the stale-if-error budget: when no endpoint answers, an
	// expired entry is still served (marked stale, with its age) until
	// MaxStale past its expiry. Past it the read fails with
	// ErrCacheTooStale. Default 1h; negative turns stale-if-error off.
	MaxStale time.Duration
	// TokenRecheck is how long a Client serves a token's cached answers
	// without the cluster having accepted that token: past it, the next
	// read with the token goes to the cluster, and a refusal (revoked or
	// expired) removes every answer cached for the token. While no node
	// answers, cached answers are still served (stale-if-error, within
	// MaxStale): during a full outage a revocation cannot be learned.
	// Default 5s; negative: never (the TTL alone bounds it).
	TokenRecheck time.Duration
	// DisableWatch keeps a Client from watching the cached paths' mounts:
	// entries are then only as fresh as TTL allows (and the client's own
	// writes). Not used by a standalone Cache.
	DisableWatch bool
}

// Validate reports the first field of c that cannot work.
func (c CacheConfig) Validate() error {
	if c.MaxEntries < 0 {
		return fmt.Errorf("%w: Cache.MaxEntries is negative (%d): use 0 for the default", ErrInvalidConfig, c.MaxEntries)
	}
	if c.TTL < 0 {
		return fmt.Errorf("%w: Cache.TTL is negative (%s): use 0 for the default", ErrInvalidConfig, c.TTL)
	}
	return nil
}

func (c CacheConfig) withDefaults() CacheConfig {
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultCacheEntries
	}
	if c.TTL == 0 {
		c.TTL = DefaultCacheTTL
	}
	switch {
	case c.Jitter == 0:
		c.Jitter = c.TTL / 10
	case c.Jitter < 0:
		c.Jitter = 0
	}
	c.Jitter = min(c.Jitter, c.TTL)
	if c.TokenRecheck == 0 {
		c.TokenRecheck = DefaultTokenRecheck
	}
	if c.MaxStale == 0 {
		c.MaxStale = DefaultCacheMaxStale
	}
	return c
}

// CacheKey names one cached answer: a version (0 for the current one) of
// the secret at a path, as read with the token whose hash is TokenHash. A
// cached answer is only found with the same token hash, so it is served
// only to holders of the token that was allowed to read it.
type CacheKey struct {
	TokenHash string
	Path      string
	Version   uint64
}

// TokenHash returns the hash a CacheKey holds instead of the token.
func TokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// CacheState says what a cache lookup found.
type CacheState int

const (
	// CacheMiss: no entry.
	CacheMiss CacheState = iota
	// CacheFresh: an entry within its TTL.
	CacheFresh
	// CacheExpired: an entry past its TTL but within MaxStale of it: serve
	// it only when the cluster cannot answer (stale-if-error).
	CacheExpired
	// CacheTooStale: an entry past TTL + MaxStale; its data is dropped and
	// only its age remains.
	CacheTooStale
)

func (s CacheState) String() string {
	switch s {
	case CacheFresh:
		return "fresh"
	case CacheExpired:
		return "expired"
	case CacheTooStale:
		return "too stale"
	default:
		return "miss"
	}
}

// CacheEntry is the result of a lookup.
type CacheEntry struct {
	// State says whether the entry may be served.
	State CacheState
	// Response is a copy of the cached answer (the caller may change it);
	// nil unless State is CacheFresh or CacheExpired.
	Response *pb.GetResponse
	// Index is the applied index of the node that answered.
	Index uint64
	// Age is the time since the answer was fetched.
	Age time.Duration
	// Expired is how long ago the entry passed its TTL (0 when fresh).
	Expired time.Duration
}

// CacheStats counts what a Cache did.
type CacheStats struct {
	Entries       int
	Hits          uint64 // lookups that found a fresh entry
	Misses        uint64 // lookups that found nothing fresh
	StaleServed   uint64 // expired entries served because the cluster did not answer
	Evictions     uint64 // entries dropped to stay within MaxEntries
	Invalidations uint64 // entries dropped because their path changed
	Rejected      uint64 // answers not stored because a newer change was known
}

// Cache holds Get answers in memory (never on disk), keyed by token hash,
// path and version, with a TTL (with jitter), an LRU bound and
// stale-if-error bookkeeping. It is safe for concurrent use and does no
// I/O: its owner fills it (Put), keeps it fresh (Invalidate, from a watch
// of the cached paths and from its own writes) and decides when to serve
// an expired entry. A Client owns one when Config.Cache is set; an agent
// serving several tokens can use one directly, keyed by each caller's
// TokenHash.
type Cache struct {
	cfg CacheConfig
	now func() time.Time // replaced by tests

	mu      sync.Mutex
	lru     *list.List // of *cacheEntry, most recently used first
	entries map[CacheKey]*list.Element
	byPath  map[string]map[CacheKey]struct{}
	// changes remembers the index of the latest change seen per path, so
	// that an answer read before that change is not stored after it; the
	// oldest records are dropped past a bound and raise floor instead.
	changes     map[string]*list.Element // of *pathChange
	changeOrder *list.List
	floor       uint64
	// changed is closed at the next change of the entries (see Changed);
	// nil until someone asks.
	changed chan struct{}

	hits, misses, staleServed, evictions, invalidations, rejected atomic.Uint64
}

type cacheEntry struct {
	key     CacheKey
	resp    *pb.GetResponse // nil once too stale
	index   uint64
	fetched time.Time
	expires time.Time
}

type pathChange struct {
	path  string
	index uint64
}

// NewCache returns an empty cache.
func NewCache(cfg CacheConfig) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Cache{
		cfg:         cfg.withDefaults(),
		now:         time.Now,
		lru:         list.New(),
		entries:     make(map[CacheKey]*list.Element),
		byPath:      make(map[string]map[CacheKey]struct{}),
		changes:     make(map[string]*list.Element),
		changeOrder: list.New(),
	}, nil
}

// Config returns the cache's configuration, defaults filled in.
func (c *Cache) Config() CacheConfig { return c.cfg }

// Get looks key up. A fresh entry counts as a hit; an expired one is
// returned with State CacheExpired for the caller to serve only when the
// cluster cannot answer (then call ServedStale); an entry past
// TTL + MaxStale loses its data and is reported as CacheTooStale with its
// age.
func (c *Cache) Get(key CacheKey) CacheEntry { return c.lookup(key, true) }

// lookup is Get; count false leaves the hit and miss counters alone (a
// second look after the cluster failed to answer).
func (c *Cache) lookup(key CacheKey, count bool) CacheEntry {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[key]
	if !ok {
		if count {
			c.misses.Add(1)
		}
		return CacheEntry{}
	}
	e := el.Value.(*cacheEntry)
	out := CacheEntry{Index: e.index, Age: now.Sub(e.fetched)}
	switch {
	case now.Before(e.expires) && e.resp != nil:
		if count {
			c.hits.Add(1)
		}
		c.lru.MoveToFront(el)
		out.State, out.Response = CacheFresh, cloneGet(e.resp)
		return out
	case e.resp != nil && c.servable(e, now):
		c.lru.MoveToFront(el)
		out.State, out.Response = CacheExpired, cloneGet(e.resp)
	default:
		out.State = CacheTooStale
		e.resp = nil // past the budget: keep only the age
	}
	if count {
		c.misses.Add(1)
	}
	out.Expired = now.Sub(e.expires)
	return out
}

// ServedStale counts an expired entry served because the cluster did not
// answer.
func (c *Cache) ServedStale() { c.staleServed.Add(1) }

// Put stores resp under key, with the applied index of its ReadMeta. It
// refuses (and returns false) an answer read before a change to its path
// that the cache has already seen, so that a slow read cannot bring back
// a value a watch or a write has replaced.
func (c *Cache) Put(key CacheKey, resp *pb.GetResponse) bool {
	if resp == nil {
		return false
	}
	index := resp.GetReadMeta().GetAppliedIndex()
	now := c.now()
	ttl := c.cfg.TTL
	if c.cfg.Jitter > 0 {
		ttl -= mrand.N(c.cfg.Jitter)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if index < c.floor {
		c.rejected.Add(1)
		return false
	}
	if ch, ok := c.changes[key.Path]; ok && index < ch.Value.(*pathChange).index {
		c.rejected.Add(1)
		return false
	}
	e := &cacheEntry{key: key, resp: cloneGet(resp), index: index, fetched: now, expires: now.Add(ttl)}
	if el, ok := c.entries[key]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		c.noteChanged()
		return true
	}
	c.insert(e)
	c.evict()
	return true
}

// PutStale keeps an answer that may be stale (a stale fallback read while
// no leader answered) for stale-if-error only: it is stored already
// expired, and only when it is newer than the entry it would replace, so a
// value served from the cache is never older than one the client has seen.
func (c *Cache) PutStale(key CacheKey, resp *pb.GetResponse) bool {
	if resp == nil {
		return false
	}
	index := resp.GetReadMeta().GetAppliedIndex()
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &cacheEntry{key: key, resp: cloneGet(resp), index: index, fetched: now, expires: now}
	if el, ok := c.entries[key]; ok {
		if old := el.Value.(*cacheEntry); old.resp != nil && index <= old.index {
			return false
		}
		el.Value = e
		c.lru.MoveToFront(el)
		c.noteChanged()
		return true
	}
	c.insert(e)
	c.evict()
	return true
}

// insert adds a new entry as the most recently used; c.mu is held.
func (c *Cache) insert(e *cacheEntry) {
	c.entries[e.key] = c.lru.PushFront(e)
	if c.byPath[e.key.Path] == nil {
		c.byPath[e.key.Path] = make(map[CacheKey]struct{})
	}
	c.byPath[e.key.Path][e.key] = struct{}{}
	c.noteChanged()
}

// evict drops the least recently used entries past MaxEntries; c.mu is
// held.
func (c *Cache) evict() {
	for c.lru.Len() > c.cfg.MaxEntries {
		c.remove(c.lru.Back())
		c.evictions.Add(1)
	}
}

// remove drops one entry; c.mu is held.
func (c *Cache) remove(el *list.Element) {
	e := el.Value.(*cacheEntry)
	c.lru.Remove(el)
	delete(c.entries, e.key)
	if keys := c.byPath[e.key.Path]; keys != nil {
		delete(keys, e.key)
		if len(keys) == 0 {
			delete(c.byPath, e.key.Path)
		}
	}
	c.noteChanged()
}

// Changed returns a channel that is closed at the next change of the
// cache's entries: an answer stored, an entry dropped (invalidated or
// evicted) or restored. Every caller waiting for the same change gets the
// same channel; ask again after it closes. A process that persists the
// cache (Records) uses it to write only after a change.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

// noteChanged wakes the waiters of Changed; c.mu is held.
func (c *Cache) noteChanged() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// Invalidate expires every entry of path (all tokens, all versions): the
// secret changed at index. The entries are no longer served fresh, only by
// stale-if-error while no node answers. Answers read before index are
// refused from now on. It returns the number of entries expired.
func (c *Cache) Invalidate(path string, index uint64) int {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for key := range c.byPath[path] {
		if c.expire(c.entries[key], now) {
			n++
		}
	}
	c.invalidations.Add(uint64(n))
	c.noteChange(path, index)
	return n
}

// expire makes an entry expired now but keeps its answer: it is never
// served fresh again, yet stays available to stale-if-error (a secret that
// changed just before the cluster became unreachable is still served,
// marked stale, rather than not at all). c.mu is held.
func (c *Cache) expire(el *list.Element, now time.Time) bool {
	if el == nil {
		return false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		return false
	}
	e.expires = now
	c.noteChanged()
	return true
}

// InvalidateToken removes every entry read with the token whose hash is
// hash: the cluster refused that token (revoked or expired), so none of
// its answers may be served again, not even stale. It returns how many it
// removed.
func (c *Cache) InvalidateToken(hash string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for key, el := range c.entries {
		if key.TokenHash == hash {
			c.remove(el)
			n++
		}
	}
	c.invalidations.Add(uint64(n))
	return n
}

// InvalidatePrefix expires every entry under prefix (kept only for
// stale-if-error): changes after some
// index may have been missed (a watch was compacted). Answers read before
// index are refused from now on, under any path.
func (c *Cache) InvalidatePrefix(prefix string, index uint64) int {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for path, keys := range c.byPath {
		if !strings.HasPrefix(path, prefix) {
			continue
		}
		for key := range keys {
			if c.expire(c.entries[key], now) {
				n++
			}
		}
	}
	c.invalidations.Add(uint64(n))
	c.floor = max(c.floor, index)
	return n
}

// noteChange records that path changed at index; c.mu is held. The record
// list is bounded: the oldest record raises floor when it is dropped.
func (c *Cache) noteChange(path string, index uint64) {
	if el, ok := c.changes[path]; ok {
		pc := el.Value.(*pathChange)
		pc.index = max(pc.index, index)
		c.changeOrder.MoveToBack(el)
		return
	}
	c.changes[path] = c.changeOrder.PushBack(&pathChange{path: path, index: index})
	for c.changeOrder.Len() > max(c.cfg.MaxEntries, 1024) {
		el := c.changeOrder.Front()
		pc := el.Value.(*pathChange)
		c.changeOrder.Remove(el)
		delete(c.changes, pc.path)
		c.floor = max(c.floor, pc.index)
	}
}

// CacheRecord is one entry as Records exports it and Restore takes it
// back: for a process that keeps its cache across restarts (encrypted:
// Response holds secret data in the clear).
type CacheRecord struct {
	Key      CacheKey
	Response *pb.GetResponse
	Index    uint64
	Fetched  time.Time
	Expires  time.Time
}

// Records returns a copy of every entry that may still be served (fresh,
// or expired within MaxStale), most recently used first.
func (c *Cache) Records() []CacheRecord {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []CacheRecord
	for el := c.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*cacheEntry)
		if e.resp == nil || !c.servable(e, now) {
			continue
		}
		out = append(out, CacheRecord{Key: e.key, Response: cloneGet(e.resp), Index: e.index, Fetched: e.fetched, Expires: e.expires})
	}
	return out
}

// Restore adds records (as Records returned them) that may still be
// served and whose key has no entry yet, keeping their order of use, and
// returns how many it added (past MaxEntries the least recently used
// entries are then evicted, as always). Restored entries are only as fresh as their
// times say: a restarted process should treat them as possibly stale
// until a watch has caught up.
func (c *Cache) Restore(recs []CacheRecord) int {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		e := &cacheEntry{key: r.Key, index: r.Index, fetched: r.Fetched, expires: r.Expires}
		if r.Response == nil || !c.servable(e, now) || r.Index < c.floor {
			continue
		}
		if _, ok := c.entries[r.Key]; ok {
			continue
		}
		if ch, ok := c.changes[r.Key.Path]; ok && r.Index < ch.Value.(*pathChange).index {
			continue
		}
		e.resp = cloneGet(r.Response)
		c.insert(e)
		n++
	}
	c.evict()
	return n
}

// servable reports whether e may still be served at now (fresh, or within
// MaxStale of its expiry).
func (c *Cache) servable(e *cacheEntry, now time.Time) bool {
	return now.Before(e.expires) || (c.cfg.MaxStale > 0 && now.Before(e.expires.Add(c.cfg.MaxStale)))
}

// Len returns the number of entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	return CacheStats{
		Entries:       c.Len(),
		Hits:          c.hits.Load(),
		Misses:        c.misses.Load(),
		StaleServed:   c.staleServed.Load(),
		Evictions:     c.evictions.Load(),
		Invalidations: c.invalidations.Load(),
		Rejected:      c.rejected.Load(),
	}
}

// cloneGet copies a Get answer, so that neither the cache nor its callers
// see the other's changes.
func cloneGet(r *pb.GetResponse) *pb.GetResponse {
	out := &pb.GetResponse{Data: maps.Clone(r.Data), CustomMetadata: maps.Clone(r.CustomMetadata)}
	if m := r.Metadata; m != nil {
		out.Metadata = &pb.VersionMetadata{
			Version: m.Version, CreatedTimeUnixNano: m.CreatedTimeUnixNano,
			DeletionTimeUnixNano: m.DeletionTimeUnixNano, Destroyed: m.Destroyed,
		}
	}
	if m := r.ReadMeta; m != nil {
		out.ReadMeta = &pb.ReadMeta{
			NodeId: m.NodeId, AppliedIndex: m.AppliedIndex, LeaderId: m.LeaderId,
			LastContactMs: m.LastContactMs, Stale: m.Stale,
		}
	}
	return out
}
