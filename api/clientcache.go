package api

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// CacheStaleError is returned by a cached Get when no endpoint answered and
// the cached value is past its max_stale budget. It unwraps to both
// ErrCacheTooStale and the cluster's error, and has gRPC status
// Unavailable (a later try may reach the cluster).
type CacheStaleError struct {
	// Path is the secret read.
	Path string
	// Age is the time since the value was fetched; Expired how long ago it
	// passed its TTL.
	Age, Expired time.Duration
	// MaxStale is the cache's budget past the TTL.
	MaxStale time.Duration
	// Err is the error of the last attempt on the cluster.
	Err error
}

func (e *CacheStaleError) Error() string {
	return fmt.Sprintf("api: no endpoint answered and the cached value of %s is past max_stale (fetched %s ago, expired %s ago, max_stale %s): bring a node back or check COFFER_ADDR; last error: %s",
		e.Path, e.Age.Round(time.Millisecond), e.Expired.Round(time.Millisecond), e.MaxStale, status.Convert(e.Err).Message())
}

// Unwrap returns ErrCacheTooStale and the cluster's error.
func (e *CacheStaleError) Unwrap() []error { return []error{ErrCacheTooStale, e.Err} }

// GRPCStatus makes the error an Unavailable status with its own message
// and the reason CACHE_TOO_STALE.
func (e *CacheStaleError) GRPCStatus() *status.Status {
	return status.Convert(StatusError(codes.Unavailable, pb.ErrorReason_CACHE_TOO_STALE, e.Error()))
}

// cacheWatch keeps the cache fresh for one mount ("secret/").
type cacheWatch struct {
	prefix string
	// start is the index the watch resumes after: an answer read before
	// it may predate a change the watch will never report, so it is not
	// stored.
	start uint64
	// through is the last index the watch has seen: every change up to it
	// has been applied to the cache.
	through atomic.Uint64
	// failed is set when the watch stopped for good (the token may not
	// watch): entries then only live for their TTL.
	failed atomic.Bool
}

// mountOf returns the mount of path: "secret/" for "secret/app/db".
func mountOf(path string) string {
	if i := strings.IndexByte(path, '/'); i >= 0 {
		return path[:i+1]
	}
	return path + "/"
}

// CacheStats returns the client cache's counters (zero without a cache).
func (c *Client) CacheStats() CacheStats {
	if c.cache == nil {
		return CacheStats{}
	}
	return c.cache.Stats()
}

// Cache returns the client cache (nil without Config.Cache), for a process
// that persists it (Records, Restore, Changed) or reports on it. Entries it
// adds with Put are served like the client's own.
func (c *Client) Cache() *Cache { return c.cache }

// expired reports whether a cached version has reached the deletion time
// its secret's delete_version_after gave it: it is deleted now, which no
// change event announces, so the cluster must answer.
func expired(r *pb.GetResponse) bool {
	d := r.GetMetadata().GetDeletionTimeUnixNano()
	return d != 0 && d <= time.Now().UnixNano()
}

// getCached is Get with the client cache: a fresh entry answers without a
// call (unless the read is linearizable, or names a min_index the entry
// is not known to cover); a cluster answer is stored; when no endpoint
// answers, an entry within max_stale answers, marked stale.
func (c *Client) getCached(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, ReadInfo, error) {
	if req.Subkeys || req.AllowDeleted {
		// Other answers than a Get's (keys only, a deleted version's
		// metadata), under other policies: never from or into the cache.
		return c.getRemote(ctx, req)
	}
	_, hash := c.token(ctx)
	key := CacheKey{TokenHash: hash, Path: req.Path, Version: req.Version}
	cons := c.cfg.Consistency
	if req.Read != nil {
		cons = req.Read.Consistency
	}
	if cons != pb.Consistency_CONSISTENCY_LINEARIZABLE && c.tokenVouched(hash) {
		if e := c.cache.Get(key); e.State == CacheFresh && c.covers(req.Path, e.Index, req.Read.GetMinIndex()) && !expired(e.Response) {
			return e.Response, ReadInfo{Cached: true, Age: e.Age, Stale: e.Response.GetReadMeta().GetStale()}, nil
		}
	}
	resp, info, err := c.getRemote(ctx, req)
	if err == nil || IsNotFound(err) || IsPermissionDenied(err) {
		c.vouch(hash)
	}
	if IsUnauthenticated(err) {
		// The cluster refuses the token (revoked, expired): nothing cached
		// for it may be served again.
		c.cache.InvalidateToken(hash)
		c.tokenChecked.forget(hash)
		return nil, info, err
	}
	if err == nil {
		// A fresh answer is cached for TTL; one that may be stale (a stale
		// read or fallback), or that the cache refuses as older than a
		// change it saw, is kept only for stale-if-error, and only when it
		// is newer than what the cache holds: a cached answer must never
		// be older than one the client was given.
		if info.Stale || info.Fallback || !c.storeCached(key, resp) {
			c.cache.PutStale(key, resp)
		}
		return resp, info, nil
	}
	if IsNotFound(err) {
		c.cache.Invalidate(req.Path, 0)
		return nil, info, err
	}
	if !staleIfError(err) || cons == pb.Consistency_CONSISTENCY_LINEARIZABLE {
		// A linearizable read fails rather than answer from the cache.
		return nil, info, err
	}
	e := c.cache.lookup(key, false)
	if e.Response != nil && expired(e.Response) {
		return nil, info, err
	}
	switch e.State {
	case CacheFresh, CacheExpired:
		c.cache.ServedStale()
		resp := e.Response
		if resp.ReadMeta == nil {
			resp.ReadMeta = &pb.ReadMeta{}
		}
		resp.ReadMeta.Stale = true
		resp.ReadMeta.LastContactMs += e.Age.Milliseconds()
		return resp, ReadInfo{Cached: true, Age: e.Age, Stale: true, Fallback: true}, nil
	case CacheTooStale:
		return nil, info, &CacheStaleError{Path: req.Path, Age: e.Age, Expired: e.Expired, MaxStale: c.cache.cfg.MaxStale, Err: err}
	}
	return nil, info, err
}

