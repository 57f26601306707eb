package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// leaseW is a lease write of a test record.
func leaseW(id, group string, due int64) *fsmpb.LeaseWrite {
	return &fsmpb.LeaseWrite{Id: id, Group: group, DueUnixNano: due, Record: ct("rec-" + id + fmt.Sprint(due))}
}

func leasePut(ws ...*fsmpb.LeaseWrite) *fsmpb.Command {
	return &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: ws}
}

func leaseDel(ids ...string) *fsmpb.Command {
	c := &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_DELETE}
	for _, id := range ids {
		c.LeaseDeletes = append(c.LeaseDeletes, &fsmpb.LeaseDelete{Id: id})
	}
	return c
}

// checkLeaseInvariants verifies what every lease command must keep: each
// lease has exactly one due key, at its due time; every due key names a
// lease; the group counts and the total are the leases' own.
func checkLeaseInvariants(t testing.TB, f *FSM) {
	t.Helper()
	err := f.view(func(tx *bolt.Tx) error {
		lt := leaseTableOf(tx)
		groups := map[string]uint64{}
		var total uint64
		dueKeys := map[string]bool{}
		if err := lt.due.ForEach(func(k, _ []byte) error {
			dueKeys[string(k)] = true
			return nil
		}); err != nil {
			return err
		}
		if err := lt.leases.ForEach(func(k, v []byte) error {
			e := new(fsmpb.LeaseEntry)
			if err := proto.Unmarshal(v, e); err != nil {
				return err
			}
			dk := string(leaseDueKey(e.GetDueUnixNano(), string(k)))
			if !dueKeys[dk] {
				return fmt.Errorf("lease %q has no due key at %d", k, e.GetDueUnixNano())
			}
			delete(dueKeys, dk)
			groups[e.GetGroup()]++
			total++
			return nil
		}); err != nil {
			return err
		}
		if len(dueKeys) != 0 {
			return fmt.Errorf("%d due keys name no lease (or a stale due time)", len(dueKeys))
		}
		stored := map[string]uint64{}
		if err := lt.groups.ForEach(func(k, v []byte) error {
			stored[string(k)] = binary.BigEndian.Uint64(v)
			return nil
		}); err != nil {
			return err
		}
		if fmt.Sprint(stored) != fmt.Sprint(groups) {
			return fmt.Errorf("group counts %v, the leases make %v", stored, groups)
		}
		if got, _ := lt.total(); got != total {
			return fmt.Errorf("total %d, the leases make %d", got, total)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("lease invariants: %v", err)
	}
}

func TestLeasePutUpdateDelete(t *testing.T) {
	h := newHarness(t, Options{})
	f := h.f
	if _, err := f.LeaseGet("db/creds/a/1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LeaseGet of nothing: %v", err)
	}
	r1 := h.mustOK(leasePut(leaseW("db/creds/a/1", "a", 100), leaseW("db/creds/a/2", "a", 50), leaseW("db/creds/b/1", "b", 70)))
	e, err := f.LeaseGet("db/creds/a/1")
	if err != nil || e.Group != "a" || e.DueUnixNano != 100 || e.Index != r1.Index || e.CreatedIndex != r1.Index || plainOf(e.Record) != "rec-db/creds/a/1100" {
		t.Fatalf("LeaseGet = %+v, %v", e, err)
	}
	if g, total, err := f.LeaseCount("a"); err != nil || g != 2 || total != 3 {
		t.Fatalf("LeaseCount(a) = %d, %d, %v", g, total, err)
	}
	checkLeaseInvariants(t, f)

	// An update moves the due key and keeps the creation index.
	r2 := h.mustOK(leasePut(leaseW("db/creds/a/1", "a", 10)))
	e, _ = f.LeaseGet("db/creds/a/1")
	if e.DueUnixNano != 10 || e.Index != r2.Index || e.CreatedIndex != r1.Index {
		t.Fatalf("after update: %+v", e)
	}
	due, err := f.LeaseDue(math.MaxInt64, 0)
	if err != nil || len(due) != 3 || due[0].ID != "db/creds/a/1" || due[1].ID != "db/creds/a/2" || due[2].ID != "db/creds/b/1" {
		t.Fatalf("LeaseDue = %+v, %v", due, err)
	}
	if g, total, _ := f.LeaseCount("a"); g != 2 || total != 3 {
		t.Fatalf("an update changed the counts: %d, %d", g, total)
	}
	checkLeaseInvariants(t, f)

	// A lease keeps its group.
	h.mustFail(leasePut(leaseW("db/creds/a/1", "b", 10)), ErrInvalidCommand)

	// Deletes: absent ids are fine, counts drop, the group key goes at 0.
	h.mustOK(leaseDel("db/creds/a/1", "nope", "db/creds/b/1"))
	if _, err := f.LeaseGet("db/creds/a/1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted lease: %v", err)
	}
	if g, total, _ := f.LeaseCount("b"); g != 0 || total != 1 {
		t.Fatalf("after delete: b=%d total=%d", g, total)
	}
	h.mustOK(leaseDel("nope"))
	checkLeaseInvariants(t, f)
	if n := bucketLen(t, f, bucketLeaseGroup); n != 1 {
		t.Fatalf("%d group keys, want 1 (a group without leases has none)", n)
	}
}

