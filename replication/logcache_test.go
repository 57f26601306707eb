package replication

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"
)

// TestLogCacheBoundsBytes: the cache keeps the newest entries within its
// count and its bytes, never an entry larger than its byte bound, answers
// evicted entries from the store, and empties on a delete.
func TestLogCacheBoundsBytes(t *testing.T) {
	store := raft.NewInmemStore()
	c := newLogCache(store, 4, 10)
	entry := func(i uint64, size int) *raft.Log {
		return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, size)}
	}
	check := func(what string, wantEntries, wantBytes int) {
		t.Helper()
		if n, b := c.cached(); n != wantEntries || b != wantBytes {
			t.Fatalf("%s: %d entries, %d bytes cached; want %d, %d", what, n, b, wantEntries, wantBytes)
		}
	}
	if err := c.StoreLogs([]*raft.Log{entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1), entry(5, 1)}); err != nil {
		t.Fatal(err)
	}
	check("five small entries, four kept", 4, 4)
	if err := c.StoreLog(entry(6, 8)); err != nil {
		t.Fatal(err)
	}
	check("a large entry evicts by bytes", 3, 10)
	if err := c.StoreLog(entry(7, 11)); err != nil {
		t.Fatal(err)
	}
	check("an entry over the byte bound is not kept", 3, 10)
	// Every entry reads back, from memory or from the store.
	for i := uint64(1); i <= 7; i++ {
		var l raft.Log
		if err := c.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if l.Index != i || len(l.Data) == 0 || l.Data[0] != byte(i) {
			t.Fatalf("entry %d read back as %d with %d bytes", i, l.Index, len(l.Data))
		}
	}
	if err := c.DeleteRange(5, 7); err != nil {
		t.Fatal(err)
	}
	check("after a delete", 0, 0)
	var l raft.Log
	if err := c.GetLog(6, &l); err == nil {
		t.Fatal("a deleted entry still reads")
	}
	if last, err := c.LastIndex(); err != nil || last != 4 {
		t.Fatalf("last index %d, %v", last, err)
	}
}
