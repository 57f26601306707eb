package replication

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
)

// The newest log entries stay in memory, so that the leader replicates
// them without reading each back from bbolt and decoding it again: at most
// logCacheEntries of them (one default replication batch, so a follower
// that keeps up is fed from memory) and LogCacheBytes of their data. Raft's
// own LogCache bounds the entries only: with secrets of 256 KiB it held
// 64 MiB on every node, and 256 MiB with secrets of 1 MiB.
const (
	logCacheEntries = 256
	// LogCacheBytes bounds the data of the log entries a node keeps in
	// memory.
	LogCacheBytes = 8 << 20
)

// logCache is a raft.LogStore that keeps the newest entries of store in
// memory, bounded by count and by bytes. An entry larger than the byte
// bound alone is not kept.
type logCache struct {
	store      raft.LogStore
	maxEntries int
	maxBytes   int
	// failed, when set, is told of every entry the store could not write.
	failed func(error)

	mu sync.RWMutex
	// logs holds the cached entries by index; order their indexes, oldest
	// first; bytes the size of their data.
	logs  map[uint64]*raft.Log
	order []uint64
	bytes int
}

var _ raft.LogStore = (*logCache)(nil)

func newLogCache(store raft.LogStore, maxEntries, maxBytes int) *logCache {
	return &logCache{store: store, maxEntries: maxEntries, maxBytes: maxBytes, logs: make(map[uint64]*raft.Log)}
}

// entrySize is what an entry holds in memory beyond its fixed fields.
func entrySize(l *raft.Log) int { return len(l.Data) + len(l.Extensions) }

// GetLog returns entry idx from memory, or else from the store.
func (c *logCache) GetLog(idx uint64, log *raft.Log) error {
	c.mu.RLock()
	cached, ok := c.logs[idx]
	c.mu.RUnlock()
	if ok {
		*log = *cached
		return nil
	}
	return c.store.GetLog(idx, log)
}

// StoreLog stores one entry.
func (c *logCache) StoreLog(log *raft.Log) error {
	return c.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores entries in the store, then keeps them in memory,
// dropping the oldest ones past the bounds.
func (c *logCache) StoreLogs(logs []*raft.Log) error {
	if err := c.store.StoreLogs(logs); err != nil {
		if errors.Is(err, wal.ErrSealed) {
			// raft-wal starts its next segment in the background and
			// only logs why it could not; the appends after say this.
			err = fmt.Errorf("replication: store log entries: the WAL could not start its next segment (usually a full disk; the log line \"rotate error\" says why): %w", err)
		} else {
			err = fmt.Errorf("replication: store log entries: %w", err)
		}
		if c.failed != nil {
			c.failed(err)
		}
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range logs {
		if entrySize(l) > c.maxBytes {
			continue
		}
		if old, ok := c.logs[l.Index]; ok {
			// Raft deletes a conflicting suffix before it stores over it,
			// which empties the cache; keep the count right regardless.
			c.bytes -= entrySize(old)
		} else {
			c.order = append(c.order, l.Index)
		}
		c.logs[l.Index] = l
		c.bytes += entrySize(l)
	}
	for len(c.order) > 0 && (len(c.order) > c.maxEntries || c.bytes > c.maxBytes) {
		idx := c.order[0]
		c.order = c.order[1:]
		if old, ok := c.logs[idx]; ok {
			c.bytes -= entrySize(old)
			delete(c.logs, idx)
		}
	}
	return nil
}

// FirstIndex returns the store's first index.
func (c *logCache) FirstIndex() (uint64, error) { return c.store.FirstIndex() }

// LastIndex returns the store's last index.
func (c *logCache) LastIndex() (uint64, error) { return c.store.LastIndex() }

// DeleteRange empties the cache and deletes the range from the store.
func (c *logCache) DeleteRange(lo, hi uint64) error {
	c.mu.Lock()
	c.logs, c.order, c.bytes = make(map[uint64]*raft.Log), nil, 0
	c.mu.Unlock()
	return c.store.DeleteRange(lo, hi)
}

// IsMonotonic passes on whether the store's indexes only grow
// (raft.MonotonicLogStore).
func (c *logCache) IsMonotonic() bool {
	m, ok := c.store.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// lastFSMIndex returns the newest index at or below idx whose entry the
// state machine is handed (a command or a configuration change): Raft
// keeps noop and barrier entries to itself. The entries looked at are
// normally in memory (a leader's commit index is among its newest
// entries); any other is read from the store. An entry that cannot be read
// counts as one the state machine is handed, which only makes a reader
// wait longer.
func (c *logCache) lastFSMIndex(idx uint64) uint64 {
	for ; idx > 0; idx-- {
		c.mu.RLock()
		l, ok := c.logs[idx]
		var typ raft.LogType
		if ok {
			typ = l.Type
		}
		c.mu.RUnlock()
		if !ok {
			var stored raft.Log
			if err := c.store.GetLog(idx, &stored); err != nil {
				return idx
			}
			typ = stored.Type
		}
		if typ == raft.LogCommand || typ == raft.LogConfiguration {
			return idx
		}
	}
	return 0
}

// cached reports the entries and bytes in memory (for tests).
func (c *logCache) cached() (entries, bytes int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.logs), c.bytes
}
