package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// authzFixture is a leader's gateway and Token and Policy services over a
// real state machine and barrier.
type authzFixture struct {
	*kvFixture
	g      *gateway
	tokens *tokenServer
	pols   *policyServer
	root   context.Context
}

func newAuthzFixture(t *testing.T) *authzFixture {
	t.Helper()
	x := newKVFixture(t)
	store := &policyStore{state: x.f, keys: x.keys, logger: hclog.NewNullLogger()}
	g := &gateway{raft: x.raft, state: x.f, keys: x.keys, policies: store, logger: hclog.NewNullLogger()}
	a := &authzFixture{
		kvFixture: x, g: g,
		tokens: &tokenServer{state: x.f, keys: x.keys, props: x.kv.props, policies: store, logger: hclog.NewNullLogger(), now: time.Now, expiry: &expiryQueue{}},
		pols:   &policyServer{store: store, keys: x.keys, props: x.kv.props, logger: hclog.NewNullLogger()},
	}
	k, v, err := tokenEntry(x.keys, "cof.root", []string{rootPolicy}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.kv.props.propose(context.Background(), &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: k, Value: v}}}); err != nil {
		t.Fatal(err)
	}
	a.root = a.as(t, "cof.root")
	return a
}

// as authenticates token and returns the context a handler would get.
func (a *authzFixture) as(t *testing.T, token string) context.Context {
	t.Helper()
	rec, err := a.g.authenticate(bearer(token))
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	return context.WithValue(context.Background(), tokenCtxKey{}, rec)
}

// canRead asks the gateway whether the context's token may read path.
func (a *authzFixture) canRead(ctx context.Context, path string) error {
	r, _ := route.Lookup(pb.KV_Get_FullMethodName)
	return a.g.authorize(ctx, r, &pb.GetRequest{Path: path})
}

// TestForgedPoliciesAreRefused: a compromised peer's log entries cannot
// widen a policy: a plaintext policy is refused by the state machine, and
// one laid out as sealed (another policy's real text moved under this
// name, or sealed for another key) does not open, so the policy is
// skipped and the token gains nothing.
func TestForgedPoliciesAreRefused(t *testing.T) {
	a := newAuthzFixture(t)
	if _, err := a.pols.Write(a.root, &pb.WritePolicyRequest{Name: "app", Policy: `path "secret/data/app/*" { capabilities = ["read"] }`}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.pols.Write(a.root, &pb.WritePolicyRequest{Name: "wide", Policy: `path "secret/*" { capabilities = ["read"] }`}); err != nil {
		t.Fatal(err)
	}
	tk, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Policies: []string{"app"}, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	ctx := a.as(t, tk.Token)
	if err := a.canRead(ctx, "secret/app/db"); err != nil {
		t.Fatalf("the token's own path: %v", err)
	}
	if err := a.canRead(ctx, "secret/other/db"); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("before the forgery: %v", err)
	}
	wideRaw, err := a.f.SysGet(sysPolicyPref + "wide")
	if err != nil {
		t.Fatal(err)
	}
	wideText := []byte(`path "secret/*" { capabilities = ["read"] }`)
	for name, value := range map[string][]byte{
		"plaintext policy":       wideText,
		"another policy, moved":  wideRaw,
		"sealed for another key": mustSealEntry(t, a.keys, sysPolicyPref+"other", wideText),
	} {
		res := forge(t, a.kvFixture, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: sysPolicyPref + "app", Value: value}}})
		if name == "plaintext policy" && !errors.Is(res.Err, fsm.ErrInvalidCommand) {
			t.Errorf("%s: the state machine stored it (%v)", name, res.Err)
		}
		if err := a.canRead(ctx, "secret/other/db"); !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("%s: the forged policy opened another path: %v", name, err)
		}
	}
}

