package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/fsm"
	"coffer/internal/tlsutil"
	"coffer/replication"
)

// fakeLink stands in for the link to a leader in the handler tests: it
// records what a follower forwards (the integration tests forward for
// real).
type fakeLink struct {
	known     bool
	mu        sync.Mutex
	forwarded int
	md        map[string]string
}

func (f *fakeLink) forward(ctx context.Context, _ route.Route, _ proto.Message) (any, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forwarded++
	f.md = forwardMetadata(ctx)
	return nil, true, withMessage(replication.ErrNoLeader, "forwarded to the leader (test)")
}

func (f *fakeLink) leaderKnown() bool { return f.known }

func (f *fakeLink) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forwarded
}

// loginFixture is a leader's Login service and login methods over a real
// state machine and barrier.
type loginFixture struct {
	*authzFixture
	login   *loginServer
	approle *appRoles
	jwt     *jwtRoles
	cert    *certRoles
	link    *fakeLink
}

func newLoginFixture(t *testing.T) *loginFixture {
	t.Helper()
	a := newAuthzFixture(t)
	store := sealedJSON{state: a.f, keys: a.keys}
	x := &loginFixture{authzFixture: a, link: &fakeLink{known: true}}
	x.approle = &appRoles{store: store, props: a.kv.props, locks: &keyLocks{}, logger: hclog.NewNullLogger(), now: time.Now}
	x.jwt = &jwtRoles{store: store, props: a.kv.props, logger: hclog.NewNullLogger()}
	x.cert = &certRoles{store: store, props: a.kv.props, logger: hclog.NewNullLogger()}
	t.Cleanup(x.jwt.close)
	x.login = &loginServer{
		methods: map[string]loginMethod{"approle": x.approle, "jwt": x.jwt, "cert": x.cert},
		tokens:  a.tokens, raft: a.raft, link: x.link, logger: hclog.NewNullLogger(),
	}
	if _, err := a.pols.Write(a.root, &pb.WritePolicyRequest{Name: "app", Policy: `path "secret/data/app/*" { capabilities = ["read"] }`}); err != nil {
		t.Fatal(err)
	}
	return x
}

// from is a call's context as it reaches a handler from addr.
func from(addr string) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(addr), Port: 40000}})
}

// sysDump is every entry of the sys table.
func sysDump(t *testing.T, f *fsm.FSM) map[string]string {
	t.Helper()
	keys, err := f.SysList("")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		v, err := f.SysGet(k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = string(v)
	}
	return out
}

