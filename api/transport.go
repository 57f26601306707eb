package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/internal/grpcutil"
	"coffer/internal/ports"
)

// Endpoint schemes. An endpoint of Config.Endpoints is host:port, or one
// of these followed by host:port (or, for a unix socket, an absolute
// path).
const (
	// SchemePlaintext ("http://") always speaks plaintext, whatever
	// Config.TLS says: what `coffer server -dev` and -insecure nodes print.
	SchemePlaintext = "http://"
	// SchemeTLS ("https://") always speaks TLS: with Config.TLS when set,
	// else verifying the node against the system's roots.
	SchemeTLS = "https://"
	// SchemeUnix ("unix://") reaches a unix socket (an agent's), always in
	// plaintext: the socket's file mode says who may call.
	SchemeUnix = "unix://"
)

// transportMode is how an endpoint is spoken to.
type transportMode int

const (
	// modeConfig: a bare host:port follows Config.TLS (nil: plaintext).
	modeConfig transportMode = iota
	modePlaintext
	modeTLS
	modeUnix
)

// parseEndpoint splits an endpoint into the address gRPC dials (host:port,
// or unix:///path as given) and how it is spoken to. A missing port is the
// API's default. Any other scheme (grpc://, dns:///, …) is refused rather
// than guessed at.
func parseEndpoint(s string) (target string, mode transportMode, err error) {
	rest := strings.TrimSuffix(strings.TrimSpace(s), "/")
	switch {
	case strings.HasPrefix(rest, SchemeUnix):
		if strings.TrimPrefix(rest, SchemeUnix) == "" {
			return "", 0, fmt.Errorf("%w: endpoint %q names no socket: use unix:///path/agent.sock", ErrInvalidConfig, s)
		}
		return rest, modeUnix, nil
	case strings.HasPrefix(rest, SchemePlaintext):
		rest, mode = strings.TrimPrefix(rest, SchemePlaintext), modePlaintext
	case strings.HasPrefix(rest, SchemeTLS):
		rest, mode = strings.TrimPrefix(rest, SchemeTLS), modeTLS
	case strings.Contains(rest, "://"):
		scheme, _, _ := strings.Cut(rest, "://")
		return "", 0, fmt.Errorf("%w: endpoint %q: unknown scheme %s://: use host:port or https://host:port for TLS, http://host:port for plaintext", ErrInvalidConfig, s, scheme)
	}
	if rest == "" || strings.ContainsAny(rest, "/?#@ ") {
		return "", 0, fmt.Errorf("%w: endpoint %q is not host:port (with http:// for plaintext, or https://)", ErrInvalidConfig, s)
	}
	if _, _, err := net.SplitHostPort(rest); err != nil {
		// No port (or a bare IPv6 address): the API's default port.
		host := strings.TrimSuffix(strings.TrimPrefix(rest, "["), "]")
		if strings.Contains(host, "[") || strings.Contains(host, "]") {
			return "", 0, fmt.Errorf("%w: endpoint %q is not host:port", ErrInvalidConfig, s)
		}
		rest = net.JoinHostPort(host, ports.API)
	}
	return rest, mode, nil
}

// EndpointAddress returns the address an endpoint dials: its host:port
// without the scheme (the API's default port when it has none), or
// unix:///path as given. It fails on an endpoint New would refuse.
func EndpointAddress(endpoint string) (string, error) {
	target, _, err := parseEndpoint(endpoint)
	return target, err
}

// TransportProblem says why a connection to a node failed before any call
// reached it.
type TransportProblem int

// Transport problems.
const (
	// NodeSpeaksPlaintext: the client spoke TLS and the node answered in
	// plaintext.
	NodeSpeaksPlaintext TransportProblem = iota + 1
	// NodeSpeaksTLS: the client spoke plaintext (http://) and the node
	// answered a TLS handshake.
	NodeSpeaksTLS
	// UnknownAuthority: the node's certificate is not signed by a CA the
	// client trusts.
	UnknownAuthority
	// NameMismatch: the node's certificate is not for the name the client
	// dialled (or Config.TLS.ServerName).
	NameMismatch
	// CertificateExpired: the node's certificate is past its NotAfter.
	CertificateExpired
	// CertificateNotYetValid: the node's certificate is before its
	// NotBefore (a clock is wrong, or the certificate is brand new).
	CertificateNotYetValid
)