// TestForgedBatchTokensAreRefused: a batch token is only what this
// cluster's barrier sealed under the batch token key: changed bytes, a
// stored entry's sealed value passed off as a token, another cluster's
// token and an expired one are refused.
func TestForgedBatchTokensAreRefused(t *testing.T) {
	a := newAuthzFixture(t)
	good, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Type: "batch", Policies: []string{"default"}, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.g.authenticate(bearer(good.Token)); err != nil {
		t.Fatalf("the real batch token: %v", err)
	}
	rootRec, _ := json.Marshal(batchRecord{Policies: []string{rootPolicy}, Created: 1, Expire: time.Now().Add(time.Hour).Unix()})
	other := seal.New(seal.Options{})
	res, err := seal.Initialize(seal.Config{Shares: 1, Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Unseal(res.Stored, res.WrappedKeyring, res.Shares[0]); err != nil {
		t.Fatal(err)
	}
	defer other.Seal()
	expired, err := encodeBatchToken(a.keys, &batchRecord{Policies: []string{"default"}, Created: 1, Expire: 2})
	if err != nil {
		t.Fatal(err)
	}
	flipped := []byte(good.Token)
	flipped[len(flipped)/2] ^= 1
	enc := func(b []byte) string { return batchTokenPrefix + base64.RawURLEncoding.EncodeToString(b) }
	for name, tok := range map[string]string{
		"a byte changed":             string(flipped),
		"a token record's value":     enc(mustSealEntry(t, a.keys, sysTokenPref+"x", rootRec)),
		"another cluster's token":    enc(mustSealEntry(t, other, batchTokenKey, rootRec)),
		"expired":                    expired,
		"plaintext":                  enc(rootRec),
		"not base64":                 batchTokenPrefix + "!!!",
		"empty":                      batchTokenPrefix,
		"longer than the gateway's":  batchTokenPrefix + string(make([]byte, maxBatchTokenLen)),
		"a service token's form too": "cob" + good.Token[3:] + "x",
	} {
		if rec, err := a.g.authenticate(bearer(tok)); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: authenticated (%+v, %v)", name, rec, err)
		}
	}
}

// TestBatchTokenEndsWithItsParent: a batch token made by a service token
// stops working when that parent is revoked; an orphan one does not.
func TestBatchTokenEndsWithItsParent(t *testing.T) {
	a := newAuthzFixture(t)
	if _, err := a.pols.Write(a.root, &pb.WritePolicyRequest{Name: "maker", Policy: `path "auth/token/create" { capabilities = ["update"] }`}); err != nil {
		t.Fatal(err)
	}
	parent, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Policies: []string{"maker"}, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	child, err := a.tokens.Create(a.as(t, parent.Token), &pb.CreateTokenRequest{Type: "batch"})
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Type: "batch", NoParent: true, Policies: []string{"maker"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.tokens.Create(a.as(t, child.Token), &pb.CreateTokenRequest{}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("a batch token created a token: %v", err)
	}
	if _, err := a.tokens.Revoke(a.root, &pb.RevokeTokenRequest{Token: parent.Token}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.g.authenticate(bearer(child.Token)); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("the batch child of a revoked token: %v", err)
	}
	if _, err := a.g.authenticate(bearer(orphan.Token)); err != nil {
		t.Errorf("the orphan batch token: %v", err)
	}
}

// TestTokenLifetimes: TTLs within the explicit maximum and the parent's
// life, renewal within them, periodic tokens, and policies a child may
// hold.
func TestTokenLifetimes(t *testing.T) {
	a := newAuthzFixture(t)
	now := time.Now()
	a.tokens.now = func() time.Time { return now }
	tk, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{TtlSeconds: 3600, ExplicitMaxTtlSeconds: 5400, Policies: []string{"default"}})
	if err != nil {
		t.Fatal(err)
	}
	if tk.TtlSeconds != 3600 || !tk.Renewable || tk.Accessor == "" || tk.Type != "service" {
		t.Fatalf("created: %+v", tk)
	}
	// 50 minutes later, a renewal by an hour is cut to the explicit maximum.
	now = now.Add(50 * time.Minute)
	r, err := a.tokens.Renew(a.root, &pb.RenewTokenRequest{Token: tk.Token})
	if err != nil {
		t.Fatal(err)
	}
	if r.TtlSeconds != 2400 {
		t.Errorf("renewed TTL %d s, want 2400 (up to the explicit maximum)", r.TtlSeconds)
	}
	per, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{PeriodSeconds: 60, Policies: []string{"default"}})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(50 * time.Second)
	if r, err := a.tokens.Renew(a.root, &pb.RenewTokenRequest{Token: per.Token, IncrementSeconds: 3600}); err != nil || r.TtlSeconds != 60 {
		t.Errorf("periodic renewal: %+v, %v (want 60 s)", r, err)
	}
	// A child never outlives its parent, and holds only its policies.
	if _, err := a.pols.Write(a.root, &pb.WritePolicyRequest{Name: "maker", Policy: `path "auth/token/create" { capabilities = ["update"] }`}); err != nil {
		t.Fatal(err)
	}
	parent, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Policies: []string{"maker"}, TtlSeconds: 100})
	if err != nil {
		t.Fatal(err)
	}
	pctx := a.as(t, parent.Token)
	kid, err := a.tokens.Create(pctx, &pb.CreateTokenRequest{TtlSeconds: 1000})
	if err != nil || kid.ExpireTimeUnix != parent.ExpireTimeUnix {
		t.Errorf("child of a 100 s parent: %+v, %v", kid, err)
	}
	if _, err := a.tokens.Create(pctx, &pb.CreateTokenRequest{Policies: []string{"wider"}}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("a child with a policy its parent lacks: %v", err)
	}
	for name, req := range map[string]*pb.CreateTokenRequest{
		"negative ttl":      {TtlSeconds: -1},
		"unknown type":      {Type: "forever"},
		"batch root":        {Type: "batch", Policies: []string{rootPolicy}},
		"bad policy name":   {Policies: []string{"Has Spaces"}},
		"negative uses":     {NumUses: -1},
		"batch with uses":   {Type: "batch", NumUses: 2},
		"periodic batch":    {Type: "batch", PeriodSeconds: 60},
		"huge display":      {DisplayName: string(make([]byte, 300))},
		"too many policies": {Policies: make([]string, 100)},
	} {
		if _, err := a.tokens.Create(a.root, req); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want an invalid argument", name, err)
		}
	}
}