// refused fails unless err has code and one line containing want, names
// none of secrets, and the sys table is as before.
func (x *loginFixture) refused(t *testing.T, name string, err error, code codes.Code, want string, before map[string]string, secrets ...string) {
	t.Helper()
	st := status.Convert(toStatus(err))
	switch {
	case err == nil:
		t.Errorf("%s: the login succeeded", name)
		return
	case st.Code() != code:
		t.Errorf("%s: code %s (%v), want %s", name, st.Code(), err, code)
	case !strings.Contains(st.Message(), want) || strings.Contains(st.Message(), "\n"):
		t.Errorf("%s: %q, want one line with %q", name, st.Message(), want)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(st.Message(), s) {
			t.Errorf("%s: the error holds a credential: %q", name, st.Message())
		}
	}
	if after := sysDump(t, x.f); !mapsEqual(before, after) {
		t.Errorf("%s: the refused login changed the state", name)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// appRole writes an AppRole role and returns its role_id.
func (x *loginFixture) appRole(t *testing.T, r *pb.AppRole) string {
	t.Helper()
	if _, err := x.approle.WriteRole(x.root, r); err != nil {
		t.Fatalf("write role %s: %v", r.Name, err)
	}
	id, err := x.approle.ReadRoleID(x.root, &pb.AuthRoleRequest{Name: r.Name})
	if err != nil {
		t.Fatal(err)
	}
	return id.GetRoleId()
}

// secretID makes a secret_id of role.
func (x *loginFixture) secretID(t *testing.T, role string) *pb.SecretIDResponse {
	t.Helper()
	s, err := x.approle.GenerateSecretID(x.root, &pb.AuthRoleRequest{Name: role})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func approleLogin(roleID, secret string) *pb.LoginRequest {
	return &pb.LoginRequest{Method: "approle", Data: map[string]string{"role_id": roleID, "secret_id": secret}}
}

// TestAppRoleLogin: a secret_id logs in to an orphan token with the
// role's policies (default added), TTL, type and display name; a batch
// login writes nothing; a secret_id with two uses logs in twice and is
// gone; the secret_id is stored only hashed.
func TestAppRoleLogin(t *testing.T) {
	x := newLoginFixture(t)
	ctx := from("10.1.2.3")
	svcID := x.appRole(t, &pb.AppRole{Name: "web", Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 600, MaxTtlSeconds: 3600}})
	s := x.secretID(t, "web")
	if s.GetSecretId() == "" || s.GetSecretIdAccessor() == "" {
		t.Fatalf("secret_id: %+v", s)
	}
	for k, v := range sysDump(t, x.f) {
		if strings.Contains(k+v, s.GetSecretId()) || strings.Contains(k+v, svcID) {
			t.Fatalf("the state holds a credential in clear at %s", k)
		}
	}
	tk, err := x.login.Login(ctx, approleLogin(svcID, s.GetSecretId()))
	if err != nil {
		t.Fatal(err)
	}
	if tk.GetType() != "service" || !tk.GetOrphan() || !slices.Equal(tk.GetPolicies(), []string{"app", "default"}) ||
		tk.GetDisplayName() != "approle-web" || tk.GetTtlSeconds() != 600 || !tk.GetRenewable() || tk.GetRaftIndex() == 0 {
		t.Fatalf("service token: %+v", tk)
	}
	if _, err := x.g.authenticate(bearer(tk.GetToken())); err != nil {
		t.Fatalf("the token does not authenticate: %v", err)
	}
	// Renewal stays within the role's max TTL.
	r, err := x.tokens.Renew(x.as(t, tk.GetToken()), &pb.RenewTokenRequest{IncrementSeconds: 7200})
	if err != nil || r.GetTtlSeconds() > 3600 {
		t.Fatalf("renewal past token_max_ttl: %+v, %v", r, err)
	}

	batchID := x.appRole(t, &pb.AppRole{Name: "batch", Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch", NoDefaultPolicy: true}})
	bs := x.secretID(t, "batch")
	before := sysDump(t, x.f)
	bt, err := x.login.Login(ctx, approleLogin(batchID, bs.GetSecretId()))
	if err != nil {
		t.Fatal(err)
	}
	if bt.GetType() != "batch" || !slices.Equal(bt.GetPolicies(), []string{"app"}) || bt.GetRaftIndex() != 0 {
		t.Fatalf("batch token: %+v", bt)
	}
	if !mapsEqual(before, sysDump(t, x.f)) {
		t.Fatal("a batch login without a use limit wrote to the state")
	}
	if _, err := x.g.authenticate(bearer(bt.GetToken())); err != nil {
		t.Fatalf("the batch token does not authenticate: %v", err)
	}

	twiceID := x.appRole(t, &pb.AppRole{Name: "twice", Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}, SecretIdNumUses: 2})
	ts := x.secretID(t, "twice")
	for i := range 2 {
		if tk, err := x.login.Login(ctx, approleLogin(twiceID, ts.GetSecretId())); err != nil || tk.GetRaftIndex() == 0 {
			t.Fatalf("use %d: %+v, %v (a use limit is spent through the log)", i+1, tk, err)
		}
	}
	before = sysDump(t, x.f)
	_, err = x.login.Login(ctx, approleLogin(twiceID, ts.GetSecretId()))
	x.refused(t, "third use", err, codes.PermissionDenied, "invalid role_id or secret_id", before, ts.GetSecretId())
	if keys, _ := x.f.SysList(sysSecretIDPref + "twice/"); len(keys) != 0 {
		t.Fatalf("a used-up secret_id is still stored: %v", keys)
	}
	if _, err := x.f.SysGet(sysSecretIDAccessorPref + ts.GetSecretIdAccessor()); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("a used-up secret_id's accessor is still stored: %v", err)
	}
}

// TestAppRoleRefusals: every bad credential is refused with one line,
// never naming the credential, and changes nothing.
func TestAppRoleRefusals(t *testing.T) {
	x := newLoginFixture(t)
	now := time.Now()
	x.tokens.now = func() time.Time { return now }
	webID := x.appRole(t, &pb.AppRole{Name: "web", Token: &pb.RoleToken{Policies: []string{"app"}}, SecretIdTtlSeconds: 60})
	otherID := x.appRole(t, &pb.AppRole{Name: "other", Token: &pb.RoleToken{Policies: []string{"app"}}})
	x.appRole(t, &pb.AppRole{Name: "lan", Token: &pb.RoleToken{Policies: []string{"app"}}, SecretIdBoundCidrs: []string{"10.0.0.0/8"}})
	lanID := x.appRole(t, &pb.AppRole{Name: "lan", Token: &pb.RoleToken{Policies: []string{"app"}}, SecretIdBoundCidrs: []string{"10.0.0.0/8"}})
	onceID := x.appRole(t, &pb.AppRole{Name: "once", Token: &pb.RoleToken{Policies: []string{"app"}}, SecretIdNumUses: 1})
	web, lan, once, gone := x.secretID(t, "web"), x.secretID(t, "lan"), x.secretID(t, "once"), x.secretID(t, "other")
	if _, err := x.login.Login(from("10.0.0.1"), approleLogin(onceID, once.GetSecretId())); err != nil {
		t.Fatal(err)
	}
	if _, err := x.approle.DestroySecretID(x.root, &pb.DestroySecretIDRequest{Name: "other", SecretIdAccessor: gone.GetSecretIdAccessor()}); err != nil {
		t.Fatal(err)
	}
	later := now.Add(2 * time.Minute)
	for _, c := range []struct {
		name       string
		addr       string
		req        *pb.LoginRequest
		at         time.Time
		code       codes.Code
		want       string
		credential string
	}{
		{"wrong secret_id", "10.0.0.1", approleLogin(webID, web.GetSecretId()+"x"), now, codes.PermissionDenied, "invalid role_id or secret_id", web.GetSecretId()},
		{"wrong role_id", "10.0.0.1", approleLogin(webID+"x", web.GetSecretId()), now, codes.PermissionDenied, "invalid role_id or secret_id", web.GetSecretId()},
		{"another role's secret_id", "10.0.0.1", approleLogin(otherID, web.GetSecretId()), now, codes.PermissionDenied, "invalid role_id or secret_id", web.GetSecretId()},
		{"expired secret_id", "10.0.0.1", approleLogin(webID, web.GetSecretId()), later, codes.PermissionDenied, "secret_id expired at", web.GetSecretId()},
		{"used-up secret_id", "10.0.0.1", approleLogin(onceID, once.GetSecretId()), now, codes.PermissionDenied, "invalid role_id or secret_id", once.GetSecretId()},
		{"destroyed secret_id", "10.0.0.1", approleLogin(otherID, gone.GetSecretId()), now, codes.PermissionDenied, "invalid role_id or secret_id", gone.GetSecretId()},
		{"outside the CIDR binding", "192.168.1.1", approleLogin(lanID, lan.GetSecretId()), now, codes.PermissionDenied, "bound CIDR blocks, and this login comes from 192.168.1.1", lan.GetSecretId()},
		{"no secret_id", "10.0.0.1", approleLogin(webID, ""), now, codes.InvalidArgument, "give secret_id", ""},
		{"no role_id", "10.0.0.1", approleLogin("", web.GetSecretId()), now, codes.InvalidArgument, "give role_id", web.GetSecretId()},
		{"long secret_id", "10.0.0.1", approleLogin(webID, strings.Repeat("s", 4096)), now, codes.PermissionDenied, "invalid role_id or secret_id", ""},
		{"unknown method", "10.0.0.1", &pb.LoginRequest{Method: "ldap"}, now, codes.InvalidArgument, `login method "ldap" is unknown`, ""},
	} {
		at := c.at
		x.tokens.now = func() time.Time { return at }
		before := sysDump(t, x.f)
		_, err := x.login.Login(from(c.addr), c.req)
		x.refused(t, c.name, err, c.code, c.want, before, c.credential)
	}
	x.tokens.now = func() time.Time { return now }
	if _, err := x.login.Login(from("10.200.0.1"), approleLogin(lanID, lan.GetSecretId())); err != nil {
		t.Errorf("inside the CIDR binding: %v", err)
	}
	if n := x.link.count(); n != 0 {
		t.Errorf("the leader forwarded %d logins", n)
	}
}

// TestAppRoleRoleValidation: a role is refused with one line naming the
// setting that is wrong.
func TestAppRoleRoleValidation(t *testing.T) {
	x := newLoginFixture(t)
	for _, c := range []struct {
		name string
		role *pb.AppRole
		want string
	}{
		{"root policy", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"root"}}}, "never makes a root token"},
		{"ttl over max", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 600, MaxTtlSeconds: 60}}, "longer than token_max_ttl"},
		{"negative ttl", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: -1}}, "must not be negative"},
		{"bad type", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"app"}, Type: "weird"}}, `token_type "weird" is unknown`},
		{"bad token CIDR", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"app"}, BoundCidrs: []string{"10.0.0.0/99"}}}, "token_bound_cidrs"},
		{"bad secret CIDR", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"app"}}, SecretIdBoundCidrs: []string{"x"}}, "secret_id_bound_cidrs"},
		{"slash in name", &pb.AppRole{Name: "a/b", Token: &pb.RoleToken{Policies: []string{"app"}}}, "slash"},
		{"empty name", &pb.AppRole{Token: &pb.RoleToken{Policies: []string{"app"}}}, "role name is empty"},
		{"bad policy name", &pb.AppRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"a b"}}}, "token_policies"},
		{"no policy at all", &pb.AppRole{Name: "r", Token: &pb.RoleToken{NoDefaultPolicy: true}}, "can do nothing"},
	} {
		before := sysDump(t, x.f)
		_, err := x.approle.WriteRole(x.root, c.role)
		x.refused(t, c.name, err, codes.InvalidArgument, c.want, before)
	}
	if _, err := x.approle.GenerateSecretID(x.root, &pb.AuthRoleRequest{Name: "nope"}); status.Code(toStatus(err)) != codes.NotFound {
		t.Errorf("secret_id of a role that does not exist: %v", err)
	}
	// A role written again keeps its role_id and its secret_ids.
	id := x.appRole(t, &pb.AppRole{Name: "web", Token: &pb.RoleToken{Policies: []string{"app"}}})
	s := x.secretID(t, "web")
	if again := x.appRole(t, &pb.AppRole{Name: "web", Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 60}}); again != id {
		t.Fatalf("role_id changed on rewrite: %s → %s", id, again)
	}
	tk, err := x.login.Login(from("127.0.0.1"), approleLogin(id, s.GetSecretId()))
	if err != nil || tk.GetTtlSeconds() != 60 {
		t.Fatalf("login after a rewrite: %+v, %v", tk, err)
	}
	// Deleting the role removes its secret_ids and its role_id.
	if _, err := x.approle.DeleteRole(x.root, &pb.AuthRoleRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	for k := range sysDump(t, x.f) {
		if strings.HasPrefix(k, "auth/approle/") {
			t.Errorf("left after the role's deletion: %s", k)
		}
	}
}

