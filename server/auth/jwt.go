package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Limits on untrusted input.
const (
	// MaxTokenSize bounds the JWTs ParseToken reads.
	MaxTokenSize = 16 << 10
	// MaxKeySetSize bounds a JWKS document or a list of PEM keys.
	MaxKeySetSize = 1 << 20
	// MaxKeys bounds the keys of one set.
	MaxKeys = 100
	// minRSABits is the smallest RSA key that verifies anything.
	minRSABits = 2048
	// maxShown bounds a claim's value quoted in an error.
	maxShown = 64
)

// DefaultLeeway is the clock skew allowed on exp, nbf and iat.
const DefaultLeeway = 60 * time.Second

// Algorithms are the signature algorithms a token may use: asymmetric
// ones only, so that neither an unsigned token (alg none) nor a token
// "signed" with the public key as an HMAC secret (key confusion) is ever
// checked at all.
var Algorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

// Errors a caller tells apart.
var (
	// ErrUnknownKey means the token names a key id the set does not hold
	// (a remote set may have rotated: fetch it again).
	ErrUnknownKey = errors.New("auth: the token names a key the configured keys do not hold")
	// ErrKeysUnavailable means a remote key set could not be fetched.
	ErrKeysUnavailable = errors.New("auth: the signing keys could not be fetched")
)

// KeySet is a set of public keys that verify signatures.
type KeySet struct {
	keys []jose.JSONWebKey
}

// Len is the number of keys.
func (k *KeySet) Len() int {
	if k == nil {
		return 0
	}
	return len(k.keys)
}

// has reports whether the set holds a key with id kid.
func (k *KeySet) has(kid string) bool {
	if k == nil {
		return false
	}
	for _, key := range k.keys {
		if key.KeyID == kid {
			return true
		}
	}
	return false
}

// candidates are the keys that may have signed a token naming kid: those
// with that id and those without one (PEM keys), or every key when the
// token names none.
func (k *KeySet) candidates(kid string) []jose.JSONWebKey {
	if kid == "" {
		return k.keys
	}
	var out []jose.JSONWebKey
	for _, key := range k.keys {
		if key.KeyID == kid || key.KeyID == "" {
			out = append(out, key)
		}
	}
	return out
}

// ParseJWKS parses a JSON Web Key Set. Only public signing keys are
// accepted: a private or symmetric key in the set refuses the whole set
// (publish public keys only); keys marked for encryption are skipped.
func ParseJWKS(doc []byte) (*KeySet, error) {
	if len(doc) > MaxKeySetSize {
		return nil, fmt.Errorf("auth: the JWKS is %d bytes, more than %d", len(doc), MaxKeySetSize)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("auth: the JWKS is not a JSON key set ({\"keys\": [...]}): %v", jsonError(err))
	}
	if len(set.Keys) > MaxKeys {
		return nil, fmt.Errorf("auth: the JWKS holds %d keys, at most %d", len(set.Keys), MaxKeys)
	}
	out := &KeySet{}
	for i, raw := range set.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("auth: key %d of the JWKS does not parse: %v", i, err)
		}
		if k.Use == "enc" {
			continue
		}
		if err := checkPublic(k.Key); err != nil {
			return nil, fmt.Errorf("auth: key %d (kid %q) of the JWKS: %w", i, shown(k.KeyID), err)
		}
		out.keys = append(out.keys, k)
	}
	if len(out.keys) == 0 {
		return nil, errors.New("auth: the JWKS holds no signing key")
	}
	return out, nil
}

// ParsePEMKeys parses PEM public keys ("PUBLIC KEY", "RSA PUBLIC KEY", or
// the key of a "CERTIFICATE"); one string may hold several blocks.
func ParsePEMKeys(pems []string) (*KeySet, error) {
	total := 0
	out := &KeySet{}
	for _, p := range pems {
		total += len(p)
		if total > MaxKeySetSize {
			return nil, fmt.Errorf("auth: the PEM keys are more than %d bytes", MaxKeySetSize)
		}
		rest := []byte(p)
		found := false
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			found = true
			key, err := pemKey(block)
			if err != nil {
				return nil, err
			}
			if err := checkPublic(key); err != nil {
				return nil, fmt.Errorf("auth: PEM block %q: %w", block.Type, err)
			}
			out.keys = append(out.keys, jose.JSONWebKey{Key: key})
			if len(out.keys) > MaxKeys {
				return nil, fmt.Errorf("auth: more than %d PEM keys", MaxKeys)
			}
		}
		if !found || len(bytes.TrimSpace(rest)) > 0 {
			return nil, errors.New("auth: a public key is not PEM (-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----)")
		}
	}
	if len(out.keys) == 0 {
		return nil, errors.New("auth: no PEM public key given")
	}
	return out, nil
}

