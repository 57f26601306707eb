package api

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// freezer dials TCP and can freeze every connection to one address: its
// bytes stop flowing both ways while it stays open, as with a node whose
// process is stopped (docker pause, SIGSTOP).
type freezer struct {
	mu     sync.Mutex
	frozen string
	thawed chan struct{} // closed at Thaw
	held   int           // reads and writes held back while frozen
}

func newFreezer() *freezer { return &freezer{thawed: make(chan struct{})} }

func (f *freezer) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &freezableConn{Conn: c, f: f, addr: addr}, nil
}

// Freeze stops the traffic of every connection to addr.
func (f *freezer) Freeze(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = addr
	f.thawed = make(chan struct{})
}

// Thaw lets it flow again.
func (f *freezer) Thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = ""
	close(f.thawed)
}

// hold returns a channel to wait on while addr is frozen (nil when not).
func (f *freezer) hold(addr string) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen != addr {
		return nil
	}
	f.held++
	return f.thawed
}

// Held is how many reads and writes have been held back while frozen.
func (f *freezer) Held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held
}

type freezableConn struct {
	net.Conn
	f    *freezer
	addr string
	done chan struct{}
	once sync.Once
}

func (c *freezableConn) closed() chan struct{} {
	c.once.Do(func() { c.done = make(chan struct{}) })
	return c.done
}

// wait blocks while the connection is frozen, or until it is closed.
func (c *freezableConn) wait() {
	if ch := c.f.hold(c.addr); ch != nil {
		select {
		case <-ch:
		case <-c.closed():
		}
	}
}

func (c *freezableConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.wait() // what arrived while frozen is held back
	return n, err
}

func (c *freezableConn) Write(p []byte) (int, error) {
	c.wait()
	return c.Conn.Write(p)
}

func (c *freezableConn) Close() error {
	c.closed()
	c.once.Do(func() {})
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	return c.Conn.Close()
}

// TestWriteLeavesFrozenLeader: the leader is frozen (its connections stay
// open and carry nothing, and the others elect a new leader). A write sent
// to it moves on to the new leader once another node names one, well
// before AttemptTimeout, and makes exactly one version; with the leader
// check off it waits out the attempt timeout instead.
func TestWriteLeavesFrozenLeader(t *testing.T) {
	c := newTestCluster(t, 3)
	fr := newFreezer()
	const attempt = 10 * time.Second
	cl := c.client(t, Config{Dialer: fr.dial, AttemptTimeout: attempt, RetryBudget: 2 * attempt})
	off := c.client(t, Config{Dialer: fr.dial, AttemptTimeout: time.Second, DisableLeaderCheck: true})
	const path = "secret/frozen/w"
	for _, x := range []*Client{cl, off} {
		if _, err := x.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "warm"}}); err != nil {
			t.Fatal(err)
		}
	}
	leader := c.WaitForLeader(t)
	for _, x := range []*Client{cl, off} {
		waitClientLeader(t, x, leader)
		// A write to the leader: the client's connection to it is open
		// when it freezes, as in a cluster under load.
		if _, err := x.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "warm"}}); err != nil {
			t.Fatal(err)
		}
	}

	fr.Freeze(leader.APIAddr())
	leader.Net.Isolate()
	began := time.Now()
	put, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "after"}})
	took := time.Since(began)
	if err != nil {
		t.Fatalf("write while the leader %s is frozen: %v", leader.ID, err)
	}
	newLeader := c.WaitForNewLeader(t, leader)
	t.Logf("write with the leader %s frozen took %s (new leader %s)", leader.ID, took.Round(time.Millisecond), newLeader.ID)
	if took > attempt/2 {
		t.Fatalf("write with the leader frozen took %s: the leader check did not move it on (attempt timeout %s)", took, attempt)
	}

	// Without the check, a write waits out the attempt on the frozen
	// leader (the client still takes it for the leader), then moves on.
	offBegan := time.Now()
	_, offErr := off.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "off"}})
	if offTook := time.Since(offBegan); offTook < time.Second {
		t.Fatalf("write without the leader check with the leader frozen: %v after %s, want the 1 s attempt timeout first", offErr, offTook)
	}

	fr.Thaw()
	leader.Net.Heal()
	want := put.Version
	if offErr == nil {
		want++
	}
	md, err := cl.ReadMetadata(tctx(t), &pb.ReadMetadataRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}})
	if err != nil {
		t.Fatal(err)
	}
	if md.CurrentVersion != want {
		t.Fatalf("current version %d, want %d: a write was lost or made twice", md.CurrentVersion, want)
	}
}