// TestSecretIDUseIsSpentOnce: a secret_id with one use, logged in with by
// many logins at once on the leader, gives exactly one token; and a spend
// prepared from a reading the state no longer holds (a login checked on
// another leader) is refused by the state machine itself.
func TestSecretIDUseIsSpentOnce(t *testing.T) {
	x := newLoginFixture(t)
	id := x.appRole(t, &pb.AppRole{Name: "once", Token: &pb.RoleToken{Policies: []string{"app"}}, SecretIdNumUses: 1})
	for round := range 5 {
		s := x.secretID(t, "once")
		var wins, losses atomic.Int32
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				_, err := x.login.Login(from("127.0.0.1"), approleLogin(id, s.GetSecretId()))
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, ErrPermissionDenied):
					losses.Add(1)
				default:
					t.Errorf("round %d: %v", round, err)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 || losses.Load() != 7 {
			t.Fatalf("round %d: %d logins succeeded with one use (%d refused)", round, wins.Load(), losses.Load())
		}
	}
	// Two checks that read the same use (as two leaders in turn would):
	// the first spend wins, the second is refused by the state machine
	// and writes nothing, not even its token.
	s := x.secretID(t, "once")
	call := &loginCall{data: approleLogin(id, s.GetSecretId()).Data, now: time.Now()}
	g1, err := x.approle.login(context.Background(), call)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := x.approle.login(context.Background(), call)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.tokens.mint(context.Background(), g1.spec(), g1.use); err != nil {
		t.Fatal(err)
	}
	tokens, _ := x.f.SysList(sysTokenPref)
	if _, err := x.tokens.mint(context.Background(), g2.spec(), g2.use); !errors.Is(err, fsm.ErrCASMismatch) {
		t.Fatalf("a second spend of one use: %v", err)
	}
	if again, _ := x.f.SysList(sysTokenPref); len(again) != len(tokens) {
		t.Fatal("the refused spend wrote its token")
	}
}

