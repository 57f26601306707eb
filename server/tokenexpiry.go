package server

import (
	"container/heap"
	"sync"
)

// expiryQueue is the leader's index of service tokens by expiry time, so
// that finding the expired ones opens only those, not every token record.
// It lives in memory: built by one scan when a node becomes leader (or
// after a restore replaced the state), then fed by every token the leader
// writes (mint, renew). An entry is a hint: the record is read again
// before anything is removed, and a token renewed since goes back in at
// its new time.
type expiryQueue struct {
	mu    sync.Mutex
	valid bool
	h     expiryHeap
}

type expiryEntry struct {
	expire int64
	hash   string
}

type expiryHeap []expiryEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expire < h[j].expire }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// push notes that the token with hash expires at expire (Unix seconds; 0:
// never). Before the queue is built it does nothing: the scan will find
// the token.
func (q *expiryQueue) push(hash string, expire int64) {
	if expire == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.valid {
		heap.Push(&q.h, expiryEntry{expire: expire, hash: hash})
	}
}

// invalidate drops the queue: the next pass scans (a new leadership, a
// restored state).
func (q *expiryQueue) invalidate() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.valid, q.h = false, nil
}

// built reports whether the queue holds every token.
func (q *expiryQueue) built() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.valid
}

// build replaces the queue with entries, from a scan of every token.
func (q *expiryQueue) build(entries []expiryEntry) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.h = expiryHeap(entries)
	heap.Init(&q.h)
	q.valid = true
}

// due takes out up to limit entries whose time is at or before now.
func (q *expiryQueue) due(now int64, limit int) []expiryEntry {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []expiryEntry
	for len(out) < limit && q.h.Len() > 0 && q.h[0].expire <= now {
		out = append(out, heap.Pop(&q.h).(expiryEntry))
	}
	return out
}
