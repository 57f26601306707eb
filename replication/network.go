package replication

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// ErrIsolated is the error of every dial and accepted connection of a node
// whose Network is isolated.
var ErrIsolated = errors.New("replication: network isolated (fault injection)")

// Network carries a node's connections to its peers (Raft, and the
// server's node-to-node API calls) and can cut them, to partition a node
// inside one test process without touching the host's network. The zero
// value is a connected network. Production nodes use it too: it is a thin
// layer over net.Dial and net.Listen.
type Network struct {
	// Tap, when set before the node starts, sees every byte the node
	// writes on its node-to-node connections (Raft and calls to peers'
	// APIs), as they leave: tests capture the traffic with it.
	Tap func(p []byte)

	mu       sync.Mutex
	isolated bool
	conns    map[net.Conn]struct{}
}

// Isolate cuts the node off: open connections are closed, new dials fail
// and accepted connections are closed at once.
func (n *Network) Isolate() {
	n.mu.Lock()
	n.isolated = true
	conns := n.conns
	n.conns = nil
	n.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Heal reconnects the node.
func (n *Network) Heal() {
	n.mu.Lock()
	n.isolated = false
	n.mu.Unlock()
}

// Isolated reports whether the node is cut off.
func (n *Network) Isolated() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.isolated
}

// track registers c so that Isolate can close it; it refuses c while
// isolated.
func (n *Network) track(c net.Conn) (net.Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isolated {
		c.Close()
		return nil, ErrIsolated
	}
	if n.conns == nil {
		n.conns = make(map[net.Conn]struct{})
	}
	n.conns[c] = struct{}{}
	return &trackedConn{Conn: c, n: n}, nil
}

func (n *Network) forget(c net.Conn) {
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
}

// DialContext dials addr over TCP unless the node is isolated.
func (n *Network) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	if n.Isolated() {
		return nil, ErrIsolated
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return n.track(c)
}

// Listen wraps a listener so that its connections can be cut.
func (n *Network) Listen(l net.Listener) net.Listener { return &netListener{Listener: l, n: n} }

type netListener struct {
	net.Listener
	n *Network
}

// Accept returns the next connection, dropping those that arrive while the
// node is isolated.
func (l *netListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc, err := l.n.track(c); err == nil {
			return tc, nil
		}
	}
}

type trackedConn struct {
	net.Conn
	n    *Network
	once sync.Once
}

// Write writes p, showing what left to the network's Tap.
func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.n.Tap != nil && n > 0 {
		c.n.Tap(p[:n])
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.n.forget(c.Conn) })
	return c.Conn.Close()
}

// TransportTLS runs the Raft transport over mutual TLS: Server secures the
// connections peers open to this node, Client the ones it opens. Both must
// demand a node certificate of the cluster's CA (internal/tlsutil's peer
// configurations do), so that nobody without one can send a Raft message.
type TransportTLS struct {
	Server *tls.Config
	Client *tls.Config
}

// streamLayer is raft's StreamLayer over a Network, with TLS when set.
type streamLayer struct {
	net.Listener
	n         *Network
	advertise net.Addr
	tls       *TransportTLS
	log       hclog.Logger

	// With TLS, handshakes run before raft sees a connection (see
	// handshakes): ready carries the connections that passed, failed is
	// closed with acceptErr when the listener stops.
	ready     chan net.Conn
	failed    chan struct{}
	acceptErr error
	pending   pendingHandshakes
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	refusals  refusalLog
}

// Bounds of the handshakes of incoming Raft connections: how long a caller
// has to complete one, and how many may be under way at once. When all are
// taken, a new connection evicts the oldest unfinished one: callers that
// open connections and say nothing cannot keep a peer out, since a peer's
// handshake takes milliseconds and theirs would have to keep arriving
// faster than that.
const (
	peerHandshakeTimeout = 5 * time.Second
	maxPeerHandshakes    = 256
)

// Accept returns the next connection; with TLS, only one whose caller
// completed the handshake with a node certificate of the cluster's CA.
// A refused caller never reaches raft's transport: it costs the node the
// handshake, not a connection handler with its buffers and decoder, nor a
// log line each.
func (s *streamLayer) Accept() (net.Conn, error) {
	if s.tls == nil {
		return s.Listener.Accept()
	}
	select {
	case c := <-s.ready:
		return c, nil
	case <-s.failed:
		return nil, s.acceptErr
	}
}