func TestLeaseCreateOnlyAndExpectIndex(t *testing.T) {
	h := newHarness(t, Options{})
	w := leaseW("l/1", "g", 5)
	w.CreateOnly = true
	r := h.mustOK(leasePut(w))
	res := h.mustFail(leasePut(w), ErrAlreadyExists)
	if !strings.Contains(res.Err.Error(), `"l/1"`) {
		t.Fatalf("error does not name the lease: %v", res.Err)
	}

	upd := leaseW("l/1", "g", 9)
	upd.ExpectIndex = r.Index + 7
	h.mustFail(leasePut(upd), ErrCASMismatch)
	upd.ExpectIndex = r.Index
	r2 := h.mustOK(leasePut(upd))
	// The same expectation again is stale now.
	h.mustFail(leasePut(upd), ErrCASMismatch)
	// An expectation on an absent lease never holds.
	absent := leaseW("l/2", "g", 1)
	absent.ExpectIndex = r2.Index
	h.mustFail(leasePut(absent), ErrCASMismatch)

	// Deletes with a stale expectation fail whole; a matching one works.
	del := &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_DELETE, LeaseDeletes: []*fsmpb.LeaseDelete{{Id: "l/1", ExpectIndex: r.Index}}}
	h.mustFail(del, ErrCASMismatch)
	if _, err := h.f.LeaseGet("l/1"); err != nil {
		t.Fatalf("a failed delete removed the lease: %v", err)
	}
	del.LeaseDeletes[0].ExpectIndex = r2.Index
	h.mustOK(del)
	// Absent with an expectation: already gone, not an error.
	h.mustOK(del)
	checkLeaseInvariants(t, h.f)
}

// TestLeaseCommandIsAtomic: one failing write or delete leaves the whole
// command without effect.
func TestLeaseCommandIsAtomic(t *testing.T) {
	h := newHarness(t, Options{})
	r := h.mustOK(leasePut(leaseW("x/1", "g", 1)))
	before := dump(t, h.f, bucketMeta)
	stale := leaseW("x/1", "g", 2)
	stale.ExpectIndex = r.Index + 1
	h.mustFail(leasePut(leaseW("x/2", "g", 3), leaseW("x/3", "h", 4), stale), ErrCASMismatch)
	quota := leaseW("x/5", "g", 1)
	quota.MaxInGroup = 3
	h.mustFail(leasePut(leaseW("x/4", "g", 3), leaseW("x/6", "g", 3), quota), ErrQuotaExceeded)
	del := leaseDel("x/1", "x/9")
	del.LeaseDeletes = append(del.LeaseDeletes, &fsmpb.LeaseDelete{Id: "x/1b"})
	del.LeaseDeletes[0].ExpectIndex = r.Index + 5
	h.mustFail(del, ErrCASMismatch)
	if !bytes.Equal(before, dump(t, h.f, bucketMeta)) {
		t.Fatal("a failed lease command changed the state")
	}
	checkLeaseInvariants(t, h.f)
}

