package replication

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"coffer/internal/tlsutil"
)

// peerTLS makes a CA with one node certificate in a temporary folder and
// returns the Raft transport's TLS for it.
func peerTLS(t *testing.T) *TransportTLS {
	t.Helper()
	dir, caKey := filepath.Join(t.TempDir(), "certs"), filepath.Join(t.TempDir(), "ca.key")
	if err := tlsutil.CreateCA(dir, caKey, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := tlsutil.CreateNode(dir, caKey, []string{"127.0.0.1"}, 0, false); err != nil {
		t.Fatal(err)
	}
	r, err := tlsutil.Load(tlsutil.NodeFiles(dir))
	if err != nil {
		t.Fatal(err)
	}
	return &TransportTLS{Server: r.PeerServerConfig(), Client: r.PeerClientConfig()}
}

// TestStreamLayerHandsRaftOnlyPeers: callers that hold no node
// certificate (plain TCP, TLS without a certificate) and callers that
// open connections and say nothing never come out of Accept — raft's
// transport never spends a connection handler on them — and a real peer
// dialling while more of them hang on than the node keeps handshakes for
// is accepted at once.
func TestStreamLayerHandsRaftOnlyPeers(t *testing.T) {
	cfg := peerTLS(t)
	s, err := newStreamLayer(&Network{}, "127.0.0.1:0", "", cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.Listener.Addr().String()

	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := s.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()

	// Silent callers, more than the handshakes a node keeps under way:
	// connected, never a byte.
	for range maxPeerHandshakes + 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// A plaintext Raft caller and a TLS caller without a certificate.
	plain, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Write([]byte{byte(1), 0x85, 0xa4}); err != nil {
		t.Fatal(err)
	}
	if c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
		// TLS 1.3 reports the server's refusal on the first read.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("a caller without a certificate read from the Raft port")
		}
		c.Close()
	}

	// The real peer.
	peer, err := s.Dial(raft.ServerAddress(addr), 5*time.Second)
	if err != nil {
		t.Fatalf("a node could not dial while strangers hang on: %v", err)
	}
	defer peer.Close()
	var got net.Conn
	select {
	case got = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the node's connection did not come out of Accept")
	}
	defer got.Close()
	tc, ok := got.(*tls.Conn)
	if !ok || len(tc.ConnectionState().PeerCertificates) == 0 || !tlsutil.IsNode(tc.ConnectionState().PeerCertificates[0]) {
		t.Fatalf("Accept returned %T without a node certificate", got)
	}
	// Nothing else came out: the strangers are still hanging or refused.
	select {
	case c, ok := <-accepted:
		if ok {
			t.Fatalf("a stranger's connection from %s came out of Accept", c.RemoteAddr())
		}
	default:
	}
}

// TestStreamLayerCloseEndsHandshakes: Close returns with handshakes under
// way (callers that said nothing) and Accept then fails.
func TestStreamLayerCloseEndsHandshakes(t *testing.T) {
	s, err := newStreamLayer(&Network{}, "127.0.0.1:0", "", peerTLS(t), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		c, err := net.Dial("tcp", s.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Accept(); err == nil {
		t.Fatalf("Accept after Close returned %v", c.RemoteAddr())
	}
}