// TransportError means a connection to a node failed because the two do
// not speak the same transport (TLS against plaintext), or because the
// node's certificate did not verify. Its message is one line that names
// the cause and says what to do; errors.As finds it in the error of a
// call, and Unwrap gives the handshake's own error (x509's
// UnknownAuthorityError, HostnameError or CertificateInvalidError, or
// tls.RecordHeaderError). As a gRPC status it is Unavailable with reason
// ENDPOINT_UNREACHABLE, like any endpoint that cannot be reached: the
// client moves on to the other endpoints.
type TransportError struct {
	// Endpoint is the endpoint as configured.
	Endpoint string
	// Address is the address dialled (host:port).
	Address string
	// Problem is the cause.
	Problem TransportProblem
	// ServerName is the name the certificate was checked against
	// (NameMismatch).
	ServerName string
	// Names are the DNS names and IP addresses the node's certificate
	// holds (NameMismatch).
	Names []string
	// Issuer is the common name of the certificate's issuer
	// (UnknownAuthority).
	Issuer string
	// NotBefore and NotAfter are the certificate's validity
	// (CertificateExpired, CertificateNotYetValid).
	NotBefore, NotAfter time.Time
	// Err is the handshake's error (nil for NodeSpeaksTLS, which a probe
	// found).
	Err error
}

