package testcluster

import (
	"crypto/tls"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"coffer/internal/tlsutil"
)

// makeCerts creates the cluster's CA, one node certificate every node uses
// (for localhost and 127.0.0.1) and the client certificate "root".
func (c *Cluster) makeCerts(t testing.TB) error {
	c.certsDir = filepath.Join(t.TempDir(), "certs")
	c.caKey = filepath.Join(t.TempDir(), "ca.key")
	if err := tlsutil.CreateCA(c.certsDir, c.caKey, 0, false); err != nil {
		return err
	}
	if err := tlsutil.CreateNode(c.certsDir, c.caKey, []string{"localhost", "127.0.0.1"}, 0, false); err != nil {
		return err
	}
	if err := tlsutil.CreateClient(c.certsDir, c.caKey, "root", 0, false); err != nil {
		return err
	}
	r, err := tlsutil.Load(tlsutil.ClientFiles(c.certsDir, "root"))
	if err != nil {
		return err
	}
	c.clientTLS = r.ClientConfig("")
	return nil
}

// CertsDir is the cluster's certificates directory ("" without TLS).
func (c *Cluster) CertsDir() string { return c.certsDir }

// CAKey is the cluster's CA key file ("" without TLS).
func (c *Cluster) CAKey() string { return c.caKey }

// ClientTLS is the TLS configuration of a client of the cluster, with the
// client certificate "root" (nil without TLS).
func (c *Cluster) ClientTLS() *tls.Config {
	if c.clientTLS == nil {
		return nil
	}
	return c.clientTLS.Clone()
}

// creds is the harness's transport security towards the nodes.
func (c *Cluster) creds() credentials.TransportCredentials {
	if c.clientTLS == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(c.clientTLS.Clone())
}