func TestLeaseQuotaMessages(t *testing.T) {
	h := newHarness(t, Options{})
	w := func(id, g string) *fsmpb.LeaseWrite {
		x := leaseW(id, g, 1)
		x.MaxInGroup, x.MaxTotal = 2, 3
		return x
	}
	h.mustOK(leasePut(w("a/1", "a"), w("a/2", "a")))
	res := h.mustFail(leasePut(w("a/3", "a")), ErrQuotaExceeded)
	if !strings.Contains(res.Err.Error(), `group "a" holds 2 live leases`) || !strings.Contains(res.Err.Error(), "max per group") {
		t.Fatalf("group quota message: %v", res.Err)
	}
	h.mustOK(leasePut(w("b/1", "b")))
	res = h.mustFail(leasePut(w("c/1", "c")), ErrQuotaExceeded)
	if !strings.Contains(res.Err.Error(), "3 live leases in all") || !strings.Contains(res.Err.Error(), "max total") {
		t.Fatalf("total quota message: %v", res.Err)
	}
	// Replacing a lease is not counted against the quota.
	h.mustOK(leasePut(w("a/1", "a")))
	// Freeing one makes room for exactly one.
	h.mustOK(leaseDel("a/2"))
	h.mustOK(leasePut(w("c/1", "c")))
	h.mustFail(leasePut(w("c/2", "c")), ErrQuotaExceeded)
	checkLeaseInvariants(t, h.f)
}

// TestLeaseQuotaExactUnderConcurrentCreators: many goroutines create
// leases at once through one serialising proposer (as Raft serialises the
// leader's proposals); exactly the quota's worth succeed, per group and in
// all, whatever the interleaving.
func TestLeaseQuotaExactUnderConcurrentCreators(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	var mu sync.Mutex
	apply := func(c *fsmpb.Command) Result {
		mu.Lock()
		defer mu.Unlock()
		return h.apply(c)
	}
	const (
		workers  = 32
		each     = 20
		perGroup = 70
		total    = 150
	)
	groups := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	okBy := make([]map[string]int, workers)
	for w := range workers {
		okBy[w] = map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				g := groups[(w+i)%len(groups)]
				x := leaseW(fmt.Sprintf("%s/%d-%d", g, w, i), g, int64(w*each+i))
				x.CreateOnly, x.MaxInGroup, x.MaxTotal = true, perGroup, total
				res := apply(leasePut(x))
				switch {
				case res.Err == nil:
					okBy[w][g]++
				case !errors.Is(res.Err, ErrQuotaExceeded):
					t.Errorf("create: %v", res.Err)
				}
			}
		}()
	}
	wg.Wait()
	got := map[string]int{}
	sum := 0
	for _, m := range okBy {
		for g, n := range m {
			got[g] += n
			sum += n
		}
	}
	if sum != total {
		t.Fatalf("%d creations succeeded, the total quota is %d", sum, total)
	}
	for _, g := range groups {
		if got[g] > perGroup {
			t.Fatalf("group %s: %d creations succeeded, its quota is %d", g, got[g], perGroup)
		}
		n, all, err := h.f.LeaseCount(g)
		if err != nil || int(n) != got[g] || all != total {
			t.Fatalf("LeaseCount(%s) = %d, %d, %v; want %d, %d", g, n, all, err, got[g], total)
		}
	}
	checkLeaseInvariants(t, h.f)
}

