package fsm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"coffer/fsm/fsmpb"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashHelperEnv) != "" {
		runCrashHelper()
	}
	goleak.VerifyTestMain(m)
}

// baseTime is an arbitrary leader time for tests.
var baseTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// testWriter routes hclog output to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: testWriter{t}, Level: hclog.Debug})
}

// harness drives one FSM with consecutive log indexes and a leader clock.
type harness struct {
	t    testing.TB
	f    *FSM
	path string
	opts Options
	idx  uint64
	now  time.Time
}

func newHarness(t testing.TB, opts Options) *harness {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	path := filepath.Join(t.TempDir(), "fsm.db")
	f, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	h := &harness{t: t, f: f, path: path, opts: opts, now: baseTime}
	t.Cleanup(func() {
		if err := h.f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

// reopen closes and reopens the FSM on the same file.
func (h *harness) reopen() {
	h.t.Helper()
	if err := h.f.Close(); err != nil {
		h.t.Fatalf("Close: %v", err)
	}
	f, err := Open(h.path, h.opts)
	if err != nil {
		h.t.Fatalf("reopen: %v", err)
	}
	h.f = f
}

// apply stamps cmd with the harness clock (unless set), applies it at the
// next index and returns its Result.
func (h *harness) apply(cmd *fsmpb.Command) Result {
	h.t.Helper()
	if cmd.LeaderTimeUnixNano == 0 && cmd.Op != fsmpb.Op_OP_NOOP {
		cmd.LeaderTimeUnixNano = h.now.UnixNano()
	}
	data, err := EncodeCommand(cmd)
	if err != nil {
		h.t.Fatalf("EncodeCommand(%v): %v", cmd, err)
	}
	return h.applyData(data)
}

// applyData applies raw bytes as a LogCommand at the next index.
func (h *harness) applyData(data []byte) Result {
	h.t.Helper()
	h.idx++
	resp := h.f.Apply(&raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: data})
	res, ok := resp.(Result)
	if !ok {
		h.t.Fatalf("Apply at %d returned %T (%v), want Result", h.idx, resp, resp)
	}
	if got := h.f.AppliedIndex(); got != h.idx {
		h.t.Fatalf("AppliedIndex = %d after applying %d", got, h.idx)
	}
	return res
}

func (h *harness) mustOK(cmd *fsmpb.Command) Result {
	h.t.Helper()
	res := h.apply(cmd)
	if res.Err != nil {
		h.t.Fatalf("%v %q: %v", cmd.Op, cmd.Path, res.Err)
	}
	return res
}

func (h *harness) mustFail(cmd *fsmpb.Command, want error) Result {
	h.t.Helper()
	res := h.apply(cmd)
	if !errors.Is(res.Err, want) {
		h.t.Fatalf("%v %q: err = %v, want %v", cmd.Op, cmd.Path, res.Err, want)
	}
	return res
}

// sealedPrefix makes a test value look like a bound barrier ciphertext:
// the state machine refuses to store anything else (IsSealedValue).
const sealedPrefix = "\x80\x00\x00\x01" + "sealed-test-value-padding-28" // 4 + 28 bytes

// ct returns s as a value the state machine stores; plainOf gives s back.
func ct(s string) []byte { return []byte(sealedPrefix + s) }

// plainOf strips what ct added (or returns b unchanged when it is not there).
func plainOf(b []byte) string { return strings.TrimPrefix(string(b), sealedPrefix) }

// ctN returns an n-byte stored value (n ≥ 32).
func ctN(n int) []byte {
	b := make([]byte, n)
	copy(b, sealedPrefix)
	return b
}

func putCmd(path, value string) *fsmpb.Command {
	return &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: path, Ciphertext: ct(value)}
}

func casPut(path, value string, cas uint64) *fsmpb.Command {
	c := putCmd(path, value)
	c.HasCas, c.Cas = true, cas
	return c
}

func versionsCmd(op fsmpb.Op, path string, versions ...uint64) *fsmpb.Command {
	return &fsmpb.Command{Op: op, Path: path, Versions: versions}
}

// dump is a canonical, byte-exact serialisation of every bucket but skip,
// for comparing the state of two FSMs independently of bbolt's page layout.
func dump(t testing.TB, f *FSM, skip ...[]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	put := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		buf.Write(n[:])
		buf.Write(b)
	}
	err := f.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			for _, s := range skip {
				if bytes.Equal(s, name) {
					return nil
				}
			}
			put(name)
			return b.ForEach(func(k, v []byte) error {
				put(k)
				put(v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return buf.Bytes()
}

// bucketLen counts the keys of a bucket.
func bucketLen(t testing.TB, f *FSM, name []byte) int {
	t.Helper()
	n := 0
	if err := f.view(func(tx *bolt.Tx) error {
		n = tx.Bucket(name).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

// snapshotBytes snapshots f and persists it into memory.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func waitCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestListPage: pages of a listing, each after the previous page's last
// child, give exactly the full listing: secrets and directories alike,
// including a secret "x" next to a directory "x/".
func TestListPage(t *testing.T) {
	h := newHarness(t, Options{})
	for _, p := range []string{"s/a", "s/b/1", "s/b/2", "s/c", "s/x", "s/x/y", "s/x0", "s/z/q/r"} {
		h.mustOK(putCmd(p, "v"))
	}
	full, err := h.f.List("s/")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "b/", "c", "x", "x/", "x0", "z/"}
	if strings.Join(full, ",") != strings.Join(want, ",") {
		t.Fatalf("List = %v, want %v", full, want)
	}
	for limit := 1; limit <= len(want)+1; limit++ {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			keys, more, err := h.f.ListPage("s/", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) > limit || pages > len(want) {
				t.Fatalf("limit %d: page of %d keys, page %d", limit, len(keys), pages)
			}
			got = append(got, keys...)
			if !more {
				break
			}
			after = keys[len(keys)-1]
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("limit %d: pages gave %v, want %v", limit, got, want)
		}
	}
}