// TestLoginOnAFollower: a follower serves a batch login that writes
// nothing itself, also with no leader; it forwards a service login, a
// login that spends a use, and — while a leader is known — a credential
// it does not hold yet; the forward carries the client's certificate.
func TestLoginOnAFollower(t *testing.T) {
	x := newLoginFixture(t)
	batchID := x.appRole(t, &pb.AppRole{Name: "batch", Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}})
	limitedID := x.appRole(t, &pb.AppRole{Name: "limited", Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}, SecretIdNumUses: 5})
	svcID := x.appRole(t, &pb.AppRole{Name: "svc", Token: &pb.RoleToken{Policies: []string{"app"}}})
	bs, ls, ss := x.secretID(t, "batch"), x.secretID(t, "limited"), x.secretID(t, "svc")
	x.raft.leader = false
	ctx := from("127.0.0.1")

	for _, known := range []bool{true, false} {
		x.link.known = known
		n := x.link.count()
		tk, err := x.login.Login(ctx, approleLogin(batchID, bs.GetSecretId()))
		if err != nil || tk.GetType() != "batch" || x.link.count() != n {
			t.Fatalf("leader known %v: batch login on a follower: %+v, %v (forwards %d)", known, tk, err, x.link.count()-n)
		}
	}
	x.link.known = true
	for name, req := range map[string]*pb.LoginRequest{
		"service token":         approleLogin(svcID, ss.GetSecretId()),
		"a use to spend":        approleLogin(limitedID, ls.GetSecretId()),
		"an unknown credential": approleLogin(batchID, "not-yet-here"),
	} {
		n := x.link.count()
		before := sysDump(t, x.f)
		if _, err := x.login.Login(ctx, req); !errors.Is(err, replication.ErrNoLeader) || x.link.count() != n+1 {
			t.Errorf("%s: %v (forwards %d), want it forwarded", name, err, x.link.count()-n)
		}
		if !mapsEqual(before, sysDump(t, x.f)) {
			t.Errorf("%s: the follower wrote", name)
		}
	}
	// Without a leader an unknown credential is refused here.
	x.link.known = false
	if _, err := x.login.Login(ctx, approleLogin(batchID, "not-yet-here")); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("unknown credential without a leader: %v", err)
	}
	// A forwarded certificate login carries the certificate.
	x.link.known = true
	cert := &x509.Certificate{Raw: []byte("der"), Subject: pkix.Name{CommonName: "web-1"}}
	writeCertRole(t, x, &pb.CertRole{Name: "web", AllowedCommonNames: []string{"web-*"}, Token: &pb.RoleToken{Policies: []string{"app"}}})
	if _, err := x.login.Login(withCert(ctx, cert), &pb.LoginRequest{Method: "cert"}); !errors.Is(err, replication.ErrNoLeader) {
		t.Fatalf("cert login on a follower: %v", err)
	}
	if got := x.link.md[loginCertKey]; got != base64.StdEncoding.EncodeToString([]byte("der")) {
		t.Fatalf("the forward carried certificate %q", got)
	}
}

