package replication

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

func testNodeConfig(t *testing.T, dir string) Config {
	return Config{
		NodeID:             "n1",
		DataDir:            dir,
		RaftLogStore:       testLogStore(),
		BindAddr:           "127.0.0.1:0",
		Bootstrap:          true,
		Logger:             newLogSink(t).logger("n1"),
		HeartbeatTimeout:   100 * time.Millisecond,
		ElectionTimeout:    100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
	}
}

// openNode starts a node over a real FSM in dir and waits for it to lead.
func openNode(t *testing.T, dir string) (*Node, *fsm.FSM) {
	t.Helper()
	return openStoreNode(t, dir, testLogStore(), nil)
}

// sealedLike returns ct behind a 32-byte header laid out as a bound
// barrier ciphertext: the state machine stores no other value
// (fsm.IsSealedValue).
func sealedLike(ct string) []byte {
	return append(append([]byte{0x80, 0, 0, 1}, make([]byte, 28)...), ct...)
}

// putCommand writes ct at path.
func putCommand(path, ct string) *fsmpb.Command {
	return &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: path, Ciphertext: sealedLike(ct), LeaderTimeUnixNano: time.Now().UnixNano()}
}

func put(t *testing.T, n *Node, path string, ct string) (fsm.Result, uint64) {
	t.Helper()
	data, err := fsm.EncodeCommand(putCommand(path, ct))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, idx, err := n.Apply(ctx, data)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	r, ok := resp.(fsm.Result)
	if !ok {
		t.Fatalf("apply response %T", resp)
	}
	return r, idx
}

