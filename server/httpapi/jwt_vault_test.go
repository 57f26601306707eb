package httpapi_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"slices"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"coffer/internal/testcluster"
)

// issuer signs test JWTs with its own key.
type issuer struct{ priv *ecdsa.PrivateKey }

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{priv: k}
}

func (i *issuer) pem(t *testing.T) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&i.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func (i *issuer) sign(t *testing.T, sub string) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: i.priv}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(s).Claims(jwt.Claims{
		Issuer: "https://kubernetes.default.svc", Subject: sub, Audience: jwt.Audience{"coffer"},
		Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestVaultJWTLogin configures the JWT method over HTTP and logs in with
// a service-account token at auth/jwt/login and auth/kubernetes/login
// (which coffer serves with the JWT method), on each node.
func TestVaultJWTLogin(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx := testCtx(t)
	iss := newIssuer(t)
	lg := vaultClient(t, c, leader, c.Token, false).Logical()
	if _, err := lg.WriteWithContext(ctx, "auth/jwt/config", map[string]any{"jwt_validation_pubkeys": []string{iss.pem(t)}, "bound_issuer": "https://kubernetes.default.svc"}); err != nil {
		t.Fatalf("write config: %v", err)
	}
	cfg, err := lg.ReadWithContext(ctx, "auth/jwt/config")
	if err != nil || cfg.Data["bound_issuer"] != "https://kubernetes.default.svc" || len(cfg.Data["jwt_validation_pubkeys"].([]any)) != 1 {
		t.Fatalf("read config: %v %v", cfg, err)
	}
	_, err = lg.WriteWithContext(ctx, "auth/jwt/config", map[string]any{"oidc_discovery_url": "https://issuer.invalid"})
	wantStatus(t, "OIDC discovery", err, http.StatusBadRequest)
	sub := "system:serviceaccount:payments:api"
	if _, err := lg.WriteWithContext(ctx, "auth/jwt/role/api", map[string]any{
		"role_type": "jwt", "bound_audiences": "coffer", "bound_subject": sub, "user_claim": "sub",
		"token_policies": []string{"default"}, "token_ttl": "15m",
	}); err != nil {
		t.Fatalf("write role: %v", err)
	}
	role, err := lg.ReadWithContext(ctx, "auth/jwt/role/api")
	if err != nil || role.Data["bound_subject"] != sub || num(t, role.Data["token_ttl"]) != 900 ||
		!slices.Equal(role.Data["bound_audiences"].([]any), []any{"coffer"}) {
		t.Fatalf("read role: %v %v", role, err)
	}
	list, err := lg.ListWithContext(ctx, "auth/jwt/role")
	if err != nil || !slices.Equal(list.Data["keys"].([]any), []any{"api"}) {
		t.Fatalf("list roles: %v %v", list, err)
	}

	good := iss.sign(t, sub)
	forged := newIssuer(t).sign(t, sub)
	for _, n := range c.Nodes() {
		cl := vaultClient(t, c, n, "", false)
		for _, path := range []string{"auth/jwt/login", "auth/kubernetes/login"} {
			sec, err := cl.Logical().WriteWithContext(ctx, path, map[string]any{"role": "api", "jwt": good})
			if err != nil {
				t.Fatalf("%s %s: %v", n.ID, path, err)
			}
			if sec.Auth == nil || sec.Auth.ClientToken == "" || !within(int64(sec.Auth.LeaseDuration), 900, 5) || !slices.Contains(sec.Auth.Policies, "default") {
				t.Fatalf("%s %s: %+v", n.ID, path, sec.Auth)
			}
			_, err = cl.Logical().WriteWithContext(ctx, path, map[string]any{"role": "api", "jwt": forged})
			wantStatus(t, n.ID+" "+path+" forged", err, http.StatusBadRequest)
			_, err = cl.Logical().WriteWithContext(ctx, path, map[string]any{"role": "api"})
			wantStatus(t, n.ID+" "+path+" without jwt", err, http.StatusBadRequest)
		}
	}
	if _, err := lg.DeleteWithContext(ctx, "auth/jwt/role/api"); err != nil {
		t.Fatalf("delete role: %v", err)
	}
	_, err = vaultClient(t, c, leader, "", false).Logical().WriteWithContext(ctx, "auth/jwt/login", map[string]any{"role": "api", "jwt": good})
	wantStatus(t, "login to a deleted role", err, http.StatusBadRequest)
}