// TestTokenBoundCIDRs: a token from a role with token_bound_cidrs works
// only from those addresses — from the caller's own, or for a call a
// node forwarded, the client address the node names.
func TestTokenBoundCIDRs(t *testing.T) {
	x := newLoginFixture(t)
	for _, typ := range []string{"service", "batch"} {
		id := x.appRole(t, &pb.AppRole{Name: "lan-" + typ, Token: &pb.RoleToken{Policies: []string{"app"}, Type: typ, BoundCidrs: []string{"10.0.0.0/8", "fd00::/8"}}})
		s := x.secretID(t, "lan-"+typ)
		tk, err := x.login.Login(from("192.168.0.9"), approleLogin(id, s.GetSecretId()))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(tk.GetBoundCidrs(), []string{"10.0.0.0/8", "fd00::/8"}) {
			t.Fatalf("%s: bound_cidrs %v", typ, tk.GetBoundCidrs())
		}
		auth := func(ctx context.Context) error {
			md, _ := metadata.FromIncomingContext(ctx)
			md = metadata.Join(md, metadata.Pairs("authorization", "Bearer "+tk.GetToken()))
			ctx = metadata.NewIncomingContext(ctx, md)
			_, err := x.g.authenticate(ctx)
			return err
		}
		forwarded := func(client string) context.Context {
			md := metadata.Pairs(forwardedKey, "n2")
			if client != "" {
				md.Set(clientAddrKey, client)
			}
			return metadata.NewIncomingContext(from("127.0.0.1"), md)
		}
		for name, c := range map[string]struct {
			ctx context.Context
			ok  bool
		}{
			"inside":                          {from("10.9.8.7"), true},
			"inside, IPv6":                    {from("fd00::5"), true},
			"outside":                         {from("192.168.0.9"), false},
			"no address":                      {context.Background(), false},
			"forwarded for a client inside":   {forwarded("10.1.1.1"), true},
			"forwarded for a client outside":  {forwarded("192.168.0.9"), false},
			"forwarded with a broken address": {forwarded("nope"), false},
		} {
			// Twice: the second check reads the token cache.
			for i := range 2 {
				err := auth(c.ctx)
				if c.ok && err != nil {
					t.Errorf("%s %s (%d): %v", typ, name, i, err)
				}
				if !c.ok && !errors.Is(err, ErrPermissionDenied) {
					t.Errorf("%s %s (%d): %v, want a refusal", typ, name, i, err)
				}
			}
		}
		// A token it makes is bound alike.
		if typ == "service" {
			if _, err := x.pols.Write(x.root, &pb.WritePolicyRequest{Name: "maker", Policy: `path "auth/token/create" { capabilities = ["update"] }`}); err != nil {
				t.Fatal(err)
			}
			maker := x.appRole(t, &pb.AppRole{Name: "maker", Token: &pb.RoleToken{Policies: []string{"maker"}, BoundCidrs: []string{"10.0.0.0/8"}}})
			ms := x.secretID(t, "maker")
			mt, err := x.login.Login(from("10.0.0.1"), approleLogin(maker, ms.GetSecretId()))
			if err != nil {
				t.Fatal(err)
			}
			rec, err := x.g.authenticate(metadata.NewIncomingContext(from("10.0.0.1"), metadata.Pairs("authorization", "Bearer "+mt.GetToken())))
			if err != nil {
				t.Fatal(err)
			}
			child, err := x.tokens.Create(context.WithValue(context.Background(), tokenCtxKey{}, rec), &pb.CreateTokenRequest{NoParent: true, Type: "batch"})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(child.GetBoundCidrs(), []string{"10.0.0.0/8"}) {
				t.Errorf("a token made by a bound token is bound to %v", child.GetBoundCidrs())
			}
		}
		// With TLS, a call that says it was forwarded but did not come
		// with a node certificate is checked against its own address.
		x.g.tls = true
		if err := auth(forwarded("10.1.1.1")); !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("%s: a forged forward: %v", typ, err)
		}
		x.g.tls = false
	}
}

// jwtIssuer signs test tokens.
type jwtIssuer struct {
	kid  string
	priv *ecdsa.PrivateKey
}

func newJWTIssuer(t *testing.T, kid string) *jwtIssuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &jwtIssuer{kid: kid, priv: k}
}

func (i *jwtIssuer) jwks(t *testing.T) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.priv.PublicKey, KeyID: i.kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (i *jwtIssuer) pem(t *testing.T) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&i.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func (i *jwtIssuer) sign(t *testing.T, c jwt.Claims, extra map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: i.priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.kid))
	if err != nil {
		t.Fatal(err)
	}
	b := jwt.Signed(s).Claims(c)
	if extra != nil {
		b = b.Claims(extra)
	}
	tok, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// k8sClaims are the claims of a Kubernetes service-account token.
