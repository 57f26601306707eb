package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestVerifyAccepts: tokens of every accepted key type verify against a
// JWKS and against PEM keys, with or without a kid, and their claims
// pass the role's checks.
func TestVerifyAccepts(t *testing.T) {
	now := time.Now()
	for _, iss := range []*issuer{newRSAIssuer(t, "r1"), newECIssuer(t, "e1"), newEdIssuer(t, "d1")} {
		t.Run(string(iss.alg), func(t *testing.T) {
			other := newECIssuer(t, "other")
			set, err := ParseJWKS(jwksOf(t, other, iss))
			if err != nil {
				t.Fatal(err)
			}
			pems, err := ParsePEMKeys([]string{other.pem(t) + iss.pem(t)})
			if err != nil || pems.Len() != 2 {
				t.Fatalf("PEM keys: %v (%d)", err, pems.Len())
			}
			extra := map[string]any{"groups": []string{"dev", "ops"}, "team": "payments", "level": 3}
			for name, keys := range map[string]*KeySet{"jwks": set, "pem": pems} {
				tok, err := ParseToken(iss.sign(t, good(now), extra))
				if err != nil {
					t.Fatal(err)
				}
				c, err := tok.Verify(keys)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				err = c.Check(Expect{Issuer: "https://iss", Audiences: []string{"other", "vault"}, Subject: good(now).Subject,
					Claims: map[string]string{"groups": "ops", "team": "payments", "level": "3"}}, now)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if v, ok := c.Value("sub"); !ok || v != good(now).Subject {
					t.Fatalf("sub = %q, %v", v, ok)
				}
			}
			// Without a kid every key is tried.
			anon := *iss
			anon.kid = ""
			tok, err := ParseToken(anon.sign(t, good(now), nil))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tok.Verify(set); err != nil {
				t.Fatalf("no kid: %v", err)
			}
		})
	}
}