// Error returns the one-line message.
func (e *TransportError) Error() string {
	node := "node " + e.Address
	switch e.Problem {
	case NodeSpeaksPlaintext:
		return fmt.Sprintf("%s speaks plaintext, not TLS: address it as %s%s (or start it with -certs-dir)", node, SchemePlaintext, e.Address)
	case NodeSpeaksTLS:
		return fmt.Sprintf("%s speaks TLS: drop %s and set %s (or -ca-cert, -certs-dir) to the cluster's ca.crt", node, SchemePlaintext, EnvCACert)
	case UnknownAuthority:
		issuer := ""
		if e.Issuer != "" {
			issuer = fmt.Sprintf(" (issuer %q)", e.Issuer)
		}
		return fmt.Sprintf("%s: its certificate is signed by an unknown authority%s: set %s (or -ca-cert, -certs-dir) to the cluster's ca.crt", node, issuer, EnvCACert)
	case NameMismatch:
		return fmt.Sprintf("%s: its certificate is for [%s], not %q: address the node by one of these names, or set %s (or -tls-server-name) to one", node, strings.Join(e.Names, " "), e.ServerName, EnvTLSServerName)
	case CertificateExpired:
		return fmt.Sprintf("%s: its certificate expired on %s: give the node a new one (`coffer cert create-node -overwrite`; it reloads on SIGHUP)", node, e.NotAfter.UTC().Format(time.RFC3339))
	case CertificateNotYetValid:
		return fmt.Sprintf("%s: its certificate is not valid before %s: check the clocks of this machine and of the node", node, e.NotBefore.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s: TLS handshake failed: %v", node, e.Err)
}

// Unwrap returns the handshake's error.
func (e *TransportError) Unwrap() error { return e.Err }

// GRPCStatus is the error as a status: Unavailable, reason
// ENDPOINT_UNREACHABLE, the one-line message.
func (e *TransportError) GRPCStatus() *status.Status {
	return status.Convert(grpcutil.StatusError(codes.Unavailable, pb.ErrorReason_ENDPOINT_UNREACHABLE, e.Error()))
}

// handshakeProblem explains a failed TLS handshake with a node, or
// returns nil when the error is none of the causes TransportError names.
func handshakeProblem(endpoint, addr string, err error) *TransportError {
	te := &TransportError{Endpoint: endpoint, Address: addr, Err: err}
	var (
		record    tls.RecordHeaderError
		authority x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &record):
		te.Problem = NodeSpeaksPlaintext
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert != nil:
		te.NotBefore, te.NotAfter = invalid.Cert.NotBefore, invalid.Cert.NotAfter
		te.Problem = CertificateExpired
		if time.Now().Before(invalid.Cert.NotBefore) {
			te.Problem = CertificateNotYetValid
		}
	case errors.As(err, &hostname) && hostname.Certificate != nil:
		te.Problem, te.ServerName = NameMismatch, hostname.Host
		te.Names = append(te.Names, hostname.Certificate.DNSNames...)
		for _, ip := range hostname.Certificate.IPAddresses {
			te.Names = append(te.Names, ip.String())
		}
	case errors.As(err, &authority):
		te.Problem = UnknownAuthority
		if authority.Cert != nil {
			te.Issuer = authority.Cert.Issuer.CommonName
		}
	default:
		return nil
	}
	return te
}

// security is how the client speaks to one endpoint, and what its last
// connection attempts found: a failed call on an unreachable endpoint asks
// it why (explain), so that a transport mismatch or a certificate that
// does not verify is reported in one line instead of gRPC's connection
// error. Nothing here runs on a call that succeeds.
type security struct {
	endpoint string      // as configured
	addr     string      // dialled
	tls      *tls.Config // nil: plaintext
	unix     bool

	mu sync.Mutex
	// handshake is the explained failure of the last TLS handshake (nil
	// after one that succeeded, or that failed for another reason).
	handshake *TransportError
	// connected: a plaintext connection reached the node since the last
	// probe (a node that refuses or drops connections is not probed).
	connected bool
	// probedAt and probed are the last probe and what it found.
	probedAt time.Time
	probed   *TransportError
}

// reprobeAfter is how long a probe's finding is reused.
const reprobeAfter = time.Second

// handshook records the outcome of a connection's handshake.
func (s *security) handshook(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tls == nil {
		s.connected = true
		return
	}
	switch {
	case err == nil:
		s.handshake = nil
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		// Says nothing about the node.
	default:
		s.handshake = handshakeProblem(s.endpoint, s.addr, err)
	}
}

// diagnose returns why the endpoint cannot be spoken to, when it is a
// transport problem: for TLS, the last handshake's failure; for plaintext,
// a probe (at most once a second, and only after a connection reached the
// node) that sends a TLS ClientHello and sees whether a TLS server
// answers it.
func (s *security) diagnose(ctx context.Context, dial func(context.Context, string) (net.Conn, error), timeout time.Duration) *TransportError {
	if s.unix {
		return nil
	}
	s.mu.Lock()
	if s.tls != nil {
		defer s.mu.Unlock()
		return s.handshake
	}
	if time.Since(s.probedAt) < reprobeAfter {
		defer s.mu.Unlock()
		return s.probed
	}
	if !s.connected {
		s.mu.Unlock()
		return nil
	}
	s.connected = false
	s.mu.Unlock()

	var found *TransportError
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if speaksTLS(pctx, dial, s.addr) {
		found = &TransportError{Endpoint: s.endpoint, Address: s.addr, Problem: NodeSpeaksTLS}
	}
	s.mu.Lock()
	s.probedAt, s.probed = time.Now(), found
	s.mu.Unlock()
	return found
}

// speaksTLS reports whether the server at addr answers a TLS ClientHello
// with a handshake: it completes (the certificate is not checked: nothing
// is sent over the connection), or the server ends it with a TLS alert.
// A plaintext gRPC server answers with an HTTP/2 frame instead.
func speaksTLS(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string) bool {
	conn, err := dial(ctx, addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	host, _, _ := net.SplitHostPort(addr)
	// Only whether a TLS server answers matters here, not who it is:
	// nothing is sent over this connection.
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, ServerName: host, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
	err = tc.HandshakeContext(ctx)
	var op *net.OpError
	return err == nil || (errors.As(err, &op) && op.Op == "remote error")
}

// recordingCreds are an endpoint's transport credentials that tell its
// security how each handshake went.
type recordingCreds struct {
	credentials.TransportCredentials
	sec *security
}

// ClientHandshake runs the handshake and records its outcome.
func (r *recordingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, conn)
	r.sec.handshook(err)
	return c, info, err
}

// Clone copies the credentials; the copy records into the same security.
func (r *recordingCreds) Clone() credentials.TransportCredentials {
	return &recordingCreds{TransportCredentials: r.TransportCredentials.Clone(), sec: r.sec}
}

// explain returns err, or the TransportError that says why ep's node
// could not be reached when that is a transport problem. It only looks
// when err says the endpoint could not be reached.
func (c *Client) explain(ctx context.Context, ep *endpoint, err error) error {
	if err == nil || !unreachable(err, ep) {
		return err
	}
	var te *TransportError
	if errors.As(err, &te) {
		return err
	}
	if st, ok := status.FromError(err); !ok || grpcutil.ReasonOf(st) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		// The client's own error (no connection within DialTimeout):
		// nothing was reached to learn from.
		return err
	}
	if ctx.Err() != nil {
		ctx = c.bg
	}
	if te := ep.sec.diagnose(ctx, c.dialer(), c.cfg.DialTimeout); te != nil {
		return te
	}
	return err
}

// dialer is the function that opens connections for a probe.
func (c *Client) dialer() func(context.Context, string) (net.Conn, error) {
	if c.cfg.Dialer != nil {
		return c.cfg.Dialer
	}
	var d net.Dialer
	return func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}
