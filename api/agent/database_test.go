package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/pgtest"
	"coffer/internal/testcluster"
)

// dbEnv is a cluster with a real PostgreSQL behind its database engine:
// the connection "pg" and a table the roles grant on.
type dbEnv struct {
	c    *testcluster.Cluster
	root *api.Client
	pg   *pgtest.Server
}

func newDBEnv(t *testing.T, size int) *dbEnv {
	t.Helper()
	pg := pgtest.Start(t)
	pg.Exec(t, `CREATE TABLE accounts (id int PRIMARY KEY, owner text); INSERT INTO accounts VALUES (1, 'ann')`)
	c := newTestCluster(t, size)
	root := rootClient(t, c)
	if _, err := root.WriteDatabaseConfig(tctx(t), &pb.DatabaseConfig{
		Name: "pg", ConnectionUrl: pg.URLTemplate(), Username: pg.User, Password: pg.Password, AllowedRoles: []string{"*"},
	}); err != nil {
		t.Fatalf("config write: %v", err)
	}
	if _, err := root.WritePolicy(tctx(t), "db", `path "database/creds/*" { capabilities = ["read"] }
path "database/static-creds/*" { capabilities = ["read"] }
path "database/rotate-role/*" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }`); err != nil {
		t.Fatal(err)
	}
	return &dbEnv{c: c, root: root, pg: pg}
}