// FuzzBatchToken: decoding any string as a batch token never panics and
// never yields a token without policies or expiry.
func FuzzBatchToken(f *testing.F) {
	s := seal.New(seal.Options{})
	res, err := seal.Initialize(seal.Config{Shares: 1, Threshold: 1})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := s.Unseal(res.Stored, res.WrappedKeyring, res.Shares[0]); err != nil {
		f.Fatal(err)
	}
	defer s.Seal()
	good, err := encodeBatchToken(s, &batchRecord{Policies: []string{"default"}, Created: 1, Expire: 1 << 40})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(batchTokenPrefix)
	f.Add(batchTokenPrefix + "AAAA")
	f.Add("cof.x")
	f.Fuzz(func(t *testing.T, tok string) {
		rec, err := decodeBatchToken(s, tok)
		if err == nil && (len(rec.Policies) == 0 || rec.Expire == 0) {
			t.Fatalf("decoded an empty token: %+v", rec)
		}
	})
}

// TestTokenRecordCloneKeepsEveryField: clone copies every stored field, so
// that a renewal or a use never drops one (a field added later included).
func TestTokenRecordCloneKeepsEveryField(t *testing.T) {
	var rec tokenRecord
	v := reflect.ValueOf(&rec).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if !v.Type().Field(i).IsExported() {
			continue
		}
		switch f.Kind() {
		case reflect.String:
			f.SetString("x" + v.Type().Field(i).Name)
		case reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"p"}))
		default:
			t.Fatalf("field %s of kind %s: teach this test", v.Type().Field(i).Name, f.Kind())
		}
	}
	a, _ := json.Marshal(&rec)
	b, _ := json.Marshal(rec.clone())
	if string(a) != string(b) {
		t.Fatalf("clone lost a field:\n%s\n%s", a, b)
	}
}

