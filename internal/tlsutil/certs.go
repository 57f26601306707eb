// Package tlsutil makes and loads coffer's certificates and builds the TLS
// configurations of the API, the node-to-node channels and clients.
//
// The layout is CockroachDB's: one certificates directory holds ca.crt,
// node.crt and node.key, and client.NAME.crt and client.NAME.key; the CA's
// key lives elsewhere (only `coffer cert` needs it). Keys are ECDSA P-256
// and written mode 0600. A node certificate has the common name "node" and
// both server and client usage: nodes prove themselves to each other with
// it (mutual TLS), and internal RPCs accept nothing else.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// File names in a certificates directory.
const (
	CAFile       = "ca.crt"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// NodeCommonName is the subject common name of every node certificate.
const NodeCommonName = "node"

// Default lifetimes, as CockroachDB's: ten years for the CA, five for the
// certificates it signs.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultCertLifetime = 5 * 365 * 24 * time.Hour
)

// Errors of certificate handling. Each message says what to do.
var (
	// ErrExists means a file would be overwritten.
	ErrExists = errors.New("tlsutil: the file exists: pass -overwrite to replace it")
	// ErrNoCA means the certificates directory has no CA certificate.
	ErrNoCA = errors.New("tlsutil: no ca.crt in the certificates directory: create one with `coffer cert create-ca`")
	// ErrBadName means a client name or host cannot go into a certificate.
	ErrBadName = errors.New("tlsutil: invalid name")
)

// ClientCertFile and ClientKeyFile are the file names of client NAME's
// certificate and key.
func ClientCertFile(name string) string { return "client." + name + ".crt" }

// ClientKeyFile is the file name of client NAME's key.
func ClientKeyFile(name string) string { return "client." + name + ".key" }

// CreateCA makes a CA key at caKey and its certificate at certsDir/ca.crt.
func CreateCA(certsDir, caKey string, lifetime time.Duration, overwrite bool) error {
	if lifetime <= 0 {
		lifetime = DefaultCALifetime
	}
	certPath := filepath.Join(certsDir, CAFile)
	if err := mayWrite(overwrite, certPath, caKey); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl, err := template("coffer CA", lifetime)
	if err != nil {
		return err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if err := writeKey(caKey, key); err != nil {
		return err
	}
	return writeCert(certPath, der)
}

// CreateNode makes certsDir/node.crt and node.key, signed by the CA, for
// every host (a DNS name or an IP address) a node is reached by.
func CreateNode(certsDir, caKey string, hosts []string, lifetime time.Duration, overwrite bool) error {
	if len(hosts) == 0 {
		return fmt.Errorf("%w: give the host names and addresses the node is reached by (e.g. coffer1 localhost 127.0.0.1)", ErrBadName)
	}
	tmpl, err := template(NodeCommonName, lifetime)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if validName(h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		} else {
			return fmt.Errorf("%w: host %q is neither an IP address nor a DNS name", ErrBadName, h)
		}
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return sign(certsDir, caKey, NodeCertFile, NodeKeyFile, tmpl, overwrite)
}

// CreateClient makes certsDir/client.NAME.crt and .key, signed by the CA,
// with the common name NAME (e.g. root).
func CreateClient(certsDir, caKey, name string, lifetime time.Duration, overwrite bool) error {
	if !validName(name) || name == NodeCommonName {
		return fmt.Errorf("%w: client name %q: use letters, digits, '.', '-' and '_' (and not %q)", ErrBadName, name, NodeCommonName)
	}
	tmpl, err := template(name, lifetime)
	if err != nil {
		return err
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return sign(certsDir, caKey, ClientCertFile(name), ClientKeyFile(name), tmpl, overwrite)
}

// sign issues tmpl under the CA of certsDir (key at caKey).
func sign(certsDir, caKey, certName, keyName string, tmpl *x509.Certificate, overwrite bool) error {
	ca, err := ReadCert(filepath.Join(certsDir, CAFile))
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoCA
	}
	if err != nil {
		return err
	}
	signer, err := readKey(caKey)
	if err != nil {
		return fmt.Errorf("tlsutil: CA key %s: %w", caKey, err)
	}
	if !signer.PublicKey.Equal(ca.PublicKey) {
		return fmt.Errorf("tlsutil: the key %s is not the key of %s: give the CA key made with this ca.crt", caKey, filepath.Join(certsDir, CAFile))
	}
	certPath, keyPath := filepath.Join(certsDir, certName), filepath.Join(certsDir, keyName)
	if err := mayWrite(overwrite, certPath, keyPath); err != nil {
		return err
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, signer)
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writeCert(certPath, der)
}

// template is a certificate valid from a minute ago for lifetime.
func template(cn string, lifetime time.Duration) (*x509.Certificate, error) {
	if lifetime <= 0 {
		lifetime = DefaultCertLifetime
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"coffer"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(lifetime),
	}, nil
}

// validName accepts DNS-like names and client names.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '*':
		default:
			return false
		}
	}
	return true
}

// mayWrite refuses to replace existing files unless overwrite is set.
func mayWrite(overwrite bool, paths ...string) error {
	if overwrite {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s: %w", p, ErrExists)
		}
	}
	return nil
}

// writeKey writes key as PKCS#8 PEM, mode 0600, atomically.
func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// writeCert writes a certificate as PEM, mode 0644.
func writeCert(path string, der []byte) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFile writes data through a temporary file and a rename.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// ReadCert reads the first certificate of a PEM file.
func ReadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("tlsutil: %s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

// readKey reads an ECDSA private key (PKCS#8 or SEC 1 PEM).
func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM key in the file")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if ek, ok := k.(*ecdsa.PrivateKey); ok {
			return ek, nil
		}
		return nil, errors.New("the key is not an ECDSA key")
	}
	return x509.ParseECPrivateKey(block.Bytes)
}

// CertInfo describes one certificate of a directory.
type CertInfo struct {
	File      string    `json:"file"`
	Subject   string    `json:"subject"`
	Names     []string  `json:"names,omitempty"`
	Usage     []string  `json:"usage"`
	IsCA      bool      `json:"is_ca"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
}

// List describes every certificate (*.crt) in certsDir, sorted by file.
func List(certsDir string) ([]CertInfo, error) {
	files, err := filepath.Glob(filepath.Join(certsDir, "*.crt"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []CertInfo
	for _, f := range files {
		c, err := ReadCert(f)
		if err != nil {
			return nil, err
		}
		info := CertInfo{File: filepath.Base(f), Subject: c.Subject.CommonName, IsCA: c.IsCA, NotBefore: c.NotBefore, NotAfter: c.NotAfter}
		info.Names = append(info.Names, c.DNSNames...)
		for _, ip := range c.IPAddresses {
			info.Names = append(info.Names, ip.String())
		}
		if c.IsCA {
			info.Usage = append(info.Usage, "ca")
		}
		for _, u := range c.ExtKeyUsage {
			switch u {
			case x509.ExtKeyUsageServerAuth:
				info.Usage = append(info.Usage, "server")
			case x509.ExtKeyUsageClientAuth:
				info.Usage = append(info.Usage, "client")
			}
		}
		out = append(out, info)
	}
	return out, nil
}

// Describe says what a certificate is, for error messages: its subject,
// names and validity.
func Describe(c *x509.Certificate) string {
	names := append([]string{}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return fmt.Sprintf("subject %q, names [%s], valid %s to %s", c.Subject.CommonName, strings.Join(names, " "),
		c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
}