func TestSingleNodeBootstrapApplyRestart(t *testing.T) {
	dir := t.TempDir()
	n, f := openNode(t, dir)
	if n.State() != "leader" {
		t.Fatalf("state %q, want leader", n.State())
	}
	if id, addr := n.Leader(); id != "n1" || addr != n.Addr() {
		t.Fatalf("leader %q %q, want n1 %q", id, addr, n.Addr())
	}
	var last uint64
	for i := 1; i <= 5; i++ {
		r, idx := put(t, n, "secret/a", "ct")
		if r.Err != nil || r.Version != uint64(i) || idx != r.Index {
			t.Fatalf("put %d: %+v at %d", i, r, idx)
		}
		last = idx
	}
	if f.AppliedIndex() != last {
		t.Fatalf("fsm applied %d, raft said %d", f.AppliedIndex(), last)
	}
	term := n.Term()
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	if n.State() != "shutdown" {
		t.Fatalf("state after shutdown %q", n.State())
	}
	if _, _, err := n.Apply(context.Background(), []byte("x")); !errors.Is(err, ErrShutdown) {
		t.Fatalf("apply after shutdown: %v, want ErrShutdown", err)
	}
	f.Close()

	// Restart: state is kept, nothing is applied twice, and the node
	// leads again in a later term without bootstrapping anew.
	n, f = openNode(t, dir)
	defer f.Close()
	defer n.Shutdown()
	if f.AppliedIndex() < last {
		t.Fatalf("applied index after restart %d < %d", f.AppliedIndex(), last)
	}
	r, _ := put(t, n, "secret/a", "ct")
	if r.Version != 6 {
		t.Fatalf("version after restart %d, want 6 (replayed entries applied twice?)", r.Version)
	}
	if n.Term() <= term {
		t.Fatalf("term after restart %d, want > %d", n.Term(), term)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.VerifyLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestApplyHonoursContext(t *testing.T) {
	n, f := openNode(t, t.TempDir())
	defer f.Close()
	defer n.Shutdown()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := n.Apply(ctx, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("apply with a cancelled context: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := testNodeConfig(t, t.TempDir())
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no id":    func(c *Config) { c.NodeID = "" },
		"no dir":   func(c *Config) { c.DataDir = "" },
		"lease":    func(c *Config) { c.LeaderLeaseTimeout = time.Second },
		"election": func(c *Config) { c.ElectionTimeout = time.Millisecond },
		"batch":    func(c *Config) { c.MaxAppendEntries = 5000 },
	} {
		c := good
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}

// TestVerifyLeaderFutureEndsAtShutdown: hashicorp/raft queues a
// VerifyLeader future on a buffered channel even once it has shut down,
// and nothing answers it then; a linearizable read racing a node's
// shutdown left a goroutine waiting on it forever. endsAtShutdown makes
// such a future answer once the node is down.
func TestVerifyLeaderFutureEndsAtShutdown(t *testing.T) {
	n, f := openNode(t, t.TempDir())
	defer f.Close()
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	queued := 0
	for i := range 40 {
		fut := n.raft.VerifyLeader()
		if endsAtShutdown(fut, n.done) {
			queued++
		}
		errc := make(chan error, 1)
		go func() { errc <- fut.Error() }()
		select {
		case err := <-errc:
			if !errors.Is(err, raft.ErrRaftShutdown) {
				t.Fatalf("VerifyLeader %d after shutdown: %v, want %v", i, err, raft.ErrRaftShutdown)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("VerifyLeader %d after shutdown was not answered in 5s", i)
		}
	}
	// Raft's select picks the queue or the shutdown at random: 40 calls
	// that never queued would mean the case above was never tried.
	if queued == 0 {
		t.Fatal("no VerifyLeader future was queued after shutdown: the race was not exercised")
	}
	t.Logf("%d of 40 VerifyLeader futures were queued after shutdown", queued)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.VerifyLeader(ctx); !errors.Is(err, ErrShutdown) {
		t.Fatalf("Node.VerifyLeader after shutdown: %v, want ErrShutdown", err)
	}
}

// gatedFSM is a real FSM whose batches wait while the gate is closed.
type gatedFSM struct {
	*fsm.FSM
	closed atomic.Bool
	open   chan struct{}
}

func (g *gatedFSM) ApplyBatch(logs []*raft.Log) []any {
	if g.closed.Load() {
		<-g.open
	}
	return g.FSM.ApplyBatch(logs)
}

// TestApplyDoneWaitsForRaft: the function given with WithApplyDone runs
// once, when Raft is done with the command, not when Apply returns because
// the caller gave up: a caller that counts the command's memory must not
// stop counting it while Raft still holds it. An Apply refused at once
// runs it at once.
func TestApplyDoneWaitsForRaft(t *testing.T) {
	dir := t.TempDir()
	f, err := fsm.Open(filepath.Join(dir, "fsm.db"), fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gated := &gatedFSM{FSM: f, open: make(chan struct{})}
	n, err := New(testNodeConfig(t, dir), gated)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	openGate := sync.OnceFunc(func() { close(gated.open) })
	defer openGate() // before the shutdown, which waits for the FSM
	if err := n.WaitForLeader(ctxWait(t)); err != nil {
		t.Fatal(err)
	}
	cmd, err := fsm.EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "secret/held", Ciphertext: sealedLike("ct"), LeaderTimeUnixNano: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}

	var calls atomic.Int32
	done := make(chan struct{})
	release := func() {
		if calls.Add(1) == 1 {
			close(done)
		}
	}
	gated.closed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := n.Apply(WithApplyDone(ctx, release), cmd); !errors.Is(err, ErrTimeout) {
		t.Fatalf("apply while the FSM is held: %v, want ErrTimeout", err)
	}
	select {
	case <-done:
		t.Fatal("the done function ran while Raft still held the command")
	default:
	}
	openGate()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the done function did not run once the command was applied")
	}

	refused, stop := context.WithCancel(context.Background())
	stop()
	if _, _, err := n.Apply(WithApplyDone(refused, release), cmd); !errors.Is(err, context.Canceled) {
		t.Fatalf("apply with a cancelled context: %v", err)
	}
	if got := calls.Load(); got != 2 {
		t.Fatalf("done ran %d times for two applies", got)
	}
}