func k8sClaims(now time.Time) jwt.Claims {
	return jwt.Claims{
		Issuer: "https://kubernetes.default.svc", Subject: "system:serviceaccount:payments:api",
		Audience: jwt.Audience{"coffer"}, Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)),
		IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)), NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
	}
}

func jwtLogin(role, tok string) *pb.LoginRequest {
	return &pb.LoginRequest{Method: "jwt", Data: map[string]string{"role": role, "jwt": tok}}
}

// TestJWTLogin: a Kubernetes token verified against a JWKS, and against
// PEM keys, logs in to a token named after its user; every forged or
// unfit token is refused with one line naming what is wrong, and changes
// nothing.
func TestJWTLogin(t *testing.T) {
	x := newLoginFixture(t)
	now := time.Now()
	iss := newJWTIssuer(t, "k1")
	if _, err := x.jwt.WriteConfig(x.root, &pb.JWTConfig{JwksJson: iss.jwks(t), BoundIssuer: "https://kubernetes.default.svc"}); err != nil {
		t.Fatal(err)
	}
	if _, err := x.jwt.WriteRole(x.root, &pb.JWTRole{
		Name: "payments", BoundAudiences: []string{"coffer"}, BoundClaims: map[string]string{"kubernetes.io/namespace": "payments"},
		Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 900, Type: "batch"},
	}); err != nil {
		t.Fatal(err)
	}
	ns := map[string]any{"kubernetes.io/namespace": "payments"}
	good := iss.sign(t, k8sClaims(now), ns)
	before := sysDump(t, x.f)
	tk, err := x.login.Login(from("127.0.0.1"), jwtLogin("payments", good))
	if err != nil {
		t.Fatal(err)
	}
	if tk.GetType() != "batch" || tk.GetDisplayName() != "jwt-payments-system:serviceaccount:payments:api" || tk.GetTtlSeconds() != 900 {
		t.Fatalf("token: %+v", tk)
	}
	if !mapsEqual(before, sysDump(t, x.f)) {
		t.Fatal("a batch JWT login wrote")
	}

	with := func(f func(*jwt.Claims)) jwt.Claims {
		c := k8sClaims(now)
		f(&c)
		return c
	}
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(k8sClaims(now))
	hsHeader := enc([]byte(`{"alg":"HS256","kid":"k1"}`))
	mac := hmac.New(sha256.New, []byte(iss.pem(t)))
	mac.Write([]byte(hsHeader + "." + enc(payload)))
	for _, c := range []struct {
		name, role, token, want string
	}{
		{"wrong signature", "payments", newJWTIssuer(t, "k1").sign(t, k8sClaims(now), ns), "jwt: the jwt's signature does not verify"},
		{"wrong issuer", "payments", iss.sign(t, with(func(c *jwt.Claims) { c.Issuer = "https://evil" }), ns), `jwt: the token's issuer "https://evil" is not the bound issuer`},
		{"wrong audience", "payments", iss.sign(t, with(func(c *jwt.Claims) { c.Audience = jwt.Audience{"x"} }), ns), "jwt: the token's audience [x] is not among the role's bound audiences [coffer]"},
		{"expired", "payments", iss.sign(t, with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-5 * time.Minute)) }), ns), "jwt: the jwt expired at"},
		{"alg none", "payments", enc([]byte(`{"alg":"none"}`)) + "." + enc(payload) + ".", "jwt: the jwt is not signed (alg none)"},
		{"HS256 keyed with the public key", "payments", hsHeader + "." + enc(payload) + "." + enc(mac.Sum(nil)), "shared-secret algorithm"},
		{"wrong namespace", "payments", iss.sign(t, k8sClaims(now), map[string]any{"kubernetes.io/namespace": "ops"}), `"kubernetes.io/namespace" claim is "ops"`},
		{"unknown key", "payments", newJWTIssuer(t, "k9").sign(t, k8sClaims(now), ns), "names a key the configured keys do not hold"},
		{"garbage", "payments", "not-a-jwt", "compact form"},
		{"unknown role", "nope", good, `no role named "nope"`},
	} {
		before := sysDump(t, x.f)
		_, err := x.login.Login(from("127.0.0.1"), jwtLogin(c.role, c.token))
		code := codes.PermissionDenied
		x.refused(t, c.name, err, code, c.want, before, c.token)
	}

	// PEM keys verify too; a user claim that is missing is refused.
	if _, err := x.jwt.WriteConfig(x.root, &pb.JWTConfig{Pubkeys: []string{iss.pem(t)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := x.login.Login(from("127.0.0.1"), jwtLogin("payments", good)); err != nil {
		t.Fatalf("PEM keys: %v", err)
	}
	if _, err := x.jwt.WriteRole(x.root, &pb.JWTRole{Name: "email", BoundAudiences: []string{"coffer"}, UserClaim: "email", Token: &pb.RoleToken{Policies: []string{"app"}}}); err != nil {
		t.Fatal(err)
	}
	before = sysDump(t, x.f)
	_, err = x.login.Login(from("127.0.0.1"), jwtLogin("email", good))
	x.refused(t, "no user claim", err, codes.PermissionDenied, `no "email" claim`, before, good)
}

// TestJWTKeySources: the configuration takes exactly one key source,
// checked before it is stored; a JWKS URL is fetched by the node over
// verified TLS, and one that cannot be read refuses logins with one line
// (Unavailable: another node may reach it) and changes nothing.
func TestJWTKeySources(t *testing.T) {
	x := newLoginFixture(t)
	iss := newJWTIssuer(t, "k1")
	for _, c := range []struct {
		name string
		cfg  *pb.JWTConfig
		want string
	}{
		{"no source", &pb.JWTConfig{}, "exactly one of"},
		{"two sources", &pb.JWTConfig{JwksJson: iss.jwks(t), Pubkeys: []string{iss.pem(t)}}, "exactly one of"},
		{"JWKS that is not JSON", &pb.JWTConfig{JwksJson: "{"}, "not a JSON key set"},
		{"JWKS with a symmetric key", &pb.JWTConfig{JwksJson: `{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`}, "symmetric key"},
		{"http URL on a TLS node", &pb.JWTConfig{JwksUrl: "http://issuer.example/keys"}, "https://"},
		{"URL with credentials", &pb.JWTConfig{JwksUrl: "https://u:p@issuer.example/keys"}, "credentials"},
		{"CA without URL", &pb.JWTConfig{JwksJson: iss.jwks(t), JwksCaPem: "x"}, "jwks_ca_pem verifies a jwks_url"},
		{"private PEM", &pb.JWTConfig{Pubkeys: []string{"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"}}, "public key only"},
	} {
		before := sysDump(t, x.f)
		_, err := x.jwt.WriteConfig(x.root, c.cfg)
		x.refused(t, c.name, err, codes.InvalidArgument, c.want, before)
	}
	if _, err := x.jwt.WriteRole(x.root, &pb.JWTRole{Name: "r", Token: &pb.RoleToken{Policies: []string{"app"}}}); status.Code(toStatus(err)) != codes.InvalidArgument {
		t.Errorf("a role without audiences: %v", err)
	}
	if _, err := x.jwt.WriteRole(x.root, &pb.JWTRole{Name: "r", BoundAudiences: []string{"coffer"}, Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}}); err != nil {
		t.Fatal(err)
	}

	var fetches atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Write([]byte(iss.jwks(t)))
	}))
	defer srv.Close()
	ca := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	if _, err := x.jwt.WriteConfig(x.root, &pb.JWTConfig{JwksUrl: srv.URL + "/keys", JwksCaPem: ca}); err != nil {
		t.Fatal(err)
	}
	tok := iss.sign(t, k8sClaims(time.Now()), nil)
	for range 3 {
		if _, err := x.login.Login(from("127.0.0.1"), jwtLogin("r", tok)); err != nil {
			t.Fatalf("JWKS URL: %v", err)
		}
	}
	if fetches.Load() != 1 {
		t.Fatalf("%d fetches for three logins", fetches.Load())
	}

	// The URL goes down before any node fetched it (a new config).
	down := httptest.NewTLSServer(http.NotFoundHandler())
	downURL, downCA := down.URL, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: down.Certificate().Raw}))
	down.Close()
	if _, err := x.jwt.WriteConfig(x.root, &pb.JWTConfig{JwksUrl: downURL + "/keys", JwksCaPem: downCA}); err != nil {
		t.Fatal(err)
	}
	before := sysDump(t, x.f)
	_, err := x.login.Login(from("127.0.0.1"), jwtLogin("r", tok))
	x.refused(t, "JWKS URL down", err, codes.Unavailable, "could not be fetched", before, tok)
	if reasonOf(toStatus(err)) != pb.ErrorReason_LOGIN_UNAVAILABLE {
		t.Errorf("reason %s", reasonOf(toStatus(err)))
	}

	// A node without TLS accepts an http:// URL.
	x.jwt.insecure = true
	if _, err := x.jwt.WriteConfig(x.root, &pb.JWTConfig{JwksUrl: "http://127.0.0.1:1/keys"}); err != nil {
		t.Errorf("http URL on an insecure node: %v", err)
	}
}

