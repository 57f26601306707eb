package auth

import (
	"encoding/base64"
	"testing"
	"time"
)

// FuzzJWTLogin feeds untrusted tokens and key sets through what a JWT
// login does with them — parse the key set, parse the token, verify it,
// check its claims — which must never panic, and must never accept a
// token that is not signed by a key of the set.
func FuzzJWTLogin(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	iss := newECIssuer(f, "k1")
	jwks := jwksOf(f, iss)
	tok := iss.sign(f, good(now), map[string]any{"team": "payments"})
	enc := base64.RawURLEncoding.EncodeToString
	f.Add(tok, jwks)
	f.Add(enc([]byte(`{"alg":"none"}`))+"."+enc([]byte(`{"exp":1}`))+".", jwks)
	f.Add(enc([]byte(`{"alg":"ES256","kid":"k1"}`))+".e30.", []byte(`{"keys":[{"kty":"EC"}]}`))
	f.Add("a.b.c", []byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Add(tok, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))
	f.Fuzz(func(t *testing.T, raw string, doc []byte) {
		keys, err := ParseJWKS(doc)
		if err != nil {
			keys = nil
		}
		tk, err := ParseToken(raw)
		if err != nil {
			return
		}
		if keys == nil {
			keys, _ = ParseJWKS(jwks)
		}
		claims, err := tk.Verify(keys)
		if err != nil {
			return
		}
		if tk.Algorithm == "none" || tk.Algorithm == "" {
			t.Fatalf("an unsigned token verified: %q", raw)
		}
		_ = claims.Check(Expect{Issuer: "https://iss", Audiences: []string{"vault"}, Claims: map[string]string{"team": "payments"}}, now)
		claims.Value("sub")
	})
}