// TestTokenCreateRefusals: a token limited in uses makes no child; a child
// is not written once its parent is revoked (a call authenticated before
// the revocation); a periodic token needs sudo on the create path.
func TestTokenCreateRefusals(t *testing.T) {
	a := newAuthzFixture(t)
	if _, err := a.pols.Write(a.root, &pb.WritePolicyRequest{Name: "maker", Policy: `path "auth/token/create" { capabilities = ["update"] }`}); err != nil {
		t.Fatal(err)
	}
	limited, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Policies: []string{"maker"}, NumUses: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.tokens.Create(a.as(t, limited.Token), &pb.CreateTokenRequest{}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("a child of a token limited in uses: %v", err)
	}

	parent, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Policies: []string{"maker"}, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	before := a.as(t, parent.Token) // authenticated before the revocation
	if _, err := a.tokens.Revoke(a.root, &pb.RevokeTokenRequest{Token: parent.Token}); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"service", "batch"} {
		if _, err := a.tokens.Create(before, &pb.CreateTokenRequest{Type: typ}); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("a %s child of a revoked parent: %v", typ, err)
		}
	}

	maker, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{Policies: []string{"maker"}, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := route.Lookup(pb.Token_Create_FullMethodName)
	ctx := a.as(t, maker.Token)
	if err := a.g.authorize(ctx, r, &pb.CreateTokenRequest{}); err != nil {
		t.Fatalf("a plain child: %v", err)
	}
	if err := a.g.authorize(ctx, r, &pb.CreateTokenRequest{PeriodSeconds: 3600}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("a periodic child without sudo: %v", err)
	}
}

// TestExpiryQueue: the leader removes each expired token once its time is
// over — a renewed one at its new time, a token made after the first scan
// too — reading only what the queue says is due; after the queue is
// dropped (a new leadership, a restore) a scan finds the tokens again.
func TestExpiryQueue(t *testing.T) {
	a := newAuthzFixture(t)
	t0 := time.Now()
	now := t0
	a.tokens.now = func() time.Time { return now }
	mk := func(ttl int64) *pb.TokenInfo {
		tk, err := a.tokens.Create(a.root, &pb.CreateTokenRequest{TtlSeconds: ttl, Policies: []string{"default"}, NoParent: true})
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	live := func(tk *pb.TokenInfo) bool {
		_, err := a.tokens.record(hashToken(tk.Token))
		return err == nil
	}
	pass := func(at time.Duration) int {
		t.Helper()
		now = t0.Add(at)
		n, err := a.tokens.expire(context.Background(), now)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ta, tb := mk(100), mk(200)
	if n := pass(0); n != 0 {
		t.Fatalf("first pass removed %d", n)
	}
	now = t0.Add(50 * time.Second)
	if _, err := a.tokens.Renew(a.root, &pb.RenewTokenRequest{Token: ta.Token, IncrementSeconds: 300}); err != nil {
		t.Fatal(err)
	}
	tc := mk(100) // made after the scan, at 50 s: due at 150 s
	if n := pass(140 * time.Second); n != 0 || !live(ta) || !live(tb) || !live(tc) {
		t.Fatalf("at 140 s: removed %d; renewed token live %v, 200 s token live %v", n, live(ta), live(tb))
	}
	if n := pass(250 * time.Second); n != 2 || live(tb) || live(tc) || !live(ta) {
		t.Fatalf("at 250 s: removed %d (want the 200 s token and the one made after the scan); renewed token live %v", n, live(ta))
	}
	if n := pass(300 * time.Second); n != 0 || !live(ta) {
		t.Fatalf("at 300 s: removed %d, renewed token (due at 350 s) live %v", n, live(ta))
	}
	a.tokens.expiry.invalidate()
	if n := pass(400 * time.Second); n != 1 || live(ta) {
		t.Fatalf("after a rescan at 400 s: removed %d, renewed token live %v", n, live(ta))
	}
}