// withCert is ctx as it reaches a handler over TLS with a verified client
// certificate.
func withCert(ctx context.Context, cert *x509.Certificate) context.Context {
	p, _ := peer.FromContext(ctx)
	p2 := &peer.Peer{Addr: p.Addr, AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}}
	return peer.NewContext(ctx, p2)
}

func writeCertRole(t *testing.T, x *loginFixture, r *pb.CertRole) {
	t.Helper()
	if _, err := x.cert.WriteRole(x.root, r); err != nil {
		t.Fatalf("write cert role %s: %v", r.Name, err)
	}
}

// TestCertLogin: a client certificate of the CA logs in to the role it
// is named for, or to the first role (by name) whose names it matches;
// no certificate, a node certificate or a certificate no role takes are
// refused with one line and change nothing.
func TestCertLogin(t *testing.T) {
	x := newLoginFixture(t)
	dir := t.TempDir()
	caKey := filepath.Join(t.TempDir(), "ca.key")
	if err := tlsutil.CreateCA(dir, caKey, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := tlsutil.CreateClient(dir, caKey, "web-1", 0, false); err != nil {
		t.Fatal(err)
	}
	if err := tlsutil.CreateNode(dir, caKey, []string{"localhost"}, 0, false); err != nil {
		t.Fatal(err)
	}
	web, err := tlsutil.ReadCert(tlsutil.ClientFiles(dir, "web-1").Cert)
	if err != nil {
		t.Fatal(err)
	}
	node, err := tlsutil.ReadCert(tlsutil.NodeFiles(dir).Cert)
	if err != nil {
		t.Fatal(err)
	}
	writeCertRole(t, x, &pb.CertRole{Name: "b-web", AllowedCommonNames: []string{"web-*"}, Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}})
	writeCertRole(t, x, &pb.CertRole{Name: "a-exact", AllowedCommonNames: []string{"web-2"}, Token: &pb.RoleToken{Policies: []string{"app"}}})
	writeCertRole(t, x, &pb.CertRole{Name: "c-dns", AllowedDnsSans: []string{"*.payments.internal"}, Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}})
	ctx := withCert(from("127.0.0.1"), web)
	tk, err := x.login.Login(ctx, &pb.LoginRequest{Method: "cert"})
	if err != nil || tk.GetDisplayName() != "cert-b-web" {
		t.Fatalf("first matching role: %+v, %v", tk, err)
	}
	if tk, err := x.login.Login(ctx, &pb.LoginRequest{Method: "cert", Data: map[string]string{"name": "b-web"}}); err != nil || tk.GetDisplayName() != "cert-b-web" {
		t.Fatalf("named role: %+v, %v", tk, err)
	}
	dnsCert := &x509.Certificate{Subject: pkix.Name{CommonName: "svc"}, DNSNames: []string{"api.payments.internal"}}
	if tk, err := x.login.Login(withCert(from("127.0.0.1"), dnsCert), &pb.LoginRequest{Method: "cert"}); err != nil || tk.GetDisplayName() != "cert-c-dns" {
		t.Fatalf("DNS SAN role: %+v, %v", tk, err)
	}
	for _, c := range []struct {
		name string
		ctx  context.Context
		data map[string]string
		want string
	}{
		{"no certificate", from("127.0.0.1"), nil, "without a client certificate"},
		{"node certificate", withCert(from("127.0.0.1"), node), nil, "node certificate does not log in"},
		{"named role it does not match", ctx, map[string]string{"name": "a-exact"}, `does not match role "a-exact"`},
		{"named role that does not exist", ctx, map[string]string{"name": "nope"}, `no role named "nope"`},
		{"no role matches", withCert(from("127.0.0.1"), &x509.Certificate{Subject: pkix.Name{CommonName: "db-1"}}), nil, "no role matches the certificate"},
	} {
		before := sysDump(t, x.f)
		_, err := x.login.Login(c.ctx, &pb.LoginRequest{Method: "cert", Data: c.data})
		x.refused(t, c.name, err, codes.PermissionDenied, c.want, before)
	}
	before := sysDump(t, x.f)
	_, err = x.cert.WriteRole(x.root, &pb.CertRole{Name: "any", Token: &pb.RoleToken{Policies: []string{"app"}}})
	x.refused(t, "role without names", err, codes.InvalidArgument, "needs allowed_common_names or allowed_dns_sans", before)
	// A login a node forwards without TLS cannot bring a certificate.
	md := metadata.Pairs(forwardedKey, "n2", loginCertKey, base64.StdEncoding.EncodeToString(web.Raw))
	if _, err := x.login.Login(metadata.NewIncomingContext(from("127.0.0.1"), md), &pb.LoginRequest{Method: "cert"}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("a certificate in a forward's metadata without TLS: %v", err)
	}
}

// TestLoginAdmission: the gateway admits a login without a token, but not
// while sealed; its route names Vault's login path.
func TestLoginAdmission(t *testing.T) {
	x := newLoginFixture(t)
	r, ctx, err := x.g.admit(context.Background(), pb.Login_Login_FullMethodName)
	if err != nil || r.Access != route.Login {
		t.Fatalf("admit: %v, %v", r.Access, err)
	}
	if err := x.g.authorize(ctx, r, &pb.LoginRequest{Method: "approle"}); err != nil {
		t.Fatalf("authorize a login: %v", err)
	}
	if p, _ := r.Policy(&pb.LoginRequest{Method: "approle"}); p != "auth/approle/login" {
		t.Fatalf("policy path %s", p)
	}
	x.keys.Seal()
	if _, _, err := x.g.admit(context.Background(), pb.Login_Login_FullMethodName); !errors.Is(err, ErrNotInitialized) && status.Code(toStatus(err)) != codes.Unavailable {
		t.Fatalf("admit while sealed: %v", err)
	}
}
