package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// randomLog builds n log entries: mostly commands of every op (valid,
// conflicting, deduplicated, failing), some configuration entries and some
// garbage, with a leader clock that sometimes jumps past the idempotency
// window.
func randomLog(t testing.TB, seed uint64, n int) []*raft.Log {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	paths := []string{"secret/a", "secret/b", "secret/d/x", "secret/d/y", "kv/z", "top"}
	sysKeys := []string{"k0", "k1", "k2", "tokens/a", "tokens/b"}
	now := baseTime
	term := uint64(1)
	pick := func(s []string) string { return s[r.IntN(len(s))] }
	versions := func(min int) []uint64 {
		vs := make([]uint64, min+r.IntN(3))
		for i := range vs {
			vs[i] = 1 + r.Uint64N(14)
		}
		return vs
	}

	logs := make([]*raft.Log, 0, n)
	leases := newLeaseGen(r)
	var retries []*fsmpb.Command // recent commands with a request_id
	for i := 1; i <= n; i++ {
		now = now.Add(time.Duration(r.IntN(90)) * time.Second)
		if r.IntN(50) == 0 {
			term++
		}
		l := &raft.Log{Index: uint64(i), Term: term, Type: raft.LogCommand}
		if len(retries) > 0 && r.IntN(10) == 0 {
			// A client retry after a failover: same command, new leader time.
			c := proto.Clone(retries[r.IntN(len(retries))]).(*fsmpb.Command)
			c.LeaderTimeUnixNano = now.UnixNano()
			data, err := marshalOpts.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			l.Data = data
			logs = append(logs, l)
			continue
		}
		c := &fsmpb.Command{Path: pick(paths), LeaderTimeUnixNano: now.UnixNano()}
		if r.IntN(10) < 3 {
			c.RequestId = fmt.Sprintf("r%d", r.IntN(20))
		}
		if r.IntN(6) == 0 {
			c.Path = ""
			leases.command(c, uint64(i))
			data, err := marshalOpts.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			l.Data = data
			logs = append(logs, l)
			continue
		}
		switch w := r.IntN(100); {
		case w < 35:
			c.Op = fsmpb.Op_OP_PUT
			c.Ciphertext = ct(fmt.Sprintf("ct-%d", i))
			if r.IntN(10) < 3 {
				c.HasCas, c.Cas = true, r.Uint64N(13)
			}
		case w < 45:
			c.Op, c.Versions = fsmpb.Op_OP_DELETE, versions(0)
		case w < 52:
			c.Op, c.Versions = fsmpb.Op_OP_UNDELETE, versions(1)
		case w < 59:
			c.Op, c.Versions = fsmpb.Op_OP_DESTROY, versions(1)
		case w < 63:
			c.Op = fsmpb.Op_OP_DELETE_METADATA
		case w < 71:
			c.Op, c.MaxVersions, c.CasRequired = fsmpb.Op_OP_PUT_METADATA, uint32(r.IntN(6)), r.IntN(5) == 0
		case w < 79:
			c.Op, c.Path = fsmpb.Op_OP_SYS_PUT, ""
			for _, k := range r.Perm(len(sysKeys))[:1+r.IntN(3)] {
				c.Sys = append(c.Sys, &fsmpb.SysEntry{Key: sysKeys[k], Value: ct(fmt.Sprintf("sys-%d", i))})
			}
			if r.IntN(10) < 4 {
				c.SysRequireAbsent = pick(sysKeys)
			}
		case w < 82:
			c.Op, c.Path, c.SysKeys = fsmpb.Op_OP_SYS_DELETE, "", []string{pick(sysKeys), pick(sysKeys)}
		case w < 84:
			// A conditional change that expects what an earlier sys put of
			// this log may have written: some match, most do not.
			c.Op, c.Path = fsmpb.Op_OP_SYS_CAS, ""
			c.SysExpect = []*fsmpb.SysEntry{{Key: pick(sysKeys), Value: ct(fmt.Sprintf("sys-%d", i-1-r.IntN(8)))}}
			c.Sys = []*fsmpb.SysEntry{{Key: sysKeys[0], Value: ct(fmt.Sprintf("sys-%d", i))}}
			if r.IntN(2) == 0 {
				c.SysKeys = []string{sysKeys[1+r.IntN(len(sysKeys)-1)]}
			}
		case w < 88:
			c.Op, c.Path = fsmpb.Op_OP_NOOP, ""
		case w < 91:
			l.Data = []byte{byte(r.IntN(256)), byte(r.IntN(256)), 0xff}
			logs = append(logs, l)
			continue
		case w < 95:
			l.Type = raft.LogConfiguration
			logs = append(logs, l)
			continue
		default: // decodes but fails validation
			c.Op, c.Path = fsmpb.Op_OP_PUT, "bad//path"
		}
		data, err := marshalOpts.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		l.Data = data
		logs = append(logs, l)
		if c.RequestId != "" {
			retries = append(retries[max(0, len(retries)-7):], c)
		}
	}
	return logs
}

