package fsm

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

func TestIdempotentRetry(t *testing.T) {
	h := newHarness(t, Options{IdempotencyWindow: time.Minute})
	first := putCmd("s", "v")
	first.RequestId = "req-1"
	res1 := h.mustOK(first)

	// The retry arrives later, through a new leader, with a new leader time.
	h.now = h.now.Add(30 * time.Second)
	retry := putCmd("s", "v")
	retry.RequestId = "req-1"
	res2 := h.apply(retry)
	want := res1
	want.Deduplicated = true
	if !reflect.DeepEqual(res2, want) {
		t.Fatalf("retry result = %+v, want %+v", res2, want)
	}
	md, _ := h.f.Metadata("s")
	if md.CurrentVersion != 1 {
		t.Fatalf("retry wrote version %d", md.CurrentVersion)
	}

	// A failed first attempt deduplicates to the same failure.
	bad := casPut("s", "x", 9)
	bad.RequestId = "req-2"
	badRes := h.mustFail(bad, ErrCASMismatch)
	bad2 := casPut("s", "x", 9)
	bad2.RequestId = "req-2"
	badRetry := h.apply(bad2)
	if !badRetry.Deduplicated || badRetry.Index != badRes.Index || !errors.Is(badRetry.Err, ErrCASMismatch) ||
		badRetry.Err.Error() != badRes.Err.Error() {
		t.Fatalf("failed retry = %+v, first %+v", badRetry, badRes)
	}

	// A request_id reused for another command is refused, not swallowed.
	other := putCmd("elsewhere", "v")
	other.RequestId = "req-1"
	conflict := h.mustFail(other, ErrRequestIDConflict)
	if conflict.Deduplicated || conflict.Index != h.idx {
		t.Fatalf("conflict result = %+v", conflict)
	}
	if _, err := h.f.Get("elsewhere", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("conflicting command wrote: %v", err)
	}

	// Past the window (in leader time) the records are pruned by the next
	// command, and the same request_id is a new write.
	if n := bucketLen(t, h.f, bucketIdem); n != 2 {
		t.Fatalf("idem holds %d records, want 2", n)
	}
	h.now = h.now.Add(2 * time.Minute)
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, LeaderTimeUnixNano: h.now.UnixNano()})
	if n, m := bucketLen(t, h.f, bucketIdem), bucketLen(t, h.f, bucketIdemTime); n != 0 || m != 0 {
		t.Fatalf("after the window: idem %d, idem_time %d records, want 0", n, m)
	}
	late := putCmd("s", "v")
	late.RequestId = "req-1"
	if res := h.mustOK(late); res.Deduplicated || res.Version != 2 {
		t.Fatalf("retry after the window = %+v", res)
	}
}

func TestIdempotencyPruneBoundary(t *testing.T) {
	h := newHarness(t, Options{IdempotencyWindow: time.Minute})
	for i, rid := range []string{"a", "b", "c"} {
		c := &fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: rid, LeaderTimeUnixNano: h.now.Add(time.Duration(i) * 10 * time.Second).UnixNano()}
		h.mustOK(c)
	}
	// At base+70s the cutoff is base+10s: "a" (base) goes, "b" (base+10s) stays.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, LeaderTimeUnixNano: h.now.Add(70 * time.Second).UnixNano()})
	if n := bucketLen(t, h.f, bucketIdem); n != 2 {
		t.Fatalf("idem holds %d, want 2", n)
	}
	// A leader clock that went backwards prunes nothing more.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, LeaderTimeUnixNano: h.now.UnixNano()})
	if n := bucketLen(t, h.f, bucketIdemTime); n != 2 {
		t.Fatalf("idem_time holds %d, want 2", n)
	}
	b := &fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: "b", LeaderTimeUnixNano: h.now.UnixNano()}
	if res := h.mustOK(b); !res.Deduplicated || res.Index != 2 {
		t.Fatalf("b within window = %+v", res)
	}
}

