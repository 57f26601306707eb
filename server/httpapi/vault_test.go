package httpapi_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/internal/testcluster"
)

// vaultClient is hashicorp/vault/api's client for node n, with the
// cluster's CA (and, when withCert, the client certificate "root").
func vaultClient(t testing.TB, c *testcluster.Cluster, n *testcluster.Node, token string, withCert bool) *vault.Client {
	t.Helper()
	cfg := vault.DefaultConfig()
	cfg.Address = n.HTTPURL()
	cfg.Timeout = 20 * time.Second
	if dir := c.CertsDir(); dir != "" {
		tc := &vault.TLSConfig{CACert: filepath.Join(dir, "ca.crt")}
		if withCert {
			tc.ClientCert, tc.ClientKey = filepath.Join(dir, "client.root.crt"), filepath.Join(dir, "client.root.key")
		}
		if err := cfg.ConfigureTLS(tc); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl.SetToken(token)
	return cl
}

// statusOf is the HTTP status of a vault/api error (0 when it is not one).
func statusOf(err error) int {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func TestVaultClientSmoke(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, n := range c.Nodes() {
		cl := vaultClient(t, c, n, c.Token, false)
		h, err := cl.Sys().HealthWithContext(ctx)
		if err != nil {
			t.Fatalf("%s health: %v", n.ID, err)
		}
		t.Logf("%s health %+v", n.ID, h)
		kv := cl.KVv2("secret")
		s, err := kv.Put(ctx, "smoke/"+n.ID, map[string]any{"k": "v-" + n.ID})
		if err != nil {
			t.Fatalf("%s put: %v", n.ID, err)
		}
		if s.VersionMetadata.Version != 1 {
			t.Fatalf("version %d", s.VersionMetadata.Version)
		}
		got, err := kv.Get(ctx, "smoke/"+n.ID)
		if err != nil {
			t.Fatalf("%s get: %v", n.ID, err)
		}
		if got.Data["k"] != "v-"+n.ID {
			t.Fatalf("%s got %v", n.ID, got.Data)
		}
		_, err = kv.Get(ctx, "smoke/missing")
		if !errors.Is(err, vault.ErrSecretNotFound) {
			t.Fatalf("missing: %v", err)
		}
		l, err := cl.Sys().LeaderWithContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if l.IsSelf != (n == leader) {
			t.Fatalf("%s is_self %v", n.ID, l.IsSelf)
		}
		t.Logf("%s leader %+v", n.ID, l)
	}
	bad := vaultClient(t, c, leader, "nope", false)
	_, err := bad.KVv2("secret").Get(ctx, "smoke/n1")
	if statusOf(err) != http.StatusForbidden {
		t.Fatalf("bad token: %v", err)
	}
}