// pemKey decodes the public key of one PEM block.
func pemKey(b *pem.Block) (any, error) {
	switch b.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("auth: a PUBLIC KEY block does not parse: %v", err)
		}
		return k, nil
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("auth: an RSA PUBLIC KEY block does not parse: %v", err)
		}
		return k, nil
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("auth: a CERTIFICATE block does not parse: %v", err)
		}
		return c.PublicKey, nil
	}
	if strings.Contains(b.Type, "PRIVATE") {
		return nil, fmt.Errorf("auth: a %s block was given: give the public key only", b.Type)
	}
	return nil, fmt.Errorf("auth: PEM block %q is not a public key", b.Type)
}

// checkPublic accepts RSA (2048 bits or more), ECDSA and Ed25519 public
// keys, and nothing else.
func checkPublic(key any) error {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < minRSABits {
			return fmt.Errorf("an RSA key of fewer than %d bits is refused", minRSABits)
		}
		return nil
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return nil
	case []byte:
		return errors.New("a symmetric key is refused: only public keys verify tokens")
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return errors.New("a private key was given: publish the public key only")
	}
	return fmt.Errorf("a key of type %T is not accepted", key)
}

// Token is a JWT whose signature has not been checked yet.
type Token struct {
	jws *jose.JSONWebSignature
	// KeyID is the kid of its header ("" when it names none).
	KeyID string
	// Algorithm is the alg of its header.
	Algorithm string
}

// ParseToken parses a signed JWT in compact form. It refuses, before any
// key is looked at, what is not signed with one of Algorithms.
func ParseToken(raw string) (*Token, error) {
	raw = strings.TrimSpace(raw)
	switch {
	case raw == "":
		return nil, errors.New("auth: the jwt is empty")
	case len(raw) > MaxTokenSize:
		return nil, fmt.Errorf("auth: the jwt is %d bytes, more than %d", len(raw), MaxTokenSize)
	}
	parts := strings.Split(raw, ".")
	switch len(parts) {
	case 3:
	case 5:
		return nil, errors.New("auth: the jwt is encrypted (JWE): only signed tokens are accepted")
	default:
		return nil, errors.New("auth: the jwt is not a signed token in compact form (three base64url parts joined by dots)")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, errors.New("auth: the jwt's header is not base64url")
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, errors.New("auth: the jwt's header is not a JSON object")
	}
	if err := checkAlgorithm(h.Alg); err != nil {
		return nil, err
	}
	jws, err := jose.ParseSignedCompact(raw, Algorithms)
	if err != nil {
		return nil, fmt.Errorf("auth: the jwt does not parse: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("auth: the jwt must carry exactly one signature")
	}
	return &Token{jws: jws, KeyID: jws.Signatures[0].Header.KeyID, Algorithm: h.Alg}, nil
}

// checkAlgorithm explains why a header's alg is refused.
func checkAlgorithm(alg string) error {
	if slices.Contains(Algorithms, jose.SignatureAlgorithm(alg)) {
		return nil
	}
	switch {
	case alg == "" || strings.EqualFold(alg, "none"):
		return errors.New("auth: the jwt is not signed (alg none): unsigned tokens are refused")
	case strings.HasPrefix(strings.ToUpper(alg), "HS"):
		return fmt.Errorf("auth: the jwt is signed with %s, a shared-secret algorithm: only asymmetric signatures (RS*, PS*, ES*, EdDSA) are accepted", shown(alg))
	}
	return fmt.Errorf("auth: the jwt's algorithm %q is not accepted: use RS*, PS*, ES* or EdDSA", shown(alg))
}

// Verify checks the token's signature with the keys (those with its kid,
// or all when it names none) and returns its claims.
func (t *Token) Verify(keys *KeySet) (*Claims, error) {
	if keys.Len() == 0 {
		return nil, errors.New("auth: no key is configured to verify the jwt")
	}
	cands := keys.candidates(t.KeyID)
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w (kid %q)", ErrUnknownKey, shown(t.KeyID))
	}
	for _, k := range cands {
		payload, err := t.jws.Verify(k.Key)
		if err != nil {
			continue
		}
		return decodeClaims(payload)
	}
	return nil, errors.New("auth: the jwt's signature does not verify with the configured keys")
}

// Claims are a verified token's claims.
type Claims struct {
	Issuer    string
	Subject   string
	Audience  []string
	Expiry    *time.Time
	NotBefore *time.Time
	IssuedAt  *time.Time
	all       map[string]any
}

