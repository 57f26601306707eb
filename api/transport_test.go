package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "coffer/api/cofferpb"
	"coffer/internal/tlsutil"
)

// certs is a CA made for a test, with a node certificate for localhost
// and 127.0.0.1.
type certs struct {
	dir, caKey string
}

func newCerts(t *testing.T) certs {
	t.Helper()
	c := certs{dir: filepath.Join(t.TempDir(), "certs"), caKey: filepath.Join(t.TempDir(), "ca.key")}
	if err := tlsutil.CreateCA(c.dir, c.caKey, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := tlsutil.CreateNode(c.dir, c.caKey, []string{"localhost", "127.0.0.1"}, 0, false); err != nil {
		t.Fatal(err)
	}
	return c
}

// clientTLS is a client configuration trusting the CA.
func (c certs) clientTLS(t *testing.T, serverName string) *tls.Config {
	t.Helper()
	cfg, err := LoadTLS(filepath.Join(c.dir, tlsutil.CAFile), "", "", serverName)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// expiredNode makes a node certificate of the CA that is past its
// NotAfter as soon as it exists (a lifetime of 1ns), in a directory of
// its own, and returns the server configuration that presents it and the
// certificate.
func (c certs) expiredNode(t *testing.T) (*tls.Config, *x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	ca, err := os.ReadFile(filepath.Join(c.dir, tlsutil.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, tlsutil.CAFile), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tlsutil.CreateNode(dir, c.caKey, []string{"localhost", "127.0.0.1"}, time.Nanosecond, false); err != nil {
		t.Fatal(err)
	}
	files := tlsutil.NodeFiles(dir)
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := tlsutil.ReadCert(files.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !time.Now().After(leaf.NotAfter) {
		t.Fatalf("certificate valid until %s: not expired", leaf.NotAfter)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}, leaf
}

// healthServer serves the standard health service on a loopback port,
// over TLS when cfg is set, until the test ends; it returns the address.
func healthServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	serveUntilCleanup(t, s, lis)
	return lis.Addr().String()
}

// serveUntilCleanup serves s on lis until the test ends.
func serveUntilCleanup(t testing.TB, s *grpc.Server, lis net.Listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
}

// healthOf asks the first endpoint of cfg for its health and returns the
// error.
func healthOf(t *testing.T, cfg Config) error {
	t.Helper()
	cfg.DialTimeout = 2 * time.Second
	cl, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := cl.Health(ctx, "")
	if err == nil && st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health of %v: %s", cfg.Endpoints, st)
	}
	return err
}

// wantTransportError checks that err is a TransportError with problem,
// whose one-line message holds every want, and that it reads as an
// unreachable endpoint (Unavailable, ENDPOINT_UNREACHABLE).
func wantTransportError(t *testing.T, err error, problem TransportProblem, want ...string) *TransportError {
	t.Helper()
	var te *TransportError
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T): want a TransportError", err, err)
	}
	if te.Problem != problem {
		t.Fatalf("problem %d, want %d: %v", te.Problem, problem, err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("message %q is not one line", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q lacks %q", msg, w)
		}
	}
	if Reason(err) != pb.ErrorReason_ENDPOINT_UNREACHABLE || !IsUnreachable(err) || !Retryable(err) {
		t.Errorf("reason %s unreachable %v retryable %v: want an unreachable endpoint", Reason(err), IsUnreachable(err), Retryable(err))
	}
	return te
}

// TestTransportMismatchSaysSo: a client that speaks plaintext to a TLS
// node, or TLS to a plaintext node, gets one line naming the mismatch
// and what to do; the matching transports work.
func TestTransportMismatchSaysSo(t *testing.T) {
	c := newCerts(t)
	r, err := tlsutil.Load(tlsutil.NodeFiles(c.dir))
	if err != nil {
		t.Fatal(err)
	}
	tlsNode := healthServer(t, r.ServerConfig(false))
	plainNode := healthServer(t, nil)

	t.Run("http:// against a TLS node", func(t *testing.T) {
		err := healthOf(t, Config{Endpoints: []string{"http://" + tlsNode}, TLS: c.clientTLS(t, "")})
		te := wantTransportError(t, err, NodeSpeaksTLS, "node "+tlsNode+" speaks TLS: drop http:// and set COFFER_CACERT")
		if te.Endpoint != "http://"+tlsNode || te.Address != tlsNode {
			t.Errorf("endpoint %q address %q", te.Endpoint, te.Address)
		}
	})
	t.Run("TLS against a plaintext node", func(t *testing.T) {
		for _, ep := range []string{plainNode, "https://" + plainNode} {
			err := healthOf(t, Config{Endpoints: []string{ep}, TLS: c.clientTLS(t, "")})
			te := wantTransportError(t, err, NodeSpeaksPlaintext,
				"node "+plainNode+" speaks plaintext, not TLS: address it as http://"+plainNode+" (or start it with -certs-dir)")
			var rh tls.RecordHeaderError
			if !errors.As(te, &rh) {
				t.Errorf("%v does not unwrap to the handshake's error", te)
			}
		}
	})
	t.Run("https:// without a TLS config uses the system roots", func(t *testing.T) {
		err := healthOf(t, Config{Endpoints: []string{"https://" + plainNode}})
		wantTransportError(t, err, NodeSpeaksPlaintext, "address it as http://"+plainNode)
	})
	t.Run("matching transports", func(t *testing.T) {
		for name, cfg := range map[string]Config{
			"https:// with the CA":         {Endpoints: []string{"https://" + tlsNode}, TLS: c.clientTLS(t, "")},
			"bare with the CA":             {Endpoints: []string{tlsNode}, TLS: c.clientTLS(t, "")},
			"http:// despite a TLS config": {Endpoints: []string{"http://" + plainNode}, TLS: c.clientTLS(t, "")},
			"bare without TLS":             {Endpoints: []string{plainNode}},
		} {
			if err := healthOf(t, cfg); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
	t.Run("a call through the retry loop", func(t *testing.T) {
		cl, err := New(Config{Endpoints: []string{"http://" + tlsNode}, RetryBudget: time.Second, DisableStaleFallback: true})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = cl.Get(ctx, &pb.GetRequest{Path: "secret/x"})
		wantTransportError(t, err, NodeSpeaksTLS, "drop http://")
		if st := cl.EndpointStates(); len(st) != 1 || st[0].Up || !strings.Contains(st[0].LastError, "speaks TLS") {
			t.Errorf("endpoint state %+v: want it down with the mismatch as its last error", st)
		}
	})
}

// TestCertificateErrorsNameTheCause: a certificate that does not verify
// is reported with its cause: an unknown authority, the names the
// certificate has, its expiry date.
func TestCertificateErrorsNameTheCause(t *testing.T) {
	c := newCerts(t)
	r, err := tlsutil.Load(tlsutil.NodeFiles(c.dir))
	if err != nil {
		t.Fatal(err)
	}
	tlsNode := healthServer(t, r.ServerConfig(false))

	t.Run("unknown authority", func(t *testing.T) {
		other := newCerts(t)
		for name, cfg := range map[string]*tls.Config{"system roots": nil, "another cluster's CA": other.clientTLS(t, "")} {
			err := healthOf(t, Config{Endpoints: []string{"https://" + tlsNode}, TLS: cfg})
			te := wantTransportError(t, err, UnknownAuthority, "signed by an unknown authority", `issuer "coffer CA"`,
				"set COFFER_CACERT (or -ca-cert, -certs-dir) to the cluster's ca.crt")
			var ua x509.UnknownAuthorityError
			if !errors.As(te, &ua) {
				t.Errorf("%s: %v does not unwrap to x509.UnknownAuthorityError", name, te)
			}
		}
	})
	t.Run("name mismatch", func(t *testing.T) {
		err := healthOf(t, Config{Endpoints: []string{tlsNode}, TLS: c.clientTLS(t, "node9")})
		te := wantTransportError(t, err, NameMismatch, `its certificate is for [localhost 127.0.0.1], not "node9"`, "COFFER_TLS_SERVER_NAME (or -tls-server-name)")
		if !slices.Equal(te.Names, []string{"localhost", "127.0.0.1"}) || te.ServerName != "node9" {
			t.Errorf("names %v server name %q", te.Names, te.ServerName)
		}
	})
	t.Run("expired", func(t *testing.T) {
		cfg, leaf := c.expiredNode(t)
		expired := healthServer(t, cfg)
		err := healthOf(t, Config{Endpoints: []string{expired}, TLS: c.clientTLS(t, "")})
		te := wantTransportError(t, err, CertificateExpired, "its certificate expired on "+leaf.NotAfter.UTC().Format(time.RFC3339))
		if !te.NotAfter.Equal(leaf.NotAfter) {
			t.Errorf("NotAfter %s, want %s", te.NotAfter, leaf.NotAfter)
		}
	})
	t.Run("a good handshake clears the last failure", func(t *testing.T) {
		sec := &security{endpoint: tlsNode, addr: tlsNode, tls: &tls.Config{}}
		sec.handshook(x509.UnknownAuthorityError{})
		if sec.diagnose(context.Background(), nil, time.Second) == nil {
			t.Fatal("a failed handshake was not recorded")
		}
		sec.handshook(nil)
		if te := sec.diagnose(context.Background(), nil, time.Second); te != nil {
			t.Fatalf("after a good handshake: %v", te)
		}
	})
}

// TestEndpointSchemes: each endpoint's scheme chooses its transport and
// stays in Endpoints; a missing port is the API's; an unknown scheme is
// refused; learned endpoints take the first endpoint's scheme.
func TestEndpointSchemes(t *testing.T) {
	for in, want := range map[string]struct {
		target string
		mode   transportMode
	}{
		"10.0.0.1:8400":          {"10.0.0.1:8400", modeConfig},
		" http://10.0.0.1:9/ ":   {"10.0.0.1:9", modePlaintext},
		"https://coffer1:8400":   {"coffer1:8400", modeTLS},
		"https://coffer1":        {"coffer1:8400", modeTLS},
		"::1":                    {"[::1]:8400", modeConfig},
		"http://[::1]:1":         {"[::1]:1", modePlaintext},
		"unix:///run/agent.sock": {"unix:///run/agent.sock", modeUnix},
	} {
		target, mode, err := parseEndpoint(in)
		if err != nil || target != want.target || mode != want.mode {
			t.Errorf("parseEndpoint(%q) = %q %d %v, want %q %d", in, target, mode, err, want.target, want.mode)
		}
	}
	for _, bad := range []string{"grpc://h:1", "dns:///h:1", "https://", "http://h:1/v1", "unix://"} {
		if _, err := New(Config{Endpoints: []string{bad}}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New with endpoint %q: %v, want ErrInvalidConfig", bad, err)
		}
	}
	if _, err := New(Config{Endpoints: []string{"grpc://h:1"}}); err == nil || !strings.Contains(err.Error(), "unknown scheme grpc://") {
		t.Errorf("grpc:// endpoint: %v", err)
	}
	if got := SplitEndpoints(" http://a:1/, ,https://b:2,c:3 "); !slices.Equal(got, []string{"http://a:1", "https://b:2", "c:3"}) {
		t.Errorf("SplitEndpoints = %q", got)
	}

	withTLS := &tls.Config{MinVersion: tls.VersionTLS12}
	for _, tc := range []struct {
		name    string
		cfg     Config
		learned string
		tls     []bool // per endpoint, configured then learned
	}{
		{"http://", Config{Endpoints: []string{"http://127.0.0.1:1", "https://127.0.0.1:2"}, TLS: withTLS}, "http://127.0.0.1:3", []bool{false, true, false}},
		{"https://", Config{Endpoints: []string{"https://127.0.0.1:1", "127.0.0.1:2"}}, "https://127.0.0.1:3", []bool{true, false, true}},
		{"bare with TLS", Config{Endpoints: []string{"127.0.0.1:1", "http://127.0.0.1:2"}, TLS: withTLS}, "127.0.0.1:3", []bool{true, false, true}},
	} {
		cl, err := New(tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		cl.addEndpoint("127.0.0.1:3", "n3")
		cl.addEndpoint("127.0.0.1:2", "n2") // known already, by address
		want := append(slices.Clone(tc.cfg.Endpoints), tc.learned)
		if got := cl.Endpoints(); !slices.Equal(got, want) {
			t.Errorf("%s: Endpoints = %q, want %q", tc.name, got, want)
		}
		for i, ep := range cl.endpoints() {
			if (ep.sec.tls != nil) != tc.tls[i] {
				t.Errorf("%s: endpoint %s speaks TLS %v, want %v", tc.name, ep.addr, ep.sec.tls != nil, tc.tls[i])
			}
		}
		if st := cl.EndpointStates(); st[0].Endpoint != tc.cfg.Endpoints[0] || st[0].Address != "127.0.0.1:1" {
			t.Errorf("%s: state %+v", tc.name, st[0])
		}
		cl.Close()
	}
	if addr, err := EndpointAddress("http://127.0.0.1:8100/"); err != nil || addr != "127.0.0.1:8100" {
		t.Errorf("EndpointAddress = %q %v", addr, err)
	}
}
