package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// directProposer applies commands to the state machine as Raft would after
// a commit, one log entry each, serially (as the leader's Raft does), with
// the leader time of the system clock.
type directProposer struct {
	mu    sync.Mutex
	f     *fsm.FSM
	index uint64
}

func (p *directProposer) Propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd.LeaderTimeUnixNano = time.Now().UnixNano()
	data, err := fsm.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	p.index++
	res := p.f.ApplyBatch([]*raft.Log{{Index: p.index, Term: 1, Type: raft.LogCommand, Data: data}})[0].(fsm.Result)
	return &res, res.Err
}

// countingSealer is the real barrier, counting the records it opens.
type countingSealer struct {
	*seal.Seal
	opened atomic.Int64
}

func (s *countingSealer) OpenEntry(key string, ct []byte) ([]byte, error) {
	s.opened.Add(1)
	return s.Seal.OpenEntry(key, ct)
}

// testClock is a clock a test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fixture is a lease table over a real state machine in a temporary
// directory, a real unsealed barrier and the direct proposer.
type fixture struct {
	t      *Table
	f      *fsm.FSM
	props  *directProposer
	sealer *countingSealer
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: testWriter{t}, Level: hclog.Info})
}

func newFixture(t testing.TB, opts Options) *fixture {
	t.Helper()
	f, err := fsm.Open(filepath.Join(t.TempDir(), "fsm.db"), fsm.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s := seal.New(seal.Options{})
	res, err := seal.Initialize(seal.Config{Shares: 1, Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Unseal(res.Stored, res.WrappedKeyring, res.Shares[0]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Seal)
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	sealer := &countingSealer{Seal: s}
	props := &directProposer{f: f, index: f.AppliedIndex()}
	tab, err := New(f, props, sealer, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: tab, f: f, props: props, sealer: sealer}
}

// call is one revocation a recorder saw.
type call struct {
	id    string
	at    time.Time
	state State
	due   time.Time
	exp   time.Time
}

// recorder is the test's Revoker: it records each call and answers with
// fail's error (nil: success).
type recorder struct {
	mu    sync.Mutex
	calls []call
	fail  func(rec *Record, n int) error // n: the calls for this lease so far
	ch    chan call
}

func newRecorder(fail func(rec *Record, n int) error) *recorder {
	return &recorder{fail: fail, ch: make(chan call, 1<<16)}
}

func (r *recorder) Revoke(ctx context.Context, rec *Record) error {
	c := call{id: rec.ID, at: time.Now(), state: rec.State, due: rec.Due, exp: rec.ExpireTime}
	r.mu.Lock()
	n := 0
	for _, p := range r.calls {
		if p.id == rec.ID {
			n++
		}
	}
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	r.ch <- c
	if r.fail != nil {
		return r.fail(rec, n)
	}
	return nil
}

func (r *recorder) callsFor(id string) []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []call
	for _, c := range r.calls {
		if c.id == id {
			out = append(out, c)
		}
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes, then fails
// with cond's last error.
func waitFor(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		<-tick.C
	}
}

// startWorker runs a worker until the test ends (or stop is called) and
// checks it returned.
func startWorker(t testing.TB, w *Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("the worker did not stop within 10 s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// mustGone waits until the lease is removed from the table.
func mustGone(t testing.TB, tab *Table, id string, within time.Duration) {
	t.Helper()
	waitFor(t, within, "lease "+id+" removed", func() error {
		_, err := tab.Get(id)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return fmt.Errorf("Get: %v", err)
	})
}

// create makes a confirmed lease under path with ttl.
func (x *fixture) create(t testing.TB, path string, ttl, maxTTL time.Duration, renewable bool) *Record {
	t.Helper()
	p, err := x.t.CreatePending(context.Background(), &Record{Path: path, Kind: "test", TTL: ttl, MaxTTL: maxTTL, Renewable: renewable, Data: []byte(`{"username":"u"}`)})
	if err != nil {
		t.Fatalf("CreatePending: %v", err)
	}
	rec, err := x.t.Confirm(context.Background(), p.ID, p.Index)
	if err != nil {
		t.Fatalf("Confirm: %v", err)
	}
	return rec
}