// waitClientLeader waits until cl takes n for the leader.
func waitClientLeader(t *testing.T, cl *Client, n *testcluster.Node) {
	t.Helper()
	ctx := tctx(t)
	for {
		for _, st := range cl.EndpointStates() {
			if st.Leader && st.Address == n.APIAddr() {
				return
			}
		}
		if _, err := cl.Status(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("client never took %s for the leader: %+v", n.ID, cl.EndpointStates())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestStatusWaitsForNewLeader: a node asked to wait for a leader other
// than the one it follows answers when that changes, naming the new
// leader; it answers at once when it already follows another, and after
// wait_ms when nothing changes.
func TestStatusWaitsForNewLeader(t *testing.T) {
	c := newTestCluster(t, 3)
	leader := c.WaitForLeader(t)
	f := c.Followers(leader)[0]

	began := time.Now()
	st, err := f.Sys.Status(tctx(t), &pb.StatusRequest{WaitForLeaderNot: leader.ID, WaitMs: 300})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 300*time.Millisecond || st.LeaderId != leader.ID {
		t.Fatalf("asked to wait 300ms for a leader other than %s with none elected: answered after %s naming %q, want the wait and %s", leader.ID, took, st.LeaderId, leader.ID)
	}

	began = time.Now()
	st, err = f.Sys.Status(tctx(t), &pb.StatusRequest{WaitForLeaderNot: "not-a-node", WaitMs: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 5*time.Second || st.LeaderId != leader.ID {
		t.Fatalf("asked to wait for a leader other than one it does not follow: answered after %s naming %q, want at once and %s", took, st.LeaderId, leader.ID)
	}

	got := inBackground(func() (*pb.StatusResponse, error) {
		return f.Sys.Status(tctx(t), &pb.StatusRequest{WaitForLeaderNot: leader.ID, WaitMs: 10_000})
	})
	leader.Net.Isolate()
	defer leader.Net.Heal()
	isolated := time.Now()
	newLeader := c.WaitForNewLeader(t, leader)
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Logf("the waiting Status answered %s after the leader was cut off, naming %s", a.at.Sub(isolated).Round(time.Millisecond), a.v.LeaderId)
	if a.v.LeaderId != newLeader.ID || a.at.Sub(isolated) > 5*time.Second {
		t.Fatalf("waiting Status answered %q after %s, want the new leader %s well before its 10s wait", a.v.LeaderId, a.at.Sub(isolated), newLeader.ID)
	}
}

// TestWriteLeavesFrozenLeaderOnElection: the leader check's question is
// answered the moment a node follows the new leader, not at the next poll.
// With LeaderCheck at 2s the first round starts 2s into a write to a
// frozen leader; the leader is cut off only then, so a poll would see the
// new leader at the next round, 4s in, over a second after the election.
// The write must come back well within that.
func TestWriteLeavesFrozenLeaderOnElection(t *testing.T) {
	c := newTestCluster(t, 3)
	fr := newFreezer()
	const check = 2 * time.Second
	cl := c.client(t, Config{Dialer: fr.dial, LeaderCheck: check, AttemptTimeout: 20 * time.Second, RetryBudget: 30 * time.Second})
	const path = "secret/frozen/election"
	if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "warm"}}); err != nil {
		t.Fatal(err)
	}
	leader := c.WaitForLeader(t)
	waitClientLeader(t, cl, leader)
	if _, err := cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "warm"}}); err != nil {
		t.Fatal(err)
	}

	// The client's connections to the leader carry nothing; the leader
	// still leads the others.
	fr.Freeze(leader.APIAddr())
	defer fr.Thaw()
	done := inBackground(func() (*pb.PutResponse, error) {
		return cl.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "after"}})
	})
	testcluster.WaitFor(t, 3*check, "the client's first leader round", func() error {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		if cl.round == nil || cl.round.leaderID != leader.ID {
			return errors.New("no round asking about the frozen leader yet")
		}
		return nil
	})
	leader.Net.Isolate()
	defer leader.Net.Heal()
	newLeader := c.WaitForNewLeader(t, leader)
	elected := time.Now()
	r := <-done
	if r.err != nil {
		t.Fatalf("write while the leader %s is frozen: %v", leader.ID, r.err)
	}
	after := r.at.Sub(elected)
	t.Logf("write came back %s after the nodes agreed on %s", after.Round(time.Millisecond), newLeader.ID)
	if after > check/2 {
		t.Fatalf("write came back %s after the new leader %s was elected: it waited for a poll (LeaderCheck %s), not for the election", after, newLeader.ID, check)
	}
	md, err := cl.ReadMetadata(tctx(t), &pb.ReadMetadataRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}})
	if err != nil {
		t.Fatal(err)
	}
	if md.CurrentVersion != r.v.Version {
		t.Fatalf("current version %d, the write answered %d: a write was lost or made twice", md.CurrentVersion, r.v.Version)
	}
}

// timed is the result of a call made in the background, with the time it
// returned.
type timed[T any] struct {
	v   T
	err error
	at  time.Time
}

// inBackground runs call in a goroutine; its result arrives on the channel.
func inBackground[T any](call func() (T, error)) <-chan timed[T] {
	ch := make(chan timed[T], 1)
	go func() {
		v, err := call()
		ch <- timed[T]{v, err, time.Now()}
	}()
	return ch
}