// role writes a dynamic role whose users may read accounts.
func (e *dbEnv) role(t *testing.T, name string, ttl, maxTTL time.Duration) {
	t.Helper()
	if _, err := e.root.WriteDatabaseRole(tctx(t), &pb.DatabaseRole{
		Name: name, DbName: "pg",
		CreationStatements: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON accounts TO "{{name}}";`},
		DefaultTtlSeconds: int64(ttl / time.Second), MaxTtlSeconds: int64(maxTTL / time.Second),
	}); err != nil {
		t.Fatalf("role write: %v", err)
	}
}

// token returns a new token with the db policy (and the default one,
// which may look up and renew leases).
func (e *dbEnv) token(t *testing.T) string {
	t.Helper()
	tk, err := e.root.CreateToken(tctx(t), &pb.CreateTokenRequest{Policies: []string{"db"}, TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	return tk.GetToken()
}

// lookup returns a lease as the cluster has it.
func (e *dbEnv) lookup(t *testing.T, id string) *pb.LeaseInfo {
	t.Helper()
	info, err := e.root.LookupLease(tctx(t), id)
	if err != nil {
		t.Fatalf("lease lookup: %v", err)
	}
	return info
}

// dbCall is one Creds or StaticCreds answer through the agent.
type dbCall struct {
	creds  *pb.DatabaseCreds
	static *pb.DatabaseStaticCreds
	cache  string
	at     time.Time // when the answer came
	err    error
}

func (c dbCall) String() string {
	if c.err != nil {
		return "error " + c.err.Error()
	}
	if c.static != nil {
		return fmt.Sprintf("static user %s ttl %ds cache %s", c.static.GetUsername(), c.static.GetTtlSeconds(), c.cache)
	}
	return fmt.Sprintf("user %s lease %ds cache %s", c.creds.GetUsername(), c.creds.GetLeaseDurationSeconds(), c.cache)
}

// creds asks the agent at conn for role's credentials with token.
func creds(t testing.TB, conn *grpc.ClientConn, token, role string) dbCall {
	var hdr metadata.MD
	cr, err := pb.NewDatabaseClient(conn).Creds(as(t, token), &pb.DatabaseNameRequest{Name: role}, grpc.Header(&hdr))
	c := dbCall{creds: cr, err: err, at: time.Now()}
	if v := hdr.Get(HeaderCache); len(v) == 1 {
		c.cache = v[0]
	}
	return c
}

// staticCreds asks the agent at conn for a static role's password.
func staticCreds(t testing.TB, conn *grpc.ClientConn, token, name string) dbCall {
	var hdr metadata.MD
	sc, err := pb.NewDatabaseClient(conn).StaticCreds(as(t, token), &pb.DatabaseNameRequest{Name: name}, grpc.Header(&hdr))
	c := dbCall{static: sc, err: err, at: time.Now()}
	if v := hdr.Get(HeaderCache); len(v) == 1 {
		c.cache = v[0]
	}
	return c
}

// heldExpire is the end of the lease the agent holds for token and role,
// as the agent reckons it (zero when it holds none).
func (a *Agent) heldExpire(token, role string) time.Time {
	a.held.mu.Lock()
	defer a.held.mu.Unlock()
	if s := a.held.slots[credsKey{api.TokenHash(token), role}]; s != nil && s.cur != nil {
		return s.cur.expire
	}
	return time.Time{}
}

// dbAgentConfig is an agent configuration for the database tests: a short
// lease margin and token recheck.
func dbAgentConfig(t *testing.T, c *testcluster.Cluster) Config {
	cfg := testConfig(t, c.APIAddrs(), "")
	cfg.LeaseMargin = 500 * time.Millisecond
	cfg.Cache.TokenRecheck = 300 * time.Millisecond
	return cfg
}

// TestAgentDatabaseCreds: callers with one token get the same
// credentials (one database user), which log in; another token gets its
// own. The agent renews the lease in the background (the cluster's
// expire time and the user's VALID UNTIL move), and before the lease's max
// TTL it switches callers to new credentials that log in, while the old
// ones still work. No answer is ever given past its lease.
func TestAgentDatabaseCreds(t *testing.T) {
	e := newDBEnv(t, 3)
	const ttl, maxTTL = 4 * time.Second, 10 * time.Second
	e.role(t, "reader", ttl, maxTTL)
	ag := startAgent(t, dbAgentConfig(t, e.c))
	conn := dial(t, ag.Addr()).conn
	tokA, tokB := e.token(t), e.token(t)

	first := creds(t, conn, tokA, "reader")
	if first.err != nil || first.cache != "miss" || !strings.HasPrefix(first.creds.GetLeaseId(), "database/creds/reader/") {
		t.Fatalf("first creds through the agent: %s", first)
	}
	if d := first.creds.GetLeaseDurationSeconds(); d < 2 || d > 4 {
		t.Fatalf("lease_duration_seconds %d, want what is left of 4s", d)
	}
	again := creds(t, conn, tokA, "reader")
	if again.err != nil || again.cache != "hit" || again.creds.GetUsername() != first.creds.GetUsername() ||
		again.creds.GetPassword() != first.creds.GetPassword() || again.creds.GetLeaseId() != first.creds.GetLeaseId() {
		t.Fatalf("second creds with the same token: %s, first %s", again, first)
	}
	var owner string
	if err := e.pg.Connect(t, first.creds.GetUsername(), first.creds.GetPassword()).QueryRow(tctx(t), "SELECT owner FROM accounts WHERE id = 1").Scan(&owner); err != nil || owner != "ann" {
		t.Fatalf("select as the agent's user: %q %v", owner, err)
	}
	other := creds(t, conn, tokB, "reader")
	if other.err != nil || other.creds.GetUsername() == first.creds.GetUsername() {
		t.Fatalf("creds with another token: %s, first %s", other, first)
	}
	if roles := e.pg.Roles(t, "v-"); len(roles) != 2 {
		t.Fatalf("database users %v, want one per token", roles)
	}

	// Background renewal: the lease's end and the user's VALID UNTIL move.
	info0 := e.lookup(t, first.creds.GetLeaseId())
	until0, _ := e.pg.ValidUntil(t, first.creds.GetUsername())
	testcluster.WaitFor(t, ttl, "a renewal by the agent", func() error {
		info := e.lookup(t, first.creds.GetLeaseId())
		if info.GetExpireTimeUnixNano() <= info0.GetExpireTimeUnixNano() || info.GetLastRenewalUnixNano() == 0 {
			return fmt.Errorf("lease not renewed: %v", info)
		}
		return nil
	})
	if until, _ := e.pg.ValidUntil(t, first.creds.GetUsername()); !until.After(until0) {
		t.Fatalf("VALID UNTIL %v did not move from %v", until, until0)
	}
	maxExpire := time.Unix(0, info0.GetMaxExpireTimeUnixNano())
	issue := time.Unix(0, info0.GetIssueTimeUnixNano())

	// Before the max TTL: new credentials, handed out while the old ones
	// still work. Every answer meanwhile is within its lease.
	var switched dbCall
	testcluster.WaitFor(t, maxTTL, "new credentials before the max TTL", func() error {
		c := creds(t, conn, tokA, "reader")
		if c.err != nil {
			t.Fatalf("creds while the lease runs: %v", c.err)
		}
		if c.creds.GetUsername() == first.creds.GetUsername() {
			if !c.at.Before(maxExpire) {
				t.Fatalf("the old credentials were handed out at their max TTL (%v past it)", c.at.Sub(maxExpire))
			}
			return errors.New("the same credentials")
		}
		switched = c
		return nil
	})
	if err := e.pg.CanLogin(first.creds.GetUsername(), first.creds.GetPassword()); err != nil {
		t.Fatalf("the old credentials stopped working before the switch: %v", err)
	}
	if err := e.pg.CanLogin(switched.creds.GetUsername(), switched.creds.GetPassword()); err != nil {
		t.Fatalf("the new credentials: %v", err)
	}
	old := e.lookup(t, first.creds.GetLeaseId())
	left := maxExpire.Sub(switched.at)
	t.Logf("switched %v after issue, %v before the max TTL (old lease ends %v after the switch)",
		switched.at.Sub(issue).Round(time.Millisecond), left.Round(time.Millisecond), time.Unix(0, old.GetExpireTimeUnixNano()).Sub(switched.at).Round(time.Millisecond))
	// The switch comes when 10–20 % of the lease's life is left, or three
	// margins (1.5 s), whichever is more, and never in its first half.
	if left < ag.cfg.LeaseMargin || left > maxTTL/2 {
		t.Fatalf("switched %v before the max TTL, want between the margin and half the life", left)
	}
	// The old lease was renewed up to its max TTL.
	if old.GetExpireTimeUnixNano() != old.GetMaxExpireTimeUnixNano() {
		t.Fatalf("the old lease ends at %v, before its max TTL %v", time.Unix(0, old.GetExpireTimeUnixNano()), maxExpire)
	}
	if c := creds(t, conn, tokA, "reader"); c.err != nil || c.creds.GetUsername() != switched.creds.GetUsername() || c.cache != "hit" {
		t.Fatalf("creds after the switch: %s", c)
	}
	// The other token's credentials are its own still.
	if c := creds(t, conn, tokB, "reader"); c.err != nil || c.creds.GetUsername() == switched.creds.GetUsername() || c.creds.GetUsername() == first.creds.GetUsername() {
		t.Fatalf("creds with the other token: %s", c)
	}
}

// TestAgentDatabaseOutage: with every node down the agent keeps handing
// out the credentials it holds while their lease runs — also after a
// restart, from its encrypted cache file — and never past it; then it
// fails with a clear Unavailable error. With the cluster back it fetches
// fresh credentials, without a restart.
func TestAgentDatabaseOutage(t *testing.T) {
	e := newDBEnv(t, 3)
	const ttl, maxTTL = 5 * time.Second, 20 * time.Second
	e.role(t, "reader", ttl, maxTTL)
	cfg := dbAgentConfig(t, e.c)
	cfg.CacheDir, cfg.CacheKey = filepath.Join(t.TempDir(), "cache"), newKey()
	ag := startAgent(t, cfg)
	conn := dial(t, ag.Addr()).conn
	tok := e.token(t)

	first := creds(t, conn, tok, "reader")
	if first.err != nil {
		t.Fatal(first.err)
	}
	testcluster.WaitFor(t, 10*time.Second, "the credentials in the cache file", func() error {
		c, _, err := ag.file.load()
		if err != nil || len(c.Leases) != 1 || c.Leases[0].Creds.GetUsername() != first.creds.GetUsername() {
			return fmt.Errorf("%d held credentials, %v", len(c.Leases), err)
		}
		return nil
	})
	grepDir(t, cfg.CacheDir, first.creds.GetPassword())

	e.c.KillAll()
	killed := time.Now()
	// Served during the outage; once the token's recheck finds no node,
	// marked stale.
	testcluster.WaitFor(t, 5*time.Second, "a stale answer", func() error {
		c := creds(t, conn, tok, "reader")
		if c.err != nil {
			t.Fatalf("creds right after the outage began: %v", c.err)
		}
		if c.creds.GetUsername() != first.creds.GetUsername() {
			t.Fatalf("other credentials during the outage: %s", c)
		}
		if c.cache != "stale" {
			return fmt.Errorf("cache %s", c.cache)
		}
		return nil
	})
	if c := creds(t, conn, "never-seen-token-1234", "reader"); status.Code(c.err) != codes.Unavailable || api.Reason(c.err) != pb.ErrorReason_UPSTREAM_UNREACHABLE ||
		!strings.Contains(status.Convert(c.err).Message(), "holds no database credentials") {
		t.Fatalf("creds of a token the agent holds nothing for, during the outage: %s", c)
	}

	// The agent restarts during the outage: the cache file brings the
	// credentials back, served while their lease runs.
	shutdown(t, ag)
	ag2 := startAgent(t, cfg)
	conn2 := dial(t, ag2.Addr()).conn
	expire := ag2.heldExpire(tok, "reader")
	if expire.IsZero() {
		t.Fatal("the restarted agent holds no credentials")
	}
	var last dbCall
	served := 0
	testcluster.WaitFor(t, maxTTL, "the end of the lease", func() error {
		c := creds(t, conn2, tok, "reader")
		if c.err != nil {
			last = c
			return nil
		}
		served++
		if c.creds.GetUsername() != first.creds.GetUsername() || c.cache != "stale" {
			t.Fatalf("creds from the restarted agent during the outage: %s", c)
		}
		if !c.at.Before(expire) {
			t.Fatalf("credentials handed out %v after their lease ended", c.at.Sub(expire))
		}
		if time.Duration(c.creds.GetLeaseDurationSeconds())*time.Second > time.Until(expire)+time.Second {
			t.Fatalf("lease_duration_seconds %d, but the lease ends in %v", c.creds.GetLeaseDurationSeconds(), time.Until(expire))
		}
		return errors.New("still served")
	})
	msg := status.Convert(last.err).Message()
	if status.Code(last.err) != codes.Unavailable || api.Reason(last.err) != pb.ErrorReason_CACHE_TOO_STALE ||
		!strings.Contains(msg, "lease") || !strings.Contains(msg, "cluster is unreachable") || strings.Contains(msg, first.creds.GetPassword()) {
		t.Fatalf("creds after the lease ended: %v", last.err)
	}
	if early := expire.Sub(last.at); early > cfg.LeaseMargin+time.Second {
		t.Fatalf("refused %v before the lease's end (margin %v)", early, cfg.LeaseMargin)
	}
	// The lease the agent reckoned with never ends after the one the
	// database enforces.
	if until, ok := e.pg.ValidUntil(t, first.creds.GetUsername()); !ok || expire.After(until) {
		t.Fatalf("the agent's lease end %v is after VALID UNTIL %v", expire, until)
	}
	t.Logf("outage: served %d times from the restarted agent, until %v after the kill; refused: %v", served, last.at.Sub(killed).Round(time.Millisecond), last.err)

	// The cluster comes back: fresh credentials.
	e.c.RestartAll(t)
	e.c.UnsealAll(t)
	e.c.WaitForLeader(t)
	var fresh dbCall
	testcluster.WaitFor(t, 30*time.Second, "fresh credentials after the outage", func() error {
		fresh = creds(t, conn2, tok, "reader")
		return fresh.err
	})
	if fresh.creds.GetUsername() == first.creds.GetUsername() || fresh.cache != "miss" {
		t.Fatalf("creds after the outage: %s", fresh)
	}
	if err := e.pg.CanLogin(fresh.creds.GetUsername(), fresh.creds.GetPassword()); err != nil {
		t.Fatalf("fresh credentials: %v", err)
	}
}

// TestAgentDatabaseTokenRevoked: once the cluster refuses a token, the
// agent drops the credentials it holds for it (no longer served, no
// longer renewed), as the KV cache drops its answers; another token's
// stay. A token whose policy no longer lets it read the role's
// credentials is refused them within the token recheck too.
func TestAgentDatabaseTokenRevoked(t *testing.T) {
	e := newDBEnv(t, 1)
	e.role(t, "reader", 30*time.Second, time.Minute)
	ag := startAgent(t, dbAgentConfig(t, e.c))
	conn := dial(t, ag.Addr()).conn
	doomed, kept := e.token(t), e.token(t)
	if _, err := e.root.WritePolicy(tctx(t), "narrowed", `path "database/creds/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	tk, err := e.root.CreateToken(tctx(t), &pb.CreateTokenRequest{Policies: []string{"narrowed"}, TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	narrowed := tk.GetToken()
	d := creds(t, conn, doomed, "reader")
	k := creds(t, conn, kept, "reader")
	n := creds(t, conn, narrowed, "reader")
	if d.err != nil || k.err != nil || n.err != nil {
		t.Fatal(d, k, n)
	}
	if _, err := e.root.WritePolicy(tctx(t), "narrowed", `path "database/creds/other" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "the narrowed token refused", func() error {
		if c := creds(t, conn, narrowed, "reader"); status.Code(c.err) != codes.PermissionDenied {
			return fmt.Errorf("creds after the policy change: %s", c)
		}
		return nil
	})
	if !ag.heldExpire(narrowed, "reader").IsZero() {
		t.Fatal("the agent still holds credentials the token may no longer read")
	}
	if _, err := e.root.RevokeToken(tctx(t), &pb.RevokeTokenRequest{Token: doomed}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testcluster.WaitFor(t, 10*time.Second, "the revoked token refused", func() error {
		if c := creds(t, conn, doomed, "reader"); status.Code(c.err) != codes.Unauthenticated {
			return fmt.Errorf("creds with the revoked token: %s", c)
		}
		return nil
	})
	t.Logf("refused %v after the revocation", time.Since(start).Round(time.Millisecond))
	if !ag.heldExpire(doomed, "reader").IsZero() {
		t.Fatal("the agent still holds the revoked token's credentials")
	}
	if c := creds(t, conn, kept, "reader"); c.err != nil || c.creds.GetUsername() != k.creds.GetUsername() || c.creds.GetUsername() == d.creds.GetUsername() {
		t.Fatalf("the other token: %s", c)
	}
}

// TestAgentDatabaseLeasePassThrough: the Lease calls pass upstream with
// the caller's token; a renewal with a short increment through the agent
// brings the held lease's end closer (the agent hands out no more than
// is left), a revocation through it drops the held credentials. Errors
// of the cluster pass through; a call without a token is refused unless
// the agent lends its own on a unix socket.
func TestAgentDatabaseLeasePassThrough(t *testing.T) {
	e := newDBEnv(t, 1)
	e.role(t, "reader", 30*time.Second, time.Minute)
	ag := startAgent(t, dbAgentConfig(t, e.c))
	conn := dial(t, ag.Addr()).conn
	leases := pb.NewLeaseClient(conn)
	tok := e.token(t)

	first := creds(t, conn, tok, "reader")
	if first.err != nil {
		t.Fatal(first.err)
	}
	id := first.creds.GetLeaseId()
	info, err := leases.Lookup(as(t, tok), &pb.LeaseRequest{LeaseId: id})
	if err != nil || info.GetId() != id || info.GetSubject() != first.creds.GetUsername() {
		t.Fatalf("lookup through the agent: %v %v", info, err)
	}
	// A short renewal through the agent: the agent takes the nearer end.
	if _, err := leases.Renew(as(t, tok), &pb.LeaseRenewRequest{LeaseId: id, IncrementSeconds: 3}); err != nil {
		t.Fatalf("renew through the agent: %v", err)
	}
	if c := creds(t, conn, tok, "reader"); c.err != nil || c.creds.GetUsername() != first.creds.GetUsername() || c.creds.GetLeaseDurationSeconds() > 3 {
		t.Fatalf("creds after a 3s renewal: %s", c)
	}
	// The agent renews it again before that end.
	testcluster.WaitFor(t, 5*time.Second, "the agent's own renewal", func() error {
		if info := e.lookup(t, id); time.Until(time.Unix(0, info.GetExpireTimeUnixNano())) < 10*time.Second {
			return fmt.Errorf("lease ends in %v", time.Until(time.Unix(0, info.GetExpireTimeUnixNano())))
		}
		return nil
	})
	// Revoked through the agent: dropped, and the next call gets new
	// credentials.
	if _, err := leases.Revoke(as(t, tok), &pb.LeaseRequest{LeaseId: id}); err != nil {
		t.Fatalf("revoke through the agent: %v", err)
	}
	next := creds(t, conn, tok, "reader")
	if next.err != nil || next.creds.GetUsername() == first.creds.GetUsername() || next.cache != "miss" {
		t.Fatalf("creds after a revocation through the agent: %s", next)
	}
	if err := e.pg.CanLogin(first.creds.GetUsername(), first.creds.GetPassword()); err == nil {
		t.Fatal("the revoked user still logs in")
	}

	// Errors of the cluster pass through.
	if c := creds(t, conn, tok, "no-such-role"); status.Code(c.err) == codes.OK || status.Code(c.err) == codes.Unavailable {
		t.Fatalf("creds of an unknown role: %s", c)
	}
	if c := creds(t, conn, "bogus-token", "reader"); status.Code(c.err) != codes.Unauthenticated {
		t.Fatalf("creds with a bogus token: %s", c)
	}
	if c := creds(t, conn, "", "reader"); status.Code(c.err) != codes.Unauthenticated || !strings.Contains(status.Convert(c.err).Message(), "-use-agent-token") {
		t.Fatalf("creds without a token on TCP: %s", c)
	}

	// On a unix socket with -use-agent-token, a caller without a token
	// gets the agent's own token's credentials.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cfg := dbAgentConfig(t, e.c)
	cfg.Upstream.Token = tok
	cfg.Listen, cfg.UseAgentToken = "unix://"+sock, true
	ag2 := startAgent(t, cfg)
	conn2 := dial(t, ag2.Addr()).conn
	c1, c2 := creds(t, conn2, "", "reader"), creds(t, conn2, "", "reader")
	if c1.err != nil || c2.err != nil || c1.creds.GetUsername() != c2.creds.GetUsername() {
		t.Fatalf("creds without a token over the socket: %s, %s", c1, c2)
	}
}

// TestAgentDatabaseStaticCreds: static-creds pass through (a rotation is
// seen at once); during an outage the last password read is served until
// the role's next scheduled rotation and never after it, then a clear
// error.
func TestAgentDatabaseStaticCreds(t *testing.T) {
	e := newDBEnv(t, 1)
	e.pg.Exec(t, `CREATE ROLE app_static LOGIN PASSWORD 'initial-Password-1'`)
	const period = 8 * time.Second
	if _, err := e.root.WriteDatabaseStaticRole(tctx(t), &pb.DatabaseStaticRole{Name: "app", DbName: "pg", Username: "app_static", RotationPeriodSeconds: int64(period / time.Second)}); err != nil {
		t.Fatal(err)
	}
	ag := startAgent(t, dbAgentConfig(t, e.c))
	conn := dial(t, ag.Addr()).conn
	tok := e.token(t)

	s1 := staticCreds(t, conn, tok, "app")
	if s1.err != nil || s1.cache != "miss" || s1.static.GetUsername() != "app_static" {
		t.Fatalf("static-creds through the agent: %s", s1)
	}
	if err := e.pg.CanLogin("app_static", s1.static.GetPassword()); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewDatabaseClient(conn).RotateRole(as(t, tok), &pb.DatabaseNameRequest{Name: "app"}); err != nil {
		t.Fatalf("rotate-role through the agent: %v", err)
	}
	s2 := staticCreds(t, conn, tok, "app")
	if s2.err != nil || s2.static.GetPassword() == s1.static.GetPassword() {
		t.Fatalf("static-creds after a rotation: %s", s2)
	}
	if err := e.pg.CanLogin("app_static", s2.static.GetPassword()); err != nil {
		t.Fatal(err)
	}
	direct, err := e.root.DatabaseStaticCreds(tctx(t), "app")
	if err != nil || direct.GetPassword() != s2.static.GetPassword() {
		t.Fatalf("direct static-creds %v %v", direct, err)
	}
	next := time.Unix(0, direct.GetLastVaultRotationUnixNano()).Add(period)

	e.c.KillAll()
	var last dbCall
	served := 0
	testcluster.WaitFor(t, 2*period, "the next rotation's time", func() error {
		c := staticCreds(t, conn, tok, "app")
		if c.err != nil {
			last = c
			return nil
		}
		served++
		if c.static.GetPassword() != s2.static.GetPassword() || c.cache != "stale" {
			t.Fatalf("static-creds during the outage: %s", c)
		}
		if !c.at.Before(next) {
			t.Fatalf("a static password served %v after its rotation was due", c.at.Sub(next))
		}
		return errors.New("still served")
	})
	msg := status.Convert(last.err).Message()
	if status.Code(last.err) != codes.Unavailable || api.Reason(last.err) != pb.ErrorReason_CACHE_TOO_STALE ||
		!strings.Contains(msg, "rotation") || !strings.Contains(msg, "cluster is unreachable") || strings.Contains(msg, s2.static.GetPassword()) {
		t.Fatalf("static-creds past the rotation: %v", last.err)
	}
	if served == 0 {
		t.Fatal("the static password was not served during the outage")
	}
	if early := next.Sub(last.at); early > 500*time.Millisecond+2*time.Second {
		t.Fatalf("refused %v before the rotation was due", early)
	}
	t.Logf("served %d times during the outage; refused %v before the rotation was due", served, next.Sub(last.at).Round(time.Millisecond))
}