// tokenVouched reports whether the cluster accepted the token with hash
// within the cache's TokenRecheck, so that its cached answers may be
// served without asking.
func (c *Client) tokenVouched(hash string) bool {
	d := c.cache.cfg.TokenRecheck
	if d < 0 {
		return true
	}
	at, ok := c.tokenChecked.get(hash)
	return ok && time.Since(at) < d
}

// vouch notes that the cluster just accepted the token with hash (nothing
// to note when tokens are never rechecked).
func (c *Client) vouch(hash string) {
	if c.cache.cfg.TokenRecheck < 0 {
		return
	}
	c.tokenChecked.set(hash, time.Now(), c.cache.cfg.TokenRecheck)
}

// maxTokenChecks bounds the tokens a client remembers the cluster
// accepted: past it, the ones accepted longer ago than the recheck go
// (they would be asked again anyway), or all when that frees nothing.
const maxTokenChecks = 4096

// tokenChecks maps token hashes to when the cluster last accepted them.
type tokenChecks struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (t *tokenChecks) get(hash string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.at[hash]
	return at, ok
}

func (t *tokenChecks) set(hash string, now time.Time, recheck time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.at == nil {
		t.at = make(map[string]time.Time)
	}
	if _, ok := t.at[hash]; !ok && len(t.at) >= maxTokenChecks {
		for h, at := range t.at {
			if now.Sub(at) >= recheck {
				delete(t.at, h)
			}
		}
		if len(t.at) >= maxTokenChecks {
			clear(t.at)
		}
	}
	t.at[hash] = now
}

func (t *tokenChecks) forget(hash string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.at, hash)
}

// staleIfError reports whether err means the cluster could not answer, so
// that a cached value may: Unavailable everywhere, or the caller's
// deadline spent trying.
func staleIfError(err error) bool {
	return Retryable(err) || status.Code(err) == codes.DeadlineExceeded
}

// covers reports whether an entry read at index is known to be current as
// of minIndex: read at or after it, or kept fresh by a watch that has
// seen it.
func (c *Client) covers(path string, index, minIndex uint64) bool {
	if minIndex == 0 || index >= minIndex {
		return true
	}
	c.mu.Lock()
	w := c.cacheWatches[mountOf(path)]
	c.mu.Unlock()
	return w != nil && !w.failed.Load() && w.through.Load() >= minIndex
}

// storeCached stores a cluster answer, starting the watch of its mount
// first when there is none; it reports whether the answer was stored.
func (c *Client) storeCached(key CacheKey, resp *pb.GetResponse) bool {
	index := resp.GetReadMeta().GetAppliedIndex()
	if index == 0 {
		return false
	}
	if !c.cache.cfg.DisableWatch && !c.watchCovers(key.Path, index) {
		return false
	}
	return c.cache.Put(key, resp)
}

// watchCovers makes sure a watch follows path's mount and reports whether
// an answer read at index may be stored: the watch reports every change
// after its start.
func (c *Client) watchCovers(path string, index uint64) bool {
	mount := mountOf(path)
	c.mu.Lock()
	w := c.cacheWatches[mount]
	if w == nil && !c.closed {
		w = &cacheWatch{prefix: mount, start: index}
		w.through.Store(index)
		c.cacheWatches[mount] = w
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.runCacheWatch(w)
		}()
	}
	c.mu.Unlock()
	if w == nil {
		return false
	}
	return w.failed.Load() || index >= w.start
}

// runCacheWatch applies one mount's changes to the cache until the client
// closes.
func (c *Client) runCacheWatch(w *cacheWatch) {
	c.watchLoop(c.bg, w.prefix, w.start, func(ev WatchEvent) bool {
		switch ev.Type {
		case WatchChange:
			c.cache.Invalidate(ev.Path, ev.Index)
		case WatchCompacted:
			c.cache.InvalidatePrefix(w.prefix, ev.Index)
		case WatchFailed:
			w.failed.Store(true)
			return false
		}
		w.through.Store(max(w.through.Load(), ev.Index))
		return true
	})
}
