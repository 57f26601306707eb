package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Files names the TLS material of a node or a client. Cert and Key may be
// empty for a client that only verifies the server.
type Files struct {
	CA   string
	Cert string
	Key  string
}

// NodeFiles is the node material of a certificates directory.
func NodeFiles(certsDir string) Files {
	return Files{
		CA:   filepath.Join(certsDir, CAFile),
		Cert: filepath.Join(certsDir, NodeCertFile),
		Key:  filepath.Join(certsDir, NodeKeyFile),
	}
}

// ClientFiles is client NAME's material of a certificates directory.
func ClientFiles(certsDir, name string) Files {
	return Files{
		CA:   filepath.Join(certsDir, CAFile),
		Cert: filepath.Join(certsDir, ClientCertFile(name)),
		Key:  filepath.Join(certsDir, ClientKeyFile(name)),
	}
}

// reloadCheck is how often a handshake looks whether the files changed.
const reloadCheck = time.Second

// Reloader holds a key pair and a CA pool loaded from Files. A handshake
// loads them again when the files changed (looked at most once a second);
// Reload does it at once (SIGHUP). A change that does not load keeps the
// previous material and reports through OnError.
type Reloader struct {
	files Files
	// OnError, when set, hears of a changed file that did not load.
	OnError func(error)

	mu      sync.RWMutex
	cert    *tls.Certificate // nil without Cert/Key
	leaf    *x509.Certificate
	pool    *x509.CertPool
	stamp   string
	checked time.Time
}

// Load reads files. The certificate must chain to the CA.
func Load(files Files) (*Reloader, error) {
	r := &Reloader{files: files}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload reads the files again.
func (r *Reloader) Reload() error {
	stamp := r.fileStamp()
	caPEM, err := os.ReadFile(r.files.CA)
	if err != nil {
		return fmt.Errorf("tlsutil: CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("tlsutil: %s holds no PEM certificate", r.files.CA)
	}
	var cert *tls.Certificate
	var leaf *x509.Certificate
	if r.files.Cert != "" || r.files.Key != "" {
		c, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
		if err != nil {
			return fmt.Errorf("tlsutil: key pair %s / %s: %w", r.files.Cert, r.files.Key, err)
		}
		leaf, err = x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return fmt.Errorf("tlsutil: %s: %w", r.files.Cert, err)
		}
		c.Leaf = leaf
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("tlsutil: %s is not signed by %s (%s): %w", r.files.Cert, r.files.CA, Describe(leaf), err)
		}
		cert = &c
	}
	r.mu.Lock()
	r.cert, r.leaf, r.pool, r.stamp, r.checked = cert, leaf, pool, stamp, time.Now()
	r.mu.Unlock()
	return nil
}

// fileStamp identifies the files' current contents by size and time.
func (r *Reloader) fileStamp() string {
	s := ""
	for _, p := range []string{r.files.CA, r.files.Cert, r.files.Key} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%d:%d;", fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return s
}

// current returns the material, loading it again when a file changed.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.RLock()
	cert, pool, checked := r.cert, r.pool, r.checked
	r.mu.RUnlock()
	if time.Since(checked) < reloadCheck {
		return cert, pool
	}
	r.mu.Lock()
	if time.Since(r.checked) < reloadCheck {
		cert, pool = r.cert, r.pool
		r.mu.Unlock()
		return cert, pool
	}
	r.checked = time.Now()
	changed := r.fileStamp() != r.stamp
	r.mu.Unlock()
	if changed {
		if err := r.Reload(); err != nil && r.OnError != nil {
			r.OnError(err)
		}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cert, r.pool
}

// Leaf is the current certificate (nil without one).
func (r *Reloader) Leaf() *x509.Certificate {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.leaf
}

// ErrNotANode means the peer's certificate is not a node certificate of
// the cluster's CA.
var ErrNotANode = errors.New("tlsutil: the peer did not present a node certificate of this cluster's CA")

// IsNode reports whether a verified certificate is a node certificate: the
// common name "node" with server and client usage.
func IsNode(c *x509.Certificate) bool {
	if c == nil || c.Subject.CommonName != NodeCommonName {
		return false
	}
	var server, client bool
	for _, u := range c.ExtKeyUsage {
		server = server || u == x509.ExtKeyUsageServerAuth
		client = client || u == x509.ExtKeyUsageClientAuth
	}
	return server && client
}

// ServerConfig is the API's TLS: the node certificate, and client
// certificates verified against the CA when given (required with
// requireClientCert).
func (r *Reloader) ServerConfig(requireClientCert bool) *tls.Config {
	return r.serverConfig(clientAuth(requireClientCert), nil, "h2")
}

// clientAuth is what the API asks of a caller's certificate: verified when
// given, or required.
func clientAuth(require bool) tls.ClientAuthType {
	if require {
		return tls.RequireAndVerifyClientCert
	}
	return tls.VerifyClientCertIfGiven
}

// HTTPServerConfig is the TLS of the node's Vault-compatible HTTP API:
// the API's rules (client certificates verified when given, or required),
// speaking HTTP/1.1 (see server/http.go for why not HTTP/2).
func (r *Reloader) HTTPServerConfig(requireClientCert bool) *tls.Config {
	return r.serverConfig(clientAuth(requireClientCert), nil, "http/1.1")
}

// PeerServerConfig is the TLS of a node-to-node listener (Raft): mutual,
// and the caller must present a node certificate of the CA.
func (r *Reloader) PeerServerConfig() *tls.Config {
	return r.serverConfig(tls.RequireAndVerifyClientCert, func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !IsNode(cs.PeerCertificates[0]) {
			return ErrNotANode
		}
		return nil
	})
}

// serverConfig is a listener's TLS that takes the certificate and CA
// loaded at each handshake, so that a reload applies to the next
// connection: auth is what it asks of a caller's certificate (verified
// against the CA), verify a further check of the caller (nil for none),
// protos the ALPN protocols.
func (r *Reloader) serverConfig(auth tls.ClientAuthType, verify func(tls.ConnectionState) error, protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := r.current()
			if cert == nil {
				return nil, errors.New("tlsutil: no node certificate loaded")
			}
			return &tls.Config{
				MinVersion:       tls.VersionTLS12,
				Certificates:     []tls.Certificate{*cert},
				ClientAuth:       auth,
				ClientCAs:        pool,
				VerifyConnection: verify,
				NextProtos:       protos,
			}, nil
		},
	}
}

// PeerClientConfig is the TLS of a node dialling another node: it presents
// its node certificate and accepts only a node certificate of the CA. The
// peer is dialled by a gossiped address, so what is checked is the chain
// and the node role, not a host name.
func (r *Reloader) PeerClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified below against the CA, without a host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			if cert == nil {
				return nil, errors.New("tlsutil: no node certificate loaded")
			}
			return cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, pool := r.current()
			return verifyNode(cs, pool)
		},
	}
}

// verifyNode checks that the peer presented a node certificate that chains
// to pool.
func verifyNode(cs tls.ConnectionState, pool *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return ErrNotANode
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w (%s): %v", ErrNotANode, Describe(leaf), err)
	}
	if !IsNode(leaf) {
		return fmt.Errorf("%w (%s)", ErrNotANode, Describe(leaf))
	}
	return nil
}

// ClientConfig is a client's TLS: it verifies the server against the CA
// and serverName (empty: the host dialled), and presents the client
// certificate when the files name one.
func (r *Reloader) ClientConfig(serverName string) *tls.Config {
	_, pool := r.current()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: serverName}
	if r.files.Cert != "" {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}
	}
	return cfg
}
