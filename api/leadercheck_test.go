package api

import (
	"context"
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
	return f.thawed
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
