package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// issuer is a test token issuer: a key pair and its public key set.
type issuer struct {
	alg  jose.SignatureAlgorithm
	kid  string
	priv crypto.Signer
}

func newRSAIssuer(t testing.TB, kid string) *issuer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{alg: jose.RS256, kid: kid, priv: k}
}

func newECIssuer(t testing.TB, kid string) *issuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{alg: jose.ES256, kid: kid, priv: k}
}

func newEdIssuer(t testing.TB, kid string) *issuer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{alg: jose.EdDSA, kid: kid, priv: k}
}

// jwks is the issuer's public key set as JSON.
func jwksOf(t testing.TB, iss ...*issuer) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, i := range iss {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: i.priv.Public(), KeyID: i.kid, Algorithm: string(i.alg), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pemOf is the issuer's public key as PEM.
func (i *issuer) pem(t testing.TB) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(i.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// sign makes a token with the standard claims std and extra claims.
func (i *issuer) sign(t testing.TB, std jwt.Claims, extra map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if i.kid != "" {
		opts = opts.WithHeader("kid", i.kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: i.alg, Key: i.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b := jwt.Signed(s).Claims(std)
	if extra != nil {
		b = b.Claims(extra)
	}
	tok, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// good is a set of claims a role binding aud "vault", iss "https://iss"
// accepts at now.
func good(now time.Time) jwt.Claims {
	return jwt.Claims{
		Issuer:   "https://iss",
		Subject:  "system:serviceaccount:payments:api",
		Audience: jwt.Audience{"vault"},
		Expiry:   jwt.NewNumericDate(now.Add(10 * time.Minute)),
		IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)),
	}
}