// TestIdempotencyRecordBound: the table keeps at most MaxIdempotencyRecords
// request_ids, dropping the oldest, and its count survives a restart and a
// database written before the count was kept.
func TestIdempotencyRecordBound(t *testing.T) {
	h := newHarness(t, Options{MaxIdempotencyRecords: 3})
	put := func(rid, v string) Result {
		cmd := putCmd("s", v)
		cmd.RequestId = rid
		h.now = h.now.Add(time.Millisecond)
		return h.apply(cmd)
	}
	for i, rid := range []string{"r1", "r2", "r3", "r4", "r5"} {
		if res := put(rid, rid); res.Err != nil || res.Deduplicated || res.Version != uint64(i+1) {
			t.Fatalf("write %s: %+v", rid, res)
		}
	}
	if n := bucketLen(t, h.f, bucketIdem); n != 3 {
		t.Fatalf("idem holds %d records, want 3", n)
	}
	if n := bucketLen(t, h.f, bucketIdemTime); n != 3 {
		t.Fatalf("idem_time holds %d records, want 3", n)
	}
	if res := put("r5", "r5"); !res.Deduplicated || res.Version != 5 {
		t.Fatalf("retry of a kept request_id: %+v", res)
	}
	if res := put("r1", "r1"); res.Deduplicated || res.Version != 6 {
		t.Fatalf("a request_id beyond the bound was still remembered: %+v", res)
	}

	// Restart, and forget the count as an older database would: it is
	// counted again and the bound still holds.
	h.reopen()
	if err := h.f.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keyIdemCount) }); err != nil {
		t.Fatal(err)
	}
	for _, rid := range []string{"r6", "r7"} {
		if res := put(rid, rid); res.Err != nil || res.Deduplicated {
			t.Fatalf("write %s after restart: %+v", rid, res)
		}
	}
	if n := bucketLen(t, h.f, bucketIdem); n != 3 {
		t.Fatalf("after restart idem holds %d records, want 3", n)
	}
	if res := put("r4", "r4"); res.Deduplicated {
		t.Fatalf("r4 should have been dropped: %+v", res)
	}
}

// TestIdempotencyPruneMany: one command prunes records spread over many
// pages, by time and then by count, and leaves the table and its count
// exact (pruneOldest finds them in one walk, then deletes them).
func TestIdempotencyPruneMany(t *testing.T) {
	const n = 3000
	h := newHarness(t, Options{IdempotencyWindow: time.Minute, MaxIdempotencyRecords: 2 * n})
	logs := make([]*raft.Log, 0, n)
	for i := range n {
		h.idx++
		data, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: fmt.Sprintf("old-%05d", i),
			LeaderTimeUnixNano: h.now.Add(time.Duration(i) * time.Millisecond).UnixNano()})
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: data})
	}
	h.f.ApplyBatch(logs)
	if got := bucketLen(t, h.f, bucketIdem); got != n {
		t.Fatalf("idem holds %d records, want %d", got, n)
	}
	// Past the window of the first half only: the older half goes.
	h.now = h.now.Add(time.Minute + n/2*time.Millisecond)
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: "new", LeaderTimeUnixNano: h.now.UnixNano()})
	if got, ts := bucketLen(t, h.f, bucketIdem), bucketLen(t, h.f, bucketIdemTime); got != n/2+1 || ts != n/2+1 {
		t.Fatalf("after the window: idem %d, idem_time %d records, want %d", got, ts, n/2+1)
	}
	if res := h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: fmt.Sprintf("old-%05d", n/2-1), LeaderTimeUnixNano: h.now.UnixNano()}); res.Deduplicated {
		t.Fatalf("a pruned request_id was remembered: %+v", res)
	}
	if res := h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: fmt.Sprintf("old-%05d", n/2), LeaderTimeUnixNano: h.now.UnixNano()}); !res.Deduplicated {
		t.Fatalf("a request_id within the window was forgotten: %+v", res)
	}
	// A smaller bound after a restart: the next record drops all but the
	// newest 10 by count, and the count stays exact.
	h.opts.MaxIdempotencyRecords = 10
	h.reopen()
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: "newest", LeaderTimeUnixNano: h.now.UnixNano()})
	if got, ts := bucketLen(t, h.f, bucketIdem), bucketLen(t, h.f, bucketIdemTime); got != 10 || ts != 10 {
		t.Fatalf("after the bound shrank: idem %d, idem_time %d records, want 10", got, ts)
	}
	if err := h.f.view(func(tx *bolt.Tx) error {
		if c, err := decodeUint64(tx.Bucket(bucketMeta).Get(keyIdemCount)); err != nil || c != 10 {
			return fmt.Errorf("idem_count = %d (%v), want 10", c, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if res := h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: "newest", LeaderTimeUnixNano: h.now.UnixNano()}); !res.Deduplicated {
		t.Fatalf("the newest request_id was dropped: %+v", res)
	}
}
