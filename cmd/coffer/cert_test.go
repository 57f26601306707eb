package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"coffer/api"
	"coffer/internal/tlsutil"
)

// TestCertCommands: create-ca, create-node, create-client and list make
// and describe CockroachDB's layout; nothing is overwritten without
// -overwrite; the CA key may not sit in the certificates directory; bad
// input gets one line.
func TestCertCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	caKey := filepath.Join(t.TempDir(), "ca.key")
	runOK := func(args ...string) string {
		t.Helper()
		e, out, errb := testEnv("", nil)
		if code := run(args, e); code != 0 {
			t.Fatalf("coffer %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
		}
		return out.String()
	}
	runOK("cert", "create-ca", "-certs-dir="+dir, "-ca-key="+caKey)
	runOK("cert", "create-node", "-certs-dir="+dir, "-ca-key="+caKey, "coffer1", "localhost", "127.0.0.1")
	out := runOK("cert", "create-client", "-certs-dir="+dir, "-ca-key="+caKey, "root")
	if !strings.Contains(out, "client.root.crt") || !strings.Contains(out, "client") {
		t.Fatalf("create-client printed %q", out)
	}
	var infos []tlsutil.CertInfo
	if err := json.Unmarshal([]byte(runOK("cert", "list", "-certs-dir="+dir, "-format=json")), &infos); err != nil || len(infos) != 3 {
		t.Fatalf("list: %v %+v", err, infos)
	}
	for _, f := range []string{"ca.crt", "node.crt", "node.key", "client.root.crt", "client.root.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cert", "create-node", "-certs-dir=" + dir, "-ca-key=" + caKey, "x"}, "pass -overwrite"},
		{[]string{"cert", "create-ca", "-certs-dir=" + dir, "-ca-key=" + filepath.Join(dir, "ca.key")}, "must not be in -certs-dir"},
		{[]string{"cert", "create-node", "-certs-dir=" + dir, "-ca-key=" + caKey}, "give at least one HOST"},
		{[]string{"cert", "create-client", "-certs-dir=" + dir, "-ca-key=" + caKey, "bad name"}, "invalid name"},
		{[]string{"cert", "create-client", "-certs-dir=" + dir, "root"}, "-ca-key is required"},
		{[]string{"cert", "list", "-certs-dir=" + filepath.Join(dir, "none")}, "no directory"},
	} {
		e, _, errb := testEnv("", nil)
		if code := run(c.args, e); code != 1 {
			t.Errorf("coffer %s: exit %d, want 1", strings.Join(c.args, " "), code)
		}
		assertOneLineError(t, errb.String(), c.want)
	}
	// -overwrite replaces.
	runOK("cert", "create-node", "-overwrite", "-certs-dir="+dir, "-ca-key="+caKey, "coffer2")

	// A client command given -certs-dir speaks TLS with client.root.
	e, _, _ := testEnv("", nil)
	f := newFlags("coffer kv get", "PATH", "").withClient()
	if _, err := f.parse(e, []string{"-certs-dir=" + dir, "-address=127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.clientConfig(e)
	if err != nil || cfg.TLS == nil || cfg.TLS.RootCAs == nil || cfg.TLS.GetClientCertificate == nil {
		t.Fatalf("client config from -certs-dir: %+v %v", cfg.TLS, err)
	}
	// A client certificate without a CA is refused in one line.
	e, _, _ = testEnv("", map[string]string{api.EnvClientCert: "x.crt", api.EnvClientKey: "x.key"})
	f = newFlags("coffer kv get", "PATH", "").withClient()
	if _, err := f.parse(e, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.clientConfig(e); err == nil || !strings.Contains(err.Error(), "needs the cluster's CA") {
		t.Fatalf("client certificate without a CA: %v", err)
	}
}
