package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// TestVaultInitUnsealHealth brings a cluster up through vault/api only:
// health before init (501), init through a follower with a client
// certificate, unseal with hex and base64 shares, health per role, seal.
func TestVaultInitUnsealHealth(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	follower := c.Followers(leader)[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	health := func(n *testcluster.Node, query string) answer {
		rc := newRawClient(t, c, n)
		rc.token = ""
		return rc.do("GET", "/v1/sys/health"+query, nil, nil)
	}
	for _, n := range c.Nodes() {
		if a := health(n, ""); a.status != http.StatusNotImplemented {
			t.Fatalf("%s health before init: %d %s", n.ID, a.status, a.body)
		}
	}

	// Init needs a certificate of the cluster's CA, as the gRPC API does.
	if _, err := vaultClient(t, c, follower, "", false).Sys().InitWithContext(ctx, &vault.InitRequest{SecretShares: 5, SecretThreshold: 3}); statusOf(err) != http.StatusForbidden {
		t.Fatalf("init without a client certificate: %v, want 403", err)
	}
	cl := vaultClient(t, c, follower, "", true)
	init, err := cl.Sys().InitWithContext(ctx, &vault.InitRequest{SecretShares: 5, SecretThreshold: 3})
	if err != nil {
		t.Fatalf("init through %s: %v", follower.ID, err)
	}
	if len(init.Keys) != 5 || len(init.KeysB64) != 5 || init.RootToken == "" {
		t.Fatalf("init answered %d keys, %d base64 keys, root token %v", len(init.Keys), len(init.KeysB64), init.RootToken != "")
	}
	if _, err := cl.Sys().InitWithContext(ctx, &vault.InitRequest{SecretShares: 5, SecretThreshold: 3}); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("a second init: %v, want 400", err)
	}
	if st, err := cl.Sys().InitStatusWithContext(ctx); err != nil || !st {
		t.Fatalf("init status: %v %v", st, err)
	}

	for i, n := range c.Nodes() {
		if a := health(n, ""); a.status != http.StatusServiceUnavailable {
			t.Fatalf("%s health while sealed: %d %s", n.ID, a.status, a.body)
		}
		ncl := vaultClient(t, c, n, "", false)
		for j := range 3 {
			key := init.Keys[(i+j)%5]
			if i%2 == 1 {
				key = init.KeysB64[(i+j)%5]
			}
			st, err := ncl.Sys().UnsealWithContext(ctx, key)
			if err != nil {
				t.Fatalf("unseal %s with share %d: %v", n.ID, j, err)
			}
			if want := j < 2; st.Sealed != want || st.T != 3 || st.N != 5 || (want && st.Progress != j+1) {
				t.Fatalf("%s after share %d: %+v", n.ID, j, st)
			}
		}
		if st, err := ncl.Sys().SealStatusWithContext(ctx); err != nil || st.Sealed || !st.Initialized {
			t.Fatalf("%s seal status: %+v %v", n.ID, st, err)
		}
	}
	leader = c.WaitForLeader(t)
	testcluster.WaitFor(t, 10*time.Second, "health of every node by its role", func() error {
		for _, n := range c.Nodes() {
			want := http.StatusTooManyRequests
			if n == leader {
				want = http.StatusOK
			}
			if a := health(n, ""); a.status != want {
				return fmt.Errorf("%s health %d, want %d: %s", n.ID, a.status, want, a.body)
			}
			if a := health(n, "?standbyok=true"); a.status != http.StatusOK {
				return fmt.Errorf("%s health with standbyok %d: %s", n.ID, a.status, a.body)
			}
		}
		return nil
	})

	// A sealed follower leaves the pool of a health check, and comes back.
	fcl := vaultClient(t, c, follower, init.RootToken, false)
	if err := fcl.Sys().SealWithContext(ctx); err != nil {
		t.Fatalf("seal %s: %v", follower.ID, err)
	}
	if a := health(follower, "?standbyok=true"); a.status != http.StatusServiceUnavailable {
		t.Fatalf("sealed %s health %d", follower.ID, a.status)
	}
	if a := health(follower, "?standbyok=true&sealedcode=299"); a.status != 299 {
		t.Fatalf("sealedcode=299: %d", a.status)
	}
	if _, err := fcl.KVv2("secret").Get(ctx, "any"); statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("a read on a sealed node: %v, want 503", err)
	}
	for _, k := range init.Keys[:3] {
		if _, err := fcl.Sys().UnsealWithContext(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fcl.KVv2("secret").Put(ctx, "after-unseal", map[string]any{"k": "v"}); err != nil {
		t.Fatalf("a write through the unsealed follower: %v", err)
	}
}

// TestVaultCLIKVSequence makes the calls `vault kv put secret/api-key
// value=12345` and `vault kv get -field=value secret/api-key` make: the
// mount preflight (secret/ is KV version 2), then the KV v2 paths.
func TestVaultCLIKVSequence(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, n := range append([]*testcluster.Node{leader}, c.Followers(leader)...) {
		cl := vaultClient(t, c, n, c.Token, false)
		pre, err := cl.Logical().ReadWithContext(ctx, "sys/internal/ui/mounts/secret/api-key")
		if err != nil || pre == nil {
			t.Fatalf("%s preflight: %v", n.ID, err)
		}
		opts, _ := pre.Data["options"].(map[string]any)
		if pre.Data["path"] != "secret/" || pre.Data["type"] != "kv" || opts["version"] != "2" {
			t.Fatalf("%s preflight answered %v", n.ID, pre.Data)
		}
		value := fmt.Sprintf("1234%d", i)
		w, err := cl.Logical().WriteWithContext(ctx, "secret/data/api-key", map[string]any{"data": map[string]any{"value": value}})
		if err != nil {
			t.Fatalf("%s kv put: %v", n.ID, err)
		}
		if v, _ := w.Data["version"].(json.Number).Int64(); v != int64(i+1) {
			t.Fatalf("%s kv put answered version %v, want %d", n.ID, w.Data["version"], i+1)
		}
		r, err := cl.Logical().ReadWithContext(ctx, "secret/data/api-key")
		if err != nil || r == nil {
			t.Fatalf("%s kv get: %v", n.ID, err)
		}
		data, _ := r.Data["data"].(map[string]any)
		if data["value"] != value {
			t.Fatalf("%s kv get -field=value: %v, want %s", n.ID, data["value"], value)
		}
	}
	// A path under no mount: 404, which vault/api reads as no answer.
	cl := vaultClient(t, c, leader, c.Token, false)
	if s, err := cl.Logical().ReadWithContext(ctx, "sys/internal/ui/mounts/kv/x"); s != nil || err != nil {
		t.Fatalf("preflight of a path under no mount: %v %v", s, err)
	}
	if a := newRawClient(t, c, leader).do("GET", "/v1/sys/internal/ui/mounts/kv/x", nil, nil); a.status != http.StatusNotFound {
		t.Fatalf("preflight of a path under no mount: %d %s", a.status, a.body)
	}
}