// TestLeaseDueOrderAndPaging: LeaseDue returns exactly the leases due by a
// time, earliest first, page by page; NextLeaseDue finds the next time;
// LeaseList pages through a prefix in id order.
func TestLeaseDueOrderAndPaging(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	r := rand.New(rand.NewPCG(7, 8))
	type lease struct {
		id  string
		due int64
	}
	var all []lease
	var batch []*fsmpb.LeaseWrite
	for i := range 700 {
		l := lease{id: fmt.Sprintf("p%d/%04d", i%3, i), due: int64(r.IntN(500))}
		all = append(all, l)
		batch = append(batch, leaseW(l.id, "g", l.due))
		if len(batch) == 100 {
			h.mustOK(leasePut(batch...))
			batch = nil
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].due != all[j].due {
			return all[i].due < all[j].due
		}
		return all[i].id < all[j].id
	})
	for _, upTo := range []int64{-1, 0, 17, 250, 499, 10_000} {
		var want []string
		for _, l := range all {
			if l.due <= upTo {
				want = append(want, l.id)
			}
		}
		got, err := h.f.LeaseDue(upTo, len(all)+1)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range got {
			ids = append(ids, e.ID)
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Fatalf("LeaseDue(%d): %d leases, want %d", upTo, len(ids), len(want))
		}
		if lim, _ := h.f.LeaseDue(upTo, 10); len(lim) != min(10, len(want)) {
			t.Fatalf("LeaseDue(%d, 10) returned %d", upTo, len(lim))
		}
	}
	for _, after := range []int64{math.MinInt64, -1, 0, 3, 250, 498, 499, math.MaxInt64} {
		var want int64
		found := false
		for _, l := range all {
			if l.due > after {
				want, found = l.due, true
				break
			}
		}
		got, ok, err := h.f.NextLeaseDue(after)
		if err != nil || ok != found || got != want {
			t.Fatalf("NextLeaseDue(%d) = %d, %v, %v; want %d, %v", after, got, ok, err, want, found)
		}
	}

	for _, prefix := range []string{"", "p1/", "p2/00", "zz"} {
		var want []string
		for _, l := range all {
			if strings.HasPrefix(l.id, prefix) {
				want = append(want, l.id)
			}
		}
		sort.Strings(want)
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > len(all) {
				t.Fatal("LeaseList does not end")
			}
			page, more, err := h.f.LeaseList(prefix, after, 33)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > 33 {
				t.Fatalf("page of %d", len(page))
			}
			for _, e := range page {
				got = append(got, e.ID)
			}
			if !more {
				break
			}
			after = page[len(page)-1].ID
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("LeaseList(%q): %d ids, want %d", prefix, len(got), len(want))
		}
	}
	// An "after" before the prefix starts at the prefix.
	if page, _, _ := h.f.LeaseList("p2/", "a", 1); len(page) != 1 || !strings.HasPrefix(page[0].ID, "p2/") {
		t.Fatalf("LeaseList with an early after: %+v", page)
	}
}

// TestLeaseSnapshotRoundTrip: a snapshot carries the lease table whole
// (entries, due index, counts), and the restored state answers the same.
func TestLeaseSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	for i := range 50 {
		h.mustOK(leasePut(leaseW(fmt.Sprintf("s/%d", i), fmt.Sprintf("g%d", i%4), int64(1000-i))))
	}
	h.mustOK(leaseDel("s/3", "s/7"))
	snap := snapshotBytes(t, h.f)

	other := newHarness(t, Options{NoSync: true})
	other.mustOK(leasePut(leaseW("other/1", "g0", 1)))
	if err := other.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dump(t, h.f), dump(t, other.f)) {
		t.Fatal("restored state differs")
	}
	checkLeaseInvariants(t, other.f)
	for _, g := range []string{"g0", "g3"} {
		a1, t1, _ := h.f.LeaseCount(g)
		a2, t2, _ := other.f.LeaseCount(g)
		if a1 != a2 || t1 != t2 || t1 != 48 {
			t.Fatalf("counts of %s: %d/%d vs %d/%d", g, a1, t1, a2, t2)
		}
	}
	d1, _ := h.f.LeaseDue(960, 0)
	d2, _ := other.f.LeaseDue(960, 0)
	if len(d1) != 10 || fmt.Sprint(d1) != fmt.Sprint(d2) {
		t.Fatalf("due leases: %d vs %d", len(d1), len(d2))
	}
}