// TestTokenRefusals: each forged, malformed or unfit token is refused
// with one line saying why.
func TestTokenRefusals(t *testing.T) {
	now := time.Now()
	iss := newRSAIssuer(t, "k1")
	keys, err := ParseJWKS(jwksOf(t, iss))
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(good(now))
	// An impostor signs with its own key under the issuer's kid.
	impostor := newRSAIssuer(t, "k1")
	// Key confusion: HS256 with the issuer's public key (as PEM) as the
	// HMAC secret, which a verifier keyed by "the key" might accept.
	hsHeader := enc([]byte(`{"alg":"HS256","typ":"JWT","kid":"k1"}`))
	mac := hmac.New(sha256.New, []byte(iss.pem(t)))
	mac.Write([]byte(hsHeader + "." + enc(payload)))
	confused := hsHeader + "." + enc(payload) + "." + enc(mac.Sum(nil))
	signed := iss.sign(t, good(now), nil)
	parts := strings.Split(signed, ".")
	tampered := parts[0] + "." + enc([]byte(strings.Replace(string(payload), "payments", "admin", 1))) + "." + parts[2]

	for _, c := range []struct {
		name, token, want string
	}{
		{"alg none", enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(payload) + ".", "alg none"},
		{"alg NONE", enc([]byte(`{"alg":"NONE"}`)) + "." + enc(payload) + ".", "alg none"},
		{"no alg", enc([]byte(`{"typ":"JWT"}`)) + "." + enc(payload) + ".", "alg none"},
		{"HS256 with the public key as secret", confused, "shared-secret algorithm"},
		{"unknown algorithm", enc([]byte(`{"alg":"XX999"}`)) + "." + enc(payload) + ".sig", "not accepted"},
		{"signed by another key under the same kid", impostor.sign(t, good(now), nil), "signature does not verify"},
		{"payload changed after signing", tampered, "signature does not verify"},
		{"signature cut", parts[0] + "." + parts[1] + ".", "signature does not verify"},
		{"two parts", parts[0] + "." + parts[1], "compact form"},
		{"encrypted", "a.b.c.d.e", "encrypted"},
		{"header not base64", "!!." + parts[1] + "." + parts[2], "header is not base64url"},
		{"header not JSON", enc([]byte("[")) + "." + parts[1] + "." + parts[2], "header is not a JSON object"},
		{"empty", "", "empty"},
		{"too large", strings.Repeat("a", MaxTokenSize+1), "more than"},
	} {
		tok, err := ParseToken(c.token)
		if err == nil {
			_, err = tok.Verify(keys)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", c.name, err, c.want)
		}
		if err != nil && len(c.token) > 20 && strings.Contains(err.Error(), c.token) {
			t.Errorf("%s: the error quotes the token", c.name)
		}
	}
	// A kid the set does not hold is told apart (a remote set may have
	// rotated).
	tok, err := ParseToken(newRSAIssuer(t, "k2").sign(t, good(now), nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Verify(keys); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("unknown kid: %v", err)
	}
}

// TestClaimRefusals: a verified token whose claims do not fit the role is
// refused with the claim named.
func TestClaimRefusals(t *testing.T) {
	now := time.Now()
	iss := newECIssuer(t, "k")
	keys, err := ParseJWKS(jwksOf(t, iss))
	if err != nil {
		t.Fatal(err)
	}
	role := Expect{Issuer: "https://iss", Audiences: []string{"vault"}, Subject: good(now).Subject, Claims: map[string]string{"team": "payments"}}
	with := func(f func(*jwt.Claims)) jwt.Claims {
		c := good(now)
		f(&c)
		return c
	}
	team := map[string]any{"team": "payments"}
	for _, c := range []struct {
		name  string
		std   jwt.Claims
		extra map[string]any
		want  string
	}{
		{"expired", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-2 * time.Minute)) }), team, "expired at"},
		{"no exp", with(func(c *jwt.Claims) { c.Expiry = nil }), team, "no exp"},
		{"not yet valid", with(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(5 * time.Minute)) }), team, "not valid before"},
		{"issued in the future", with(func(c *jwt.Claims) { c.IssuedAt = jwt.NewNumericDate(now.Add(5 * time.Minute)) }), team, "issued in the future"},
		{"wrong issuer", with(func(c *jwt.Claims) { c.Issuer = "https://evil" }), team, `issuer "https://evil" is not the bound issuer "https://iss"`},
		{"wrong audience", with(func(c *jwt.Claims) { c.Audience = jwt.Audience{"x"} }), team, "the token's audience [x] is not among the role's bound audiences [vault]"},
		{"no audience", with(func(c *jwt.Claims) { c.Audience = nil }), team, "audience [] is not among"},
		{"wrong subject", with(func(c *jwt.Claims) { c.Subject = "someone" }), team, "subject"},
		{"bound claim missing", good(now), nil, `no "team" claim`},
		{"bound claim differs", good(now), map[string]any{"team": "ops"}, `"team" claim is "ops"`},
		{"bound claim is an object", good(now), map[string]any{"team": map[string]any{"a": 1}}, `"team" claim is {"a":1}`},
	} {
		tok, err := ParseToken(iss.sign(t, c.std, c.extra))
		if err != nil {
			t.Fatal(err)
		}
		claims, err := tok.Verify(keys)
		if err != nil {
			t.Fatal(err)
		}
		err = claims.Check(role, now)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// Within the leeway, a token just expired still passes.
	tok, _ := ParseToken(iss.sign(t, with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-30 * time.Second)) }), team))
	claims, err := tok.Verify(keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := claims.Check(role, now); err != nil {
		t.Errorf("30 s past exp, within the leeway: %v", err)
	}
	if err := claims.Check(Expect{Audiences: nil}, now); err == nil || !strings.Contains(err.Error(), "binds no audience") {
		t.Errorf("a role without audiences: %v", err)
	}
}

// TestKeySetRefusals: only public signing keys make a key set.
func TestKeySetRefusals(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	marshal := func(keys ...jose.JSONWebKey) []byte {
		b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name string
		doc  []byte
		want string
	}{
		{"private key", marshal(jose.JSONWebKey{Key: priv, KeyID: "p"}), "private key"},
		{"symmetric key", marshal(jose.JSONWebKey{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "s", Algorithm: "HS256"}), "symmetric key"},
		{"small RSA", marshal(jose.JSONWebKey{Key: &small.PublicKey, KeyID: "x"}), "fewer than 2048 bits"},
		{"encryption keys only", marshal(jose.JSONWebKey{Key: &priv.PublicKey, KeyID: "e", Use: "enc"}), "no signing key"},
		{"not JSON", []byte("{"), "not a JSON key set"},
		{"keys not a list", []byte(`{"keys": 3}`), "not a JSON key set"},
		{"empty", []byte(`{"keys": []}`), "no signing key"},
		{"too large", make([]byte, MaxKeySetSize+1), "more than"},
	} {
		if _, err := ParseJWKS(c.doc); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	for _, c := range []struct {
		name string
		pems []string
		want string
	}{
		{"private key", []string{string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}, "give the public key only"},
		{"garbage", []string{"not pem"}, "not PEM"},
		{"broken block", []string{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("x")}))}, "does not parse"},
		{"none", nil, "no PEM public key"},
	} {
		if _, err := ParsePEMKeys(c.pems); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PEM %s: %v, want %q", c.name, err, c.want)
		}
	}
}
