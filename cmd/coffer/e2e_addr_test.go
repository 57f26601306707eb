package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/server"
)

// TestAddressSchemes: against a node with TLS and one without, a bare
// address speaks TLS and http:// plaintext, as VAULT_ADDR's do; each
// mismatch, a missing CA and a wrong server name are one line that says
// what to do; healthcheck speaks TLS too; each node's start hint is the
// address clients give.
func TestAddressSchemes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certs, caKey := filepath.Join(dir, "certs"), filepath.Join(dir, "ca.key")
	for _, args := range [][]string{
		{"cert", "create-ca", "-certs-dir=" + certs, "-ca-key=" + caKey},
		{"cert", "create-node", "-certs-dir=" + certs, "-ca-key=" + caKey, "localhost", "127.0.0.1"},
		{"cert", "create-client", "-certs-dir=" + certs, "-ca-key=" + caKey, "root"},
	} {
		if r := runCLI(t, nil, "", args...); r.code != 0 {
			t.Fatalf("coffer %s: %s", strings.Join(args, " "), r)
		}
	}
	node := func(id string, extra ...string) func(apiAddr, raftAddr string) []string {
		return func(apiAddr, raftAddr string) []string {
			return append([]string{"-node-id=" + id, "-data-dir=" + t.TempDir(), "-api-addr=" + apiAddr, "-raft-addr=" + raftAddr, "-log-level=info"}, extra...)
		}
	}
	tlsNode := startServer(t, nil, node("t1", "-certs-dir="+certs))
	plain := startServer(t, nil, node("p1", "-insecure"))
	ca := "COFFER_CACERT=" + filepath.Join(certs, "ca.crt")

	// Reached: an uninitialized node answers status with exit 2.
	for name, tc := range map[string]struct {
		env  []string
		args []string
	}{
		"bare with COFFER_CACERT":    {[]string{ca}, []string{"-address=" + tlsNode.addr}},
		"https:// with -certs-dir":   {nil, []string{"-address=https://" + tlsNode.addr, "-certs-dir=" + certs}},
		"bare in COFFER_ADDR":        {[]string{ca, "COFFER_ADDR=" + tlsNode.addr}, nil},
		"http:// to the plain node":  {nil, []string{"-address=http://" + plain.addr}},
		"http:// despite a CA given": {[]string{ca}, []string{"-address=http://" + plain.addr}},
	} {
		if r := runCLI(t, tc.env, "", append([]string{"status"}, tc.args...)...); r.code != 2 {
			t.Errorf("%s: %s", name, r)
		}
	}

	// Not reached, with the cause and the fix in one line.
	for name, tc := range map[string]struct {
		env  []string
		args []string
		want string
	}{
		"bare to the plain node": {nil, []string{"-address=" + plain.addr},
			fmt.Sprintf("node %s speaks plaintext, not TLS: address it as http://%s (or start it with -certs-dir)", plain.addr, plain.addr)},
		"http:// to the TLS node": {[]string{ca}, []string{"-address=http://" + tlsNode.addr},
			fmt.Sprintf("node %s speaks TLS: drop http:// and set COFFER_CACERT", tlsNode.addr)},
		"no CA: the system's roots": {nil, []string{"-address=" + tlsNode.addr},
			"its certificate is signed by an unknown authority (issuer \"coffer CA\"): set COFFER_CACERT (or -ca-cert, -certs-dir) to the cluster's ca.crt"},
		"a name the certificate lacks": {[]string{ca}, []string{"-address=" + tlsNode.addr, "-tls-server-name=node9"},
			`its certificate is for [localhost 127.0.0.1], not "node9"`},
		"an unknown scheme": {nil, []string{"-address=grpc://" + tlsNode.addr}, "unknown scheme grpc://"},
	} {
		r := runCLI(t, tc.env, "", append([]string{"status"}, tc.args...)...)
		if r.code != 1 || !strings.HasPrefix(r.stderr, "Error: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: want one line with %q, got %s", name, tc.want, r)
		}
	}

	// healthcheck follows the same rules.
	if r := runCLI(t, []string{ca}, "", "healthcheck", "-address="+tlsNode.addr); r.code != 0 || !strings.Contains(r.stdout, "SERVING") {
		t.Errorf("healthcheck of the TLS node: %s", r)
	}
	if r := runCLI(t, nil, "", "healthcheck", "-address=http://"+plain.addr); r.code != 0 || !strings.Contains(r.stdout, "SERVING") {
		t.Errorf("healthcheck of the plain node: %s", r)
	}
	wantErr(t, runCLI(t, nil, "", "healthcheck", "-address="+plain.addr), 1, "speaks plaintext, not TLS")

	// The start hints.
	hints := map[*serverProc]string{
		tlsNode: fmt.Sprintf("clients reach this node with: export COFFER_ADDR='%s'; export COFFER_CACERT='%s'", tlsNode.addr, filepath.Join(certs, "ca.crt")),
		plain:   fmt.Sprintf("clients reach this node with: export COFFER_ADDR='http://%s'", plain.addr),
	}
	for p, want := range hints {
		if err := poll(10*time.Second, func() error {
			if !strings.Contains(p.stderr.String(), want) {
				return fmt.Errorf("no %q in the log:\n%s", want, p.stderr.String())
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
}

// TestClientHint: the address a node's hint prints: http:// without TLS,
// the advertised host, loopback for an unspecified listen address, and
// the CA's absolute path with TLS.
func TestClientHint(t *testing.T) {
	insecure := server.Config{Insecure: true}
	advertised := insecure
	advertised.Advertise = "coffer1"
	withTLS := server.Config{CertsDir: "certs"}
	abs, err := filepath.Abs(filepath.Join("certs", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg    server.Config
		listen string
		want   string
	}{
		{insecure, "127.0.0.1:8400", "export COFFER_ADDR='http://127.0.0.1:8400'"},
		{insecure, "0.0.0.0:8400", "export COFFER_ADDR='http://127.0.0.1:8400'"},
		{insecure, "[::]:8400", "export COFFER_ADDR='http://127.0.0.1:8400'"},
		{advertised, "0.0.0.0:8400", "export COFFER_ADDR='http://coffer1:8400'"},
		{withTLS, "127.0.0.1:8400", "export COFFER_ADDR='127.0.0.1:8400'; export COFFER_CACERT='" + abs + "'"},
	} {
		if got := newClientHint(tc.cfg, tc.listen).exports(); got != tc.want {
			t.Errorf("hint of %s: %q, want %q", tc.listen, got, tc.want)
		}
	}
}