// TestLeaseOnStateWithoutLeaseBuckets: a state written before leases
// existed (no lease buckets) opens, restores and takes lease commands.
func TestLeaseOnStateWithoutLeaseBuckets(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	h.mustOK(putCmd("secret/a", "v"))
	dropLeaseBuckets := func(f *FSM) {
		t.Helper()
		if err := f.db.Update(func(tx *bolt.Tx) error {
			for _, name := range leaseBuckets {
				if err := tx.DeleteBucket(name); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	dropLeaseBuckets(h.f)
	// Reads of the old state see an empty table.
	if due, err := h.f.LeaseDue(math.MaxInt64, 0); err != nil || len(due) != 0 {
		t.Fatalf("LeaseDue on an old state: %v, %v", due, err)
	}
	if _, ok, err := h.f.NextLeaseDue(math.MinInt64); ok || err != nil {
		t.Fatalf("NextLeaseDue on an old state: %v, %v", ok, err)
	}
	if l, _, err := h.f.LeaseList("", "", 0); err != nil || len(l) != 0 {
		t.Fatalf("LeaseList on an old state: %v", err)
	}
	old := snapshotBytes(t, h.f)
	// Applying creates the buckets.
	h.mustOK(leasePut(leaseW("l/1", "g", 1)))
	checkLeaseInvariants(t, h.f)

	// Reopening creates them, too.
	dropLeaseBuckets(h.f)
	h.reopen()
	if n := bucketLen(t, h.f, bucketLease); n != 0 {
		t.Fatalf("reopened: %d leases", n)
	}

	// A snapshot without them restores, and the result has them.
	fresh := newHarness(t, Options{NoSync: true})
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(old))); err != nil {
		t.Fatalf("restore of a snapshot without lease buckets: %v", err)
	}
	if _, err := InspectSnapshot(writeFile(t, old)); err != nil {
		t.Fatalf("InspectSnapshot of a snapshot without lease buckets: %v", err)
	}
	fresh.idx = fresh.f.AppliedIndex()
	fresh.mustOK(leasePut(leaseW("l/2", "g", 1)))
	checkLeaseInvariants(t, fresh.f)
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "snap.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLeaseCommandValidation(t *testing.T) {
	good := leaseW("a/1", "g", 1)
	unsealed := leaseW("a/1", "g", 1)
	unsealed.Record = []byte("plain")
	neg := leaseW("a/1", "g", -1)
	both := leaseW("a/1", "g", 1)
	both.CreateOnly, both.ExpectIndex = true, 3
	longGroup := leaseW("a/1", strings.Repeat("g", MaxLeaseGroupLen+1), 1)
	many := make([]*fsmpb.LeaseWrite, MaxLeaseOps+1)
	for i := range many {
		many[i] = leaseW(fmt.Sprint(i), "g", 1)
	}
	for name, c := range map[string]*fsmpb.Command{
		"no writes":     leasePut(),
		"empty id":      leasePut(leaseW("", "g", 1)),
		"long id":       leasePut(leaseW(strings.Repeat("x", MaxLeaseIDLen+1), "g", 1)),
		"duplicate id":  leasePut(good, good),
		"unsealed":      leasePut(unsealed),
		"negative due":  leasePut(neg),
		"create+expect": leasePut(both),
		"long group":    leasePut(longGroup),
		"too many":      leasePut(many...),
		"no deletes":    leaseDel(),
		"empty delete":  leaseDel(""),
		"dup delete":    leaseDel("a", "a"),
	} {
		c.LeaderTimeUnixNano = baseTime.UnixNano()
		if _, err := EncodeCommand(c); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: EncodeCommand = %v, want ErrInvalidCommand", name, err)
		}
	}
}