// decodeClaims decodes a verified payload.
func decodeClaims(payload []byte) (*Claims, error) {
	var std jwt.Claims
	if err := json.Unmarshal(payload, &std); err != nil {
		return nil, fmt.Errorf("auth: the jwt's registered claims do not decode: %v", jsonError(err))
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var all map[string]any
	if err := dec.Decode(&all); err != nil || all == nil {
		return nil, errors.New("auth: the jwt's claims are not a JSON object")
	}
	c := &Claims{Issuer: std.Issuer, Subject: std.Subject, Audience: []string(std.Audience), all: all}
	c.Expiry, c.NotBefore, c.IssuedAt = timeOf(std.Expiry), timeOf(std.NotBefore), timeOf(std.IssuedAt)
	return c, nil
}

func timeOf(d *jwt.NumericDate) *time.Time {
	if d == nil {
		return nil
	}
	t := d.Time()
	return &t
}

// Expect is what a role demands of a token's claims.
type Expect struct {
	// Issuer, when set, must be the token's iss.
	Issuer string
	// Audiences: the token's aud must name at least one (required).
	Audiences []string
	// Subject, when set, must be the token's sub.
	Subject string
	// Claims: each must have this value (a list claim: one of its items).
	Claims map[string]string
	// Leeway is the clock skew allowed (0: DefaultLeeway).
	Leeway time.Duration
}

// Check checks the claims against e at now: exp is required, nbf and iat
// must not lie in the future, and iss, aud, sub and the bound claims must
// match. The error names the first claim that does not.
func (c *Claims) Check(e Expect, now time.Time) error {
	leeway := e.Leeway
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	switch {
	case c.Expiry == nil:
		return errors.New("auth: the jwt has no exp (expiry) claim: tokens that never expire are refused")
	case now.After(c.Expiry.Add(leeway)):
		return fmt.Errorf("auth: the jwt expired at %s", c.Expiry.UTC().Format(time.RFC3339))
	case c.NotBefore != nil && now.Add(leeway).Before(*c.NotBefore):
		return fmt.Errorf("auth: the jwt is not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	case c.IssuedAt != nil && now.Add(leeway).Before(*c.IssuedAt):
		return fmt.Errorf("auth: the jwt was issued in the future (%s): check the issuer's clock", c.IssuedAt.UTC().Format(time.RFC3339))
	case e.Issuer != "" && c.Issuer != e.Issuer:
		return fmt.Errorf("auth: the token's issuer %q is not the bound issuer %q", shown(c.Issuer), e.Issuer)
	}
	if len(e.Audiences) == 0 {
		return errors.New("auth: the role binds no audience: give it bound_audiences")
	}
	if !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(e.Audiences, a) }) {
		return fmt.Errorf("auth: the token's audience %v is not among the role's bound audiences %v", shownList(c.Audience), e.Audiences)
	}
	if e.Subject != "" && c.Subject != e.Subject {
		return fmt.Errorf("auth: the token's subject %q is not the role's bound subject %q", shown(c.Subject), e.Subject)
	}
	names := make([]string, 0, len(e.Claims))
	for k := range e.Claims {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		want := e.Claims[k]
		v, ok := c.all[k]
		if !ok {
			return fmt.Errorf("auth: the token has no %q claim, which the role binds to %q", k, want)
		}
		if !claimHas(v, want) {
			return fmt.Errorf("auth: the token's %q claim is %s, not %q as the role binds it", k, shownValue(v), want)
		}
	}
	return nil
}

// Value returns claim name as a string: a string, a number or a boolean
// (false when it is absent or of another kind).
func (c *Claims) Value(name string) (string, bool) {
	v, ok := c.all[name]
	if !ok {
		return "", false
	}
	return scalar(v)
}

// claimHas reports whether claim value v is want, or a list holding it.
func claimHas(v any, want string) bool {
	if list, ok := v.([]any); ok {
		for _, item := range list {
			if s, ok := scalar(item); ok && s == want {
				return true
			}
		}
		return false
	}
	s, ok := scalar(v)
	return ok && s == want
}

// scalar is the string form of a string, number or boolean claim.
func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		if x {
			return "true", true
		}
		return "false", true
	}
	return "", false
}

// shown cuts an untrusted value quoted in an error.
func shown(s string) string {
	if len(s) > maxShown {
		return s[:maxShown] + "…"
	}
	return s
}

func shownList(l []string) []string {
	if len(l) > 8 {
		l = append(l[:8:8], "…")
	}
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = shown(s)
	}
	return out
}

func shownValue(v any) string {
	if s, ok := scalar(v); ok {
		return fmt.Sprintf("%q", shown(s))
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "unreadable"
	}
	return shown(string(b))
}

// jsonError keeps the gist of a JSON error without echoing input.
func jsonError(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type (%s)", te.Field, te.Value)
	}
	return "not JSON"
}
