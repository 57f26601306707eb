package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestLoginCommands: an AppRole role written with the CLI, its role_id
// and a secret_id read with the CLI, log in to a token that reads under
// the role's policy and nothing else; -token-only and `login TOKEN`;
// a destroyed secret_id and a JWKS file that is not there fail with one
// line; a JWT login with keys from a JWKS file; a certificate login on a
// node without TLS says what is missing.
func TestLoginCommands(t *testing.T) {
	needBinary(t)
	n := startDev(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "app.hcl")
	if err := os.WriteFile(pol, []byte(`path "secret/data/app/*" { capabilities = ["read"] }`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "kv", "put", "secret/app/db", "password=s3cret-marker")
	n.mustRun(t, "kv", "put", "secret/admin/key", "k=v")
	n.mustRun(t, "policy", "write", "app", pol)

	n.mustRun(t, "approle", "role", "write", "-token-policies=app", "-token-ttl=20m", "-token-max-ttl=1h",
		"-secret-id-ttl=10m", "-secret-id-num-uses=3", "-secret-id-bound-cidrs=127.0.0.0/8", "web")
	role := hasKeys(t, n.mustRun(t, "approle", "role", "read", "-format=json", "web"),
		"role_id", "token_policies", "token_ttl", "token_max_ttl", "token_type", "secret_id_ttl", "secret_id_num_uses", "secret_id_bound_cidrs")
	if role["token_ttl"].(float64) != 1200 || role["secret_id_num_uses"].(float64) != 3 || role["token_type"] != "service" {
		t.Fatalf("role read: %v", role)
	}
	if r := n.mustRun(t, "approle", "role", "list", "-format=json"); !strings.Contains(r.stdout, `"web"`) {
		t.Fatalf("role list: %s", r)
	}
	roleID := hasKeys(t, n.mustRun(t, "approle", "role-id", "-format=json", "web"), "role_id")["role_id"].(string)
	if roleID != role["role_id"] || roleID == "" {
		t.Fatalf("role-id %q, role read %q", roleID, role["role_id"])
	}
	sec := hasKeys(t, n.mustRun(t, "approle", "secret-id", "-format=json", "web"), "secret_id", "secret_id_accessor")
	secretID, accessor := sec["secret_id"].(string), sec["secret_id_accessor"].(string)
	secretFile := filepath.Join(dir, "secret-id")
	if err := os.WriteFile(secretFile, []byte(secretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	anon := func(args ...string) result { return runCLI(t, []string{"COFFER_ADDR=" + n.url}, "", args...) }
	r := anon("login", "-method=approle", "-format=json", "role_id="+roleID, "secret_id=@"+secretFile)
	if r.code != 0 {
		t.Fatalf("login: %s", r)
	}
	m := hasKeys(t, r, "token", "accessor", "policies", "ttl", "renewable", "type", "expire_time")
	tok := m["token"].(string)
	if m["type"] != "service" || m["ttl"].(float64) != 1200 || m["display_name"] != "approle-web" || m["orphan"] != true {
		t.Fatalf("login: %s", r)
	}
	as := func(token string, args ...string) result {
		return runCLI(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + token}, "", args...)
	}
	if r := as(tok, "kv", "get", "-field=password", "secret/app/db"); r.code != 0 || strings.TrimSpace(r.stdout) != "s3cret-marker" {
		t.Fatalf("read with the login's token: %s", r)
	}
	wantErr(t, as(tok, "kv", "get", "secret/admin/key"), 1, "permission denied: read on secret/data/admin/key")

	// -token-only prints the token alone; `login TOKEN` describes it.
	r = anon("login", "-method=approle", "-token-only", "role_id="+roleID, "secret_id="+secretID)
	only := strings.TrimSpace(r.stdout)
	if r.code != 0 || strings.Contains(only, "\n") || !strings.HasPrefix(only, "cof.") {
		t.Fatalf("-token-only: %s", r)
	}
	if r := anon("login", "-format=json", only); r.code != 0 || !strings.Contains(r.stdout, `"display_name": "approle-web"`) {
		t.Fatalf("login TOKEN: %s", r)
	}
	wantErr(t, anon("login", "cof.not-a-token"), 1, "token")

	// Destroyed: the third use is refused with one line, without the
	// secret_id in it.
	n.mustRun(t, "approle", "secret-id", "destroy", "-accessor="+accessor, "web")
	r = anon("login", "-method=approle", "role_id="+roleID, "secret_id="+secretID)
	wantErr(t, r, 1, "invalid role_id or secret_id")
	if strings.Contains(r.stderr, secretID) {
		t.Fatalf("the error names the secret_id: %s", r.stderr)
	}
	wantErr(t, n.run(t, "approle", "secret-id", "destroy", "-accessor="+accessor, "web"), 2, "no secret_id with that accessor")
	wantErr(t, anon("login", "-method=ldap", "x=y"), 1, `unknown -method "ldap"`)
	wantErr(t, anon("login", "-method=approle", "role_id"), 1, "want KEY=VALUE")

	// JWT: keys from a JWKS file.
	wantErr(t, n.run(t, "jwt", "config", "-jwks-file="+filepath.Join(dir, "missing.json")), 1, "-jwks-file")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "jwt", "config", "-jwks-file="+jwksFile, "-bound-issuer=https://kubernetes.default.svc")
	if r := n.mustRun(t, "jwt", "config", "-format=json"); !strings.Contains(r.stdout, `"bound_issuer": "https://kubernetes.default.svc"`) {
		t.Fatalf("jwt config read: %s", r)
	}
	n.mustRun(t, "jwt", "role", "write", "-bound-audiences=coffer", "-bound-claims=kubernetes.io/namespace=payments",
		"-token-policies=app", "-token-type=batch", "-token-ttl=5m", "payments")
	jr := hasKeys(t, n.mustRun(t, "jwt", "role", "read", "-format=json", "payments"), "bound_audiences", "bound_claims", "user_claim", "token_type")
	if jr["user_claim"] != "sub" || jr["token_type"] != "batch" {
		t.Fatalf("jwt role read: %v", jr)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sa, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: "https://kubernetes.default.svc", Subject: "system:serviceaccount:payments:api", Audience: jwt.Audience{"coffer"},
		Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(now),
	}).Claims(map[string]any{"kubernetes.io/namespace": "payments"}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	saFile := filepath.Join(dir, "token")
	if err := os.WriteFile(saFile, []byte(sa), 0o600); err != nil {
		t.Fatal(err)
	}
	r = anon("login", "-method=jwt", "-format=json", "role=payments", "jwt=@"+saFile)
	if r.code != 0 {
		t.Fatalf("jwt login: %s", r)
	}
	jm := hasKeys(t, r, "token", "type", "ttl")
	if jm["type"] != "batch" || jm["ttl"].(float64) != 300 {
		t.Fatalf("jwt login: %s", r)
	}
	if r := as(jm["token"].(string), "kv", "get", "-field=password", "secret/app/db"); r.code != 0 {
		t.Fatalf("read with the JWT login's token: %s", r)
	}
	wantErr(t, anon("login", "-method=jwt", "role=nope", "jwt=@"+saFile), 1, `no role named "nope"`)
	n.mustRun(t, "jwt", "role", "delete", "payments")

	// Certificate roles; a node without TLS sees no certificate.
	n.mustRun(t, "cert", "role", "write", "-allowed-common-names=web-*", "-token-policies=app", "-token-ttl=10m", "web")
	if r := n.mustRun(t, "cert", "role", "list"); strings.TrimSpace(r.stdout) != "web" {
		t.Fatalf("cert role list: %s", r)
	}
	if r := n.mustRun(t, "cert", "role", "read", "-format=json", "web"); !strings.Contains(r.stdout, `"web-*"`) {
		t.Fatalf("cert role read: %s", r)
	}
	wantErr(t, anon("login", "-method=cert"), 1, "without a client certificate")
	wantErr(t, n.run(t, "cert", "role", "write", "-token-policies=app", "any"), 1, "needs allowed_common_names or allowed_dns_sans")

	n.mustRun(t, "approle", "role", "delete", "web")
	wantErr(t, n.run(t, "approle", "role-id", "web"), 2, `no role named "web"`)
}
