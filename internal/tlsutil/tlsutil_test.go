package tlsutil

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newCA makes a CA, a node certificate and a client certificate in a
// fresh directory and returns it with the CA key's path.
func newCA(t *testing.T) (dir, caKey string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "certs")
	caKey = filepath.Join(t.TempDir(), "ca.key")
	if err := CreateCA(dir, caKey, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := CreateNode(dir, caKey, []string{"localhost", "127.0.0.1", "coffer1"}, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := CreateClient(dir, caKey, "root", 0, false); err != nil {
		t.Fatal(err)
	}
	return dir, caKey
}

// TestCreateAndList: the files are where CockroachDB's layout puts them,
// keys are private, nothing is overwritten without asking, and List
// describes each certificate.
func TestCreateAndList(t *testing.T) {
	dir, caKey := newCA(t)
	for _, f := range []string{NodeKeyFile, ClientKeyFile("root")} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, fi.Mode(), err)
		}
	}
	if fi, err := os.Stat(caKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key: %v", err)
	}
	if err := CreateNode(dir, caKey, []string{"x"}, 0, false); !errors.Is(err, ErrExists) {
		t.Fatalf("second create-node without -overwrite: %v", err)
	}
	if err := CreateCA(dir, caKey, 0, false); !errors.Is(err, ErrExists) {
		t.Fatalf("second create-ca without -overwrite: %v", err)
	}
	if err := CreateClient(dir, caKey, "node", 0, false); !errors.Is(err, ErrBadName) {
		t.Fatalf("a client named node: %v", err)
	}
	if err := CreateNode(dir, caKey, []string{"bad host!"}, 0, true); !errors.Is(err, ErrBadName) {
		t.Fatalf("a bad host: %v", err)
	}
	// Another CA's key cannot sign for this directory.
	_, otherKey := newCA(t)
	if err := CreateClient(dir, otherKey, "eve", 0, false); err == nil || !strings.Contains(err.Error(), "not the key of") {
		t.Fatalf("signing with another CA's key: %v", err)
	}
	infos, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]CertInfo{}
	for _, i := range infos {
		got[i.File] = i
	}
	if ca := got[CAFile]; !ca.IsCA || ca.NotAfter.Before(time.Now().Add(9*365*24*time.Hour)) {
		t.Fatalf("ca: %+v", ca)
	}
	node := got[NodeCertFile]
	if node.Subject != NodeCommonName || strings.Join(node.Names, ",") != "localhost,coffer1,127.0.0.1" || strings.Join(node.Usage, ",") != "server,client" {
		t.Fatalf("node: %+v", node)
	}
	if c := got[ClientCertFile("root")]; c.Subject != "root" || strings.Join(c.Usage, ",") != "client" {
		t.Fatalf("client: %+v", c)
	}
}

// handshake runs a TLS handshake between a server and a client config
// over a pipe and returns both sides' errors.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(a, server)
		err := s.Handshake()
		if err == nil {
			// Read the client's close so a failed client check ends it.
			_, _ = io.Copy(io.Discard, s)
		}
		a.Close()
		done <- err
	}()
	c := tls.Client(b, client)
	cerr = c.Handshake()
	if cerr == nil {
		// TLS 1.3: a server-side refusal of the client certificate arrives
		// with the first read.
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var one [1]byte
		if _, err := c.Read(one[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, io.EOF) {
			cerr = err
		}
	}
	b.Close()
	return <-done, cerr
}

// TestPeerTLSNeedsANodeOfTheCA: two nodes of one CA talk; a client
// certificate of the same CA, a node of another CA, or no certificate at
// all cannot get through the node-to-node listener, and a node does not
// accept another CA's node as its peer.
func TestPeerTLSNeedsANodeOfTheCA(t *testing.T) {
	dir, _ := newCA(t)
	otherDir, _ := newCA(t)
	node, err := Load(NodeFiles(dir))
	if err != nil {
		t.Fatal(err)
	}
	other, err := Load(NodeFiles(otherDir))
	if err != nil {
		t.Fatal(err)
	}
	client, err := Load(ClientFiles(dir, "root"))
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(t, node.PeerServerConfig(), node.PeerClientConfig()); serr != nil || cerr != nil {
		t.Fatalf("node to node: server %v, client %v", serr, cerr)
	}
	if serr, _ := handshake(t, node.PeerServerConfig(), other.PeerClientConfig()); serr == nil {
		t.Fatal("a node of another CA got through")
	}
	if _, cerr := handshake(t, other.PeerServerConfig(), node.PeerClientConfig()); cerr == nil {
		t.Fatal("a node dialled a node of another CA")
	}
	clientAsPeer := &tls.Config{InsecureSkipVerify: true, Certificates: nil}
	if c, _ := client.current(); c != nil {
		clientAsPeer.Certificates = []tls.Certificate{*c}
	}
	if serr, _ := handshake(t, node.PeerServerConfig(), clientAsPeer); !errors.Is(serr, ErrNotANode) && serr == nil {
		t.Fatal("a client certificate got through the node-to-node listener")
	}
	if serr, _ := handshake(t, node.PeerServerConfig(), &tls.Config{InsecureSkipVerify: true}); serr == nil {
		t.Fatal("a caller without a certificate got through the node-to-node listener")
	}
	// The API takes clients with or without a certificate, and verifies
	// the server by name.
	if serr, cerr := handshake(t, node.ServerConfig(false), client.ClientConfig("localhost")); serr != nil || cerr != nil {
		t.Fatalf("client to API: %v %v", serr, cerr)
	}
	if _, cerr := handshake(t, node.ServerConfig(false), client.ClientConfig("wrong.example")); cerr == nil {
		t.Fatal("a client accepted a server certificate without its name")
	}
	noCert, _ := Load(Files{CA: filepath.Join(dir, CAFile)})
	if serr, _ := handshake(t, node.ServerConfig(true), noCert.ClientConfig("localhost")); serr == nil {
		t.Fatal("the API let a client without a certificate in while it requires one")
	}
}

// TestReloadOnChange: a rewritten node certificate is served from the next
// handshake (after the one-second check), and a broken rewrite keeps the
// old one.
func TestReloadOnChange(t *testing.T) {
	dir, caKey := newCA(t)
	r, err := Load(NodeFiles(dir))
	if err != nil {
		t.Fatal(err)
	}
	var reported []error
	r.OnError = func(err error) { reported = append(reported, err) }
	first := r.Leaf().SerialNumber
	if err := CreateNode(dir, caKey, []string{"coffer2"}, 0, true); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.checked = time.Time{} // as if a second passed
	r.mu.Unlock()
	if cert, _ := r.current(); cert.Leaf.SerialNumber.Cmp(first) == 0 || cert.Leaf.DNSNames[0] != "coffer2" {
		t.Fatalf("the new certificate was not loaded: %v", cert.Leaf.DNSNames)
	}
	if err := os.WriteFile(filepath.Join(dir, NodeKeyFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.checked = time.Time{}
	r.mu.Unlock()
	if cert, _ := r.current(); cert == nil || cert.Leaf.DNSNames[0] != "coffer2" || len(reported) != 1 {
		t.Fatalf("a broken key replaced the certificate or went unreported: %v", reported)
	}
}