// Close stops accepting and waits for the handshakes under way to end.
func (s *streamLayer) Close() error {
	err := s.Listener.Close()
	if s.tls != nil {
		s.cancel()
		s.wg.Wait()
	}
	return err
}

// handshakes accepts connections and runs each one's TLS handshake in a
// goroutine of its own, bounded in time and number.
func (s *streamLayer) handshakes() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				s.acceptErr = err
				close(s.failed)
				return
			}
			// A transient failure (out of file descriptors): back off as
			// raft's own accept loop does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.refusals.note(s.log, "accept", err)
			select {
			case <-time.After(delay):
				continue
			case <-s.ctx.Done():
				s.acceptErr = net.ErrClosed
				close(s.failed)
				return
			}
		}
		delay = 0
		el, evicted := s.pending.add(c, maxPeerHandshakes)
		if evicted != nil {
			evicted.Close()
			s.refusals.note(s.log, evicted.RemoteAddr().String(), errors.New("too many handshakes under way: dropped the oldest unfinished one"))
		}
		s.wg.Add(1)
		go s.handshake(c, el)
	}
}

// pendingHandshakes are the connections whose handshake is under way,
// oldest first.
type pendingHandshakes struct {
	mu    sync.Mutex
	order list.List
}

// add registers c; when limit are under way already, it takes the oldest
// out and returns it for the caller to close.
func (p *pendingHandshakes) add(c net.Conn, limit int) (el *list.Element, evicted net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.order.Len() >= limit {
		front := p.order.Front()
		evicted = p.order.Remove(front).(net.Conn)
		front.Value = nil
	}
	return p.order.PushBack(c), evicted
}

// done takes a finished handshake out (a no-op when it was evicted).
func (p *pendingHandshakes) done(el *list.Element) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if el.Value != nil {
		p.order.Remove(el)
		el.Value = nil
	}
}

func (s *streamLayer) handshake(c net.Conn, el *list.Element) {
	defer s.wg.Done()
	defer s.pending.done(el)
	ctx, cancel := context.WithTimeout(s.ctx, peerHandshakeTimeout)
	defer cancel()
	tc := tls.Server(c, s.tls.Server)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		s.refusals.note(s.log, c.RemoteAddr().String(), err)
		return
	}
	select {
	case s.ready <- tc:
	case <-s.ctx.Done():
		tc.Close()
	}
}

// refusalLog logs refused Raft connections without letting a stranger
// flood the log: the first one, then at most one line per interval with
// the number refused since.
type refusalLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const refusalLogInterval = 10 * time.Second

func (r *refusalLog) note(log hclog.Logger, from string, err error) {
	r.mu.Lock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < refusalLogInterval {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	log.Warn("refused a raft connection", "from", from, "error", err, "refused_since_last_line", n)
}

func newStreamLayer(n *Network, bind, advertise string, tlsCfg *TransportTLS, log hclog.Logger) (*streamLayer, error) {
	l, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("replication: listen for raft on %s: %w", bind, err)
	}
	var addr net.Addr = l.Addr()
	if advertise != "" {
		// Keep a host name as given (e.g. "coffer1:8401"): peers resolve it
		// on every dial, so a container that comes back with a new IP is
		// still found.
		if _, _, err := net.SplitHostPort(advertise); err != nil {
			l.Close()
			return nil, fmt.Errorf("replication: raft advertise address %q is not host:port: %w", advertise, err)
		}
		addr = hostAddr(advertise)
	} else if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		l.Close()
		return nil, errors.New("replication: raft listens on all interfaces: set -advertise=HOST (or -raft-advertise) so peers can reach it")
	}
	s := &streamLayer{Listener: n.Listen(l), n: n, advertise: addr, tls: tlsCfg, log: log}
	if tlsCfg != nil {
		s.ready, s.failed = make(chan net.Conn), make(chan struct{})
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.wg.Add(1)
		go s.handshakes()
	}
	return s, nil
}

// hostAddr is an advertised host:port kept as a string.
type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

// Dial connects to a peer's Raft transport.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := s.n.DialContext(ctx, string(addr))
	if err != nil || s.tls == nil {
		return c, err
	}
	tc := tls.Client(c, s.tls.Client)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("replication: TLS with raft peer %s: %w", addr, err)
	}
	return tc, nil
}

// Addr is the advertised address.
func (s *streamLayer) Addr() net.Addr { return s.advertise }
