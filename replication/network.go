package replication

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

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
}

// Accept returns the next connection, inside TLS when set. The handshake
// runs on the first read, in the transport's goroutine for that
// connection: a peer without a node certificate fails it and is dropped
// before any Raft message is decoded.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil || s.tls == nil {
		return c, err
	}
	return tls.Server(c, s.tls.Server), nil
}

func newStreamLayer(n *Network, bind, advertise string, tlsCfg *TransportTLS) (*streamLayer, error) {
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
	return &streamLayer{Listener: n.Listen(l), n: n, advertise: addr, tls: tlsCfg}, nil
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