func openNoSync(t testing.TB, name string) *FSM {
	t.Helper()
	f, err := Open(filepath.Join(t.TempDir(), name), Options{NoSync: true, DefaultMaxVersions: 4, IdempotencyWindow: 3 * time.Minute, MaxIdempotencyRecords: 8})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// applyInBatches applies logs with random batch sizes (1..max) and returns
// the responses in log order.
func applyInBatches(f *FSM, logs []*raft.Log, r *rand.Rand, max int) []interface{} {
	var out []interface{}
	for len(logs) > 0 {
		n := min(1+r.IntN(max), len(logs))
		out = append(out, f.ApplyBatch(logs[:n])...)
		logs = logs[n:]
	}
	return out
}

func TestDeterminism(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			const n = 600
			logs := randomLog(t, seed, n)
			r := rand.New(rand.NewPCG(seed, 42))

			// A: one log at a time.
			a := openNoSync(t, "a.db")
			defer a.Close()
			resA := make([]interface{}, 0, n)
			for _, l := range logs {
				resA = append(resA, a.Apply(l))
			}

			// B: random batches.
			b := openNoSync(t, "b.db")
			defer b.Close()
			resB := applyInBatches(b, logs, r, 50)

			// C: random batches, with restarts after which Raft replays
			// from an earlier index (as after NoSnapshotRestoreOnStart).
			cPath := filepath.Join(t.TempDir(), "c.db")
			copts := Options{NoSync: true, DefaultMaxVersions: 4, IdempotencyWindow: 3 * time.Minute, MaxIdempotencyRecords: 8}
			c, err := Open(cPath, copts)
			if err != nil {
				t.Fatal(err)
			}
			resC := make([]interface{}, n)
			for next := 0; next < n; {
				end := min(next+1+r.IntN(80), n)
				from := max(0, next-r.IntN(40)) // overlap with what was applied
				for i, resp := range applyInBatches(c, logs[from:end], r, 16) {
					if from+i < next {
						if resp != nil {
							t.Fatalf("replayed index %d returned %v", logs[from+i].Index, resp)
						}
						continue
					}
					resC[from+i] = resp
				}
				next = end
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
				if c, err = Open(cPath, copts); err != nil {
					t.Fatal(err)
				}
			}
			defer c.Close()

			// D: restored from a snapshot of B taken half way, then the rest.
			half := openNoSync(t, "half.db")
			defer half.Close()
			applyInBatches(half, logs[:n/2], r, 30)
			d := openNoSync(t, "d.db")
			defer d.Close()
			if err := d.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, half)))); err != nil {
				t.Fatal(err)
			}
			resD := append(make([]interface{}, n/2), applyInBatches(d, logs[n/2:], r, 30)...)

			if !reflect.DeepEqual(resA, resB) {
				t.Fatal("results differ between one-at-a-time and batched apply")
			}
			if !reflect.DeepEqual(resA, resC) {
				t.Fatal("results differ across restarts")
			}
			if !reflect.DeepEqual(resA[n/2:], resD[n/2:]) {
				t.Fatal("results differ after a snapshot restore")
			}
			want := dump(t, a)
			for name, f := range map[string]*FSM{"batched": b, "restarted": c, "restored": d} {
				if f.AppliedIndex() != uint64(n) {
					t.Fatalf("%s: applied index %d, want %d", name, f.AppliedIndex(), n)
				}
				if !bytes.Equal(want, dump(t, f)) {
					t.Fatalf("%s: state differs from one-at-a-time apply", name)
				}
				checkLeaseInvariants(t, f)
			}
			if n := bucketLen(t, a, bucketLease); n == 0 {
				t.Error("the random log left no lease: it exercises too little of the lease table")
			}
			checkCoverage(t, resA)
		})
	}
}

// checkCoverage makes sure the random log exercised the interesting outcomes.
func checkCoverage(t *testing.T, results []interface{}) {
	t.Helper()
	seen := map[string]int{}
	for _, resp := range results {
		res, ok := resp.(Result)
		if !ok {
			seen["non-command"]++
			continue
		}
		switch {
		case res.Deduplicated:
			seen["dedup"]++
		case res.Err == nil:
			seen["ok"]++
		case errors.Is(res.Err, ErrNotFound):
			seen["notfound"]++
		case errors.Is(res.Err, ErrCASMismatch):
			seen["cas"]++
		case errors.Is(res.Err, ErrAlreadyExists):
			seen["exists"]++
		case errors.Is(res.Err, ErrInvalidCommand):
			seen["invalid"]++
		case errors.Is(res.Err, ErrRequestIDConflict):
			seen["conflict"]++
		case errors.Is(res.Err, ErrCASRequired):
			seen["casrequired"]++
		case errors.Is(res.Err, ErrQuotaExceeded):
			seen["quota"]++
		default:
			t.Fatalf("unexpected result %+v", res)
		}
	}
	for _, k := range []string{"non-command", "dedup", "ok", "notfound", "cas", "exists", "invalid", "conflict", "quota"} {
		if seen[k] == 0 {
			t.Errorf("the random log never produced %q (saw %v)", k, seen)
		}
	}
	t.Logf("outcomes: %v", seen)
}

// leaseGen makes random lease commands over a few ids and groups: creates,
// updates with expectations that sometimes hold (it remembers the index of
// the last write it made to each id, which may or may not have applied),
// quotas that bite, groups that do not match, and deletes.
type leaseGen struct {
	r    *rand.Rand
	last map[string]uint64
}

func newLeaseGen(r *rand.Rand) *leaseGen { return &leaseGen{r: r, last: map[string]uint64{}} }

// command fills c as a lease command proposed at index.
func (g *leaseGen) command(c *fsmpb.Command, index uint64) {
	r := g.r
	ids := r.Perm(8)[:1+r.IntN(3)]
	expect := func(id string) uint64 {
		switch r.IntN(4) {
		case 0:
			return g.last[id]
		case 1:
			return index - 1 - r.Uint64N(min(index, 20))
		}
		return 0
	}
	if r.IntN(4) == 0 {
		c.Op = fsmpb.Op_OP_LEASE_DELETE
		for _, n := range ids {
			id := fmt.Sprintf("l/%d", n)
			c.LeaseDeletes = append(c.LeaseDeletes, &fsmpb.LeaseDelete{Id: id, ExpectIndex: expect(id)})
		}
		return
	}
	c.Op = fsmpb.Op_OP_LEASE_PUT
	for _, n := range ids {
		id := fmt.Sprintf("l/%d", n)
		w := &fsmpb.LeaseWrite{
			Id:          id,
			Group:       fmt.Sprintf("g%d", n%3),
			DueUnixNano: r.Int64N(1 << 40),
			Record:      ct(fmt.Sprintf("lease-%d-%d", index, n)),
			MaxInGroup:  r.Uint64N(4),
			MaxTotal:    r.Uint64N(7),
		}
		if r.IntN(15) == 0 {
			w.Group = "wrong"
		}
		if r.IntN(4) == 0 {
			w.CreateOnly = true
		} else {
			w.ExpectIndex = expect(id)
		}
		g.last[id] = index
		c.LeaseWrites = append(c.LeaseWrites, w)
	}
}

// FuzzLeaseDeterminism applies the lease commands the input describes to
// two state machines, one log at a time and in batches the input chooses,
// and requires byte-identical states, identical results and a consistent
// lease table (due index and counts) after every step.
func FuzzLeaseDeterminism(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add(bytes.Repeat([]byte{0x13, 0x77, 0xf0, 0x01}, 40))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		seed := uint64(0)
		for _, b := range data {
			seed = seed*131 + uint64(b)
		}
		r := rand.New(rand.NewPCG(seed, uint64(len(data))))
		gen := newLeaseGen(r)
		n := 1 + len(data)
		logs := make([]*raft.Log, 0, n)
		for i := 1; i <= n; i++ {
			c := &fsmpb.Command{LeaderTimeUnixNano: baseTime.UnixNano() + int64(i)}
			gen.command(c, uint64(i))
			b, err := marshalOpts.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			logs = append(logs, &raft.Log{Index: uint64(i), Term: 1, Type: raft.LogCommand, Data: b})
		}
		a := openNoSync(t, "a.db")
		defer a.Close()
		b := openNoSync(t, "b.db")
		defer b.Close()
		var resA []interface{}
		for _, l := range logs {
			resA = append(resA, a.Apply(l))
		}
		resB := applyInBatches(b, logs, r, 1+int(seed%16))
		if !reflect.DeepEqual(resA, resB) {
			t.Fatal("results differ between one-at-a-time and batched apply")
		}
		if !bytes.Equal(dump(t, a), dump(t, b)) {
			t.Fatal("states differ between one-at-a-time and batched apply")
		}
		checkLeaseInvariants(t, a)
		for _, resp := range resA {
			if res := resp.(Result); res.Err != nil && !errors.Is(res.Err, ErrCASMismatch) &&
				!errors.Is(res.Err, ErrAlreadyExists) && !errors.Is(res.Err, ErrQuotaExceeded) &&
				!errors.Is(res.Err, ErrInvalidCommand) {
				t.Fatalf("unexpected outcome %v", res.Err)
			}
		}
	})
}
