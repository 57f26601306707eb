package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/pgtest"
	"coffer/internal/testcluster"
)

// dbFixture is a three-node cluster and a real PostgreSQL, with the
// connection "pg" configured and a table the roles grant on.
type dbFixture struct {
	c      *Cluster
	leader *Node
	cl     *api.Client
	pg     *pgtest.Server
}

// userPrefix is how coffer's dynamic usernames begin (Vault's "v-").
const userPrefix = "v-"

func newDBFixture(t *testing.T, opts ClusterOptions) *dbFixture {
	t.Helper()
	pg := pgtest.Start(t)
	pg.Exec(t, `CREATE TABLE accounts (id int PRIMARY KEY, owner text); INSERT INTO accounts VALUES (1, 'ann')`)
	c, leader, cl := unsealedCluster(t, opts)
	f := &dbFixture{c: c, leader: leader, cl: cl, pg: pg}
	if _, err := cl.WriteDatabaseConfig(ctx(t), &pb.DatabaseConfig{
		Name: "pg", ConnectionUrl: pg.URLTemplate(), Username: pg.User, Password: pg.Password, AllowedRoles: []string{"*"},
		MaxOpenConnections: 8,
	}); err != nil {
		t.Fatalf("config write: %v", err)
	}
	return f
}

// readerRole writes a dynamic role whose users may read accounts.
func (f *dbFixture) readerRole(t *testing.T, name string, ttl, maxTTL time.Duration, revocation ...string) {
	t.Helper()
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{
		Name: name, DbName: "pg",
		CreationStatements: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON accounts TO "{{name}}";`},
		RevocationStatements: revocation,
		DefaultTtlSeconds:    int64(ttl / time.Second), MaxTtlSeconds: int64(maxTTL / time.Second),
	}); err != nil {
		t.Fatalf("role write: %v", err)
	}
}

// leases lists the live leases under database/creds/, page by page,
// from any running node.
func (f *dbFixture) leases(t *testing.T) []*pb.LeaseInfo {
	t.Helper()
	cl := f.c.Client(t)
	var out []*pb.LeaseInfo
	after := ""
	for {
		resp, err := cl.ListLeases(ctx(t), &pb.LeaseListRequest{Prefix: "database/creds/", After: after})
		if err != nil {
			t.Fatalf("lease list: %v", err)
		}
		for _, l := range resp.GetLeases() {
			out = append(out, l)
			after = l.GetId()
		}
		if !resp.GetMore() || len(resp.GetLeases()) == 0 {
			return out
		}
	}
}

// liveLeases lists the ids of the live leases.
func (f *dbFixture) liveLeases(t *testing.T) []string {
	t.Helper()
	var ids []string
	for _, l := range f.leases(t) {
		ids = append(ids, l.GetId())
	}
	return ids
}

// leaseUsers returns the database users of the live leases (their
// subject).
func (f *dbFixture) leaseUsers(t *testing.T) []string {
	t.Helper()
	var users []string
	for _, l := range f.leases(t) {
		users = append(users, l.GetSubject())
	}
	return users
}

// TestDatabaseCredsLifecycle: `creds` makes a user that logs in and may
// do what the creation statements grant and nothing more; a renewal moves
// its VALID UNTIL; after its TTL the leader drops it (checked in pg_roles)
// within a second; an explicit revoke drops another at once.
func TestDatabaseCredsLifecycle(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	f.readerRole(t, "reader", 2*time.Second, time.Minute)

	// Through a follower: the call is forwarded to the leader.
	fol := f.c.Followers(f.leader)[0]
	cl := f.c.Client(t, fol)
	creds, err := cl.DatabaseCreds(ctx(t), "reader")
	if err != nil {
		t.Fatalf("creds: %v", err)
	}
	if !strings.HasPrefix(creds.GetUsername(), userPrefix) || creds.GetPassword() == "" || !strings.HasPrefix(creds.GetLeaseId(), "database/creds/reader/") {
		t.Fatalf("creds = %+v", creds)
	}
	if creds.GetLeaseDurationSeconds() != 2 || !creds.GetRenewable() {
		t.Fatalf("lease: %ds renewable=%v, want 2s renewable", creds.GetLeaseDurationSeconds(), creds.GetRenewable())
	}
	conn := f.pg.Connect(t, creds.GetUsername(), creds.GetPassword())
	var owner string
	if err := conn.QueryRow(ctx(t), "SELECT owner FROM accounts WHERE id = 1").Scan(&owner); err != nil || owner != "ann" {
		t.Fatalf("select as the new user: %q, %v", owner, err)
	}
	if _, err := conn.Exec(ctx(t), "INSERT INTO accounts VALUES (2, 'bob')"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("insert as a reader: %v, want permission denied", err)
	}
	conn.Close(ctx(t))

	// Lookup on any node shows the lease.
	info, err := f.c.Client(t, fol).LookupLease(ctx(t), creds.GetLeaseId())
	if err != nil || info.GetState() != "active" || info.GetTtlSeconds() > 2 {
		t.Fatalf("lookup: %+v, %v", info, err)
	}

	// A second user, renewed: its VALID UNTIL moves with the lease.
	other, err := f.cl.DatabaseCreds(ctx(t), "reader")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := f.pg.ValidUntil(t, other.GetUsername())
	renewed, err := f.cl.RenewLease(ctx(t), other.GetLeaseId(), 30)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	after, ok := f.pg.ValidUntil(t, other.GetUsername())
	if !ok || !after.After(before.Add(20*time.Second)) || renewed.GetTtlSeconds() < 29 {
		t.Fatalf("renewal: VALID UNTIL %v → %v, ttl %d", before, after, renewed.GetTtlSeconds())
	}

	// The first user's lease ends after 2 s: the user is gone within a
	// second of that.
	expire := time.Unix(0, info.GetExpireTimeUnixNano())
	waitUntil(t, time.Until(expire)+time.Second, "the expired user dropped", func() bool {
		return !f.pg.RoleExists(t, creds.GetUsername())
	})
	if late := time.Since(expire); late > time.Second {
		t.Fatalf("the user was dropped %v after its lease ended", late)
	}
	// The lease goes right after its user (the worker drops the user, then
	// deletes the lease through Raft).
	waitUntil(t, 2*time.Second, "the revoked lease gone", func() bool {
		_, err := f.cl.LookupLease(ctx(t), creds.GetLeaseId())
		return api.IsNotFound(err)
	})

	// Revoked by hand: gone at once; the renewed one is still there.
	if _, err := f.cl.RevokeLease(ctx(t), other.GetLeaseId()); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if f.pg.RoleExists(t, other.GetUsername()) {
		t.Fatal("a revoked user still exists")
	}
	if err := f.pg.CanLogin(other.GetUsername(), other.GetPassword()); err == nil {
		t.Fatal("a revoked user still logs in")
	}
}

// TestDatabaseBadInput: a creation statement that fails returns
// PostgreSQL's message and leaves no lease and no user; a connection with
// a wrong password is refused at write; a role not allowed by its
// connection is refused; a lease quota refuses beyond it.
func TestDatabaseBadInput(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{MaxLeases: 4})
	c := ctx(t)
	if _, err := f.cl.WriteDatabaseRole(c, &pb.DatabaseRole{Name: "broken", DbName: "pg", CreationStatements: []string{`CREAT ROLE "{{name}}"`}}); err != nil {
		t.Fatal(err)
	}
	_, err := f.cl.DatabaseCreds(c, "broken")
	if err == nil || !strings.Contains(err.Error(), "syntax error") {
		t.Fatalf("creds of a broken role: %v, want PostgreSQL's syntax error", err)
	}
	if ids := f.liveLeases(t); len(ids) != 0 {
		t.Fatalf("leases after a failed creation: %v", ids)
	}
	if roles := f.pg.Roles(t, userPrefix); len(roles) != 0 {
		t.Fatalf("users after a failed creation: %v", roles)
	}

	_, err = f.cl.WriteDatabaseConfig(c, &pb.DatabaseConfig{Name: "wrong", ConnectionUrl: f.pg.URLTemplate(), Username: f.pg.User, Password: "not-the-password", AllowedRoles: []string{"*"}})
	if err == nil || strings.Contains(err.Error(), "not-the-password") || !strings.Contains(err.Error(), "wrong") {
		t.Fatalf("config with a wrong password: %v, want a refusal naming the connection and not the password", err)
	}
	if _, err := f.cl.ReadDatabaseConfig(c, "wrong"); !api.IsNotFound(err) {
		t.Fatalf("a refused config was stored: %v", err)
	}

	if _, err := f.cl.WriteDatabaseConfig(c, &pb.DatabaseConfig{Name: "narrow", ConnectionUrl: f.pg.URLTemplate(), Username: f.pg.User, Password: f.pg.Password, AllowedRoles: []string{"only-this"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.WriteDatabaseRole(c, &pb.DatabaseRole{Name: "elsewhere", DbName: "narrow", CreationStatements: []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'`}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.DatabaseCreds(c, "elsewhere"); err == nil || !strings.Contains(err.Error(), "allowed_roles") {
		t.Fatalf("creds through a connection that does not allow the role: %v", err)
	}

	// The config's password is never read back.
	cfg, err := f.cl.ReadDatabaseConfig(c, "pg")
	if err != nil || cfg.GetPassword() != "" || cfg.GetUsername() != f.pg.User {
		t.Fatalf("config read: %+v, %v", cfg, err)
	}

	// A role's quota: the third lease is refused.
	if _, err := f.cl.WriteDatabaseRole(c, &pb.DatabaseRole{Name: "two", DbName: "pg", MaxLeases: 2,
		CreationStatements: []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := f.cl.DatabaseCreds(c, "two")
		if i < 2 && err != nil {
			t.Fatalf("creds %d: %v", i, err)
		}
		if i == 2 && (err == nil || !strings.Contains(err.Error(), "limit")) {
			t.Fatalf("creds beyond max_leases: %v, want the quota's refusal", err)
		}
	}
	// The cluster's -max-leases (4 here): two more, then refused.
	if _, err := f.cl.WriteDatabaseRole(c, &pb.DatabaseRole{Name: "many", DbName: "pg",
		CreationStatements: []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := f.cl.DatabaseCreds(c, "many")
		if i < 2 && err != nil {
			t.Fatalf("creds %d under the cluster's quota: %v", i, err)
		}
		if i == 2 && (err == nil || !api.IsQuotaExceeded(err)) {
			t.Fatalf("creds beyond -max-leases: %v, want QUOTA_EXCEEDED", err)
		}
	}
	if roles := f.pg.Roles(t, userPrefix); len(roles) != 4 {
		t.Fatalf("%d users after the quotas refused, want the 4 leased ones", len(roles))
	}
}

// TestDatabaseStaticRole: a static role takes over an existing user's
// password, rotate-role changes it (the old one stops working), and
// static-creds always gives the one that logs in.
func TestDatabaseStaticRole(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	c := ctx(t)
	f.pg.Exec(t, `CREATE ROLE app_static LOGIN PASSWORD 'initial-Password-1'`)
	if _, err := f.cl.WriteDatabaseStaticRole(c, &pb.DatabaseStaticRole{Name: "app", DbName: "pg", Username: "app_static", RotationPeriodSeconds: 3600}); err != nil {
		t.Fatalf("static role write: %v", err)
	}
	if err := f.pg.CanLogin("app_static", "initial-Password-1"); err == nil {
		t.Fatal("the initial password still works after the static role took the user over")
	}
	first, err := f.cl.DatabaseStaticCreds(c, "app")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.pg.CanLogin("app_static", first.GetPassword()); err != nil {
		t.Fatalf("static-creds password: %v", err)
	}
	if first.GetTtlSeconds() <= 3500 || first.GetLastVaultRotationUnixNano() == 0 {
		t.Fatalf("static creds: %+v", first)
	}
	if _, err := f.cl.RotateDatabaseRole(c, "app"); err != nil {
		t.Fatalf("rotate-role: %v", err)
	}
	second, err := f.cl.DatabaseStaticCreds(c, "app")
	if err != nil {
		t.Fatal(err)
	}
	if second.GetPassword() == first.GetPassword() {
		t.Fatal("rotate-role kept the password")
	}
	if err := f.pg.CanLogin("app_static", second.GetPassword()); err != nil {
		t.Fatalf("the rotated password: %v", err)
	}
	if err := f.pg.CanLogin("app_static", first.GetPassword()); err == nil {
		t.Fatal("the old password still works after rotate-role")
	}
	if _, err := f.cl.WriteDatabaseStaticRole(c, &pb.DatabaseStaticRole{Name: "evil", DbName: "pg", Username: `x"; DROP ROLE postgres; --`}); err == nil {
		t.Fatal("a hostile username was accepted")
	}
}

// TestDatabaseRotateRoot: after rotate-root only coffer knows the
// management password, and creds still work.
func TestDatabaseRotateRoot(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	c := ctx(t)
	f.pg.Exec(t, `CREATE ROLE coffer_admin LOGIN CREATEROLE PASSWORD 'admin-Password-1'; GRANT SELECT ON accounts TO coffer_admin WITH GRANT OPTION`)
	if _, err := f.cl.WriteDatabaseConfig(c, &pb.DatabaseConfig{Name: "managed", ConnectionUrl: f.pg.URLTemplate(), Username: "coffer_admin", Password: "admin-Password-1", AllowedRoles: []string{"m"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.RotateDatabaseRoot(c, "managed"); err != nil {
		t.Fatalf("rotate-root: %v", err)
	}
	if err := f.pg.CanLogin("coffer_admin", "admin-Password-1"); err == nil {
		t.Fatal("the old management password still works after rotate-root")
	}
	if _, err := f.cl.WriteDatabaseRole(c, &pb.DatabaseRole{Name: "m", DbName: "managed",
		CreationStatements: []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON accounts TO "{{name}}"`}}); err != nil {
		t.Fatal(err)
	}
	cr, err := f.cl.DatabaseCreds(c, "m")
	if err != nil {
		t.Fatalf("creds after rotate-root: %v", err)
	}
	if err := f.pg.CanLogin(cr.GetUsername(), cr.GetPassword()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.RevokeLease(c, cr.GetLeaseId()); err != nil {
		t.Fatalf("revoke with the rotated management password: %v", err)
	}
}

// TestDatabaseDownThenBack: while the database is down creds fail with an
// error naming the connection, and a lease that falls due then is kept
// (listed as failed with its error) and revoked once the database is back.
func TestDatabaseDownThenBack(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	f.readerRole(t, "reader", 2*time.Second, time.Minute)
	cr, err := f.cl.DatabaseCreds(ctx(t), "reader")
	if err != nil {
		t.Fatal(err)
	}
	f.pg.Stop(t)
	_, err = f.cl.DatabaseCreds(ctx(t), "reader")
	if err == nil || !strings.Contains(err.Error(), `"pg"`) || !api.IsDatabaseUnreachable(err) {
		t.Fatalf("creds while the database is down: %v, want DATABASE_UNREACHABLE naming the connection", err)
	}
	// The lease falls due while the database is down: it fails and waits.
	waitUntil(t, 10*time.Second, "the lease listed as failed", func() bool {
		resp, err := f.cl.ListLeases(ctx(t), &pb.LeaseListRequest{Prefix: "database/creds/", Failed: true})
		return err == nil && len(resp.GetLeases()) == 1 && resp.GetLeases()[0].GetLastError() != ""
	})
	f.pg.Start(t)
	waitUntil(t, 30*time.Second, "the user dropped once the database is back", func() bool {
		return !f.pg.RoleExists(t, cr.GetUsername())
	})
	waitUntil(t, 10*time.Second, "the lease gone", func() bool {
		_, err := f.cl.LookupLease(ctx(t), cr.GetLeaseId())
		return api.IsNotFound(err)
	})
}

// TestDatabaseLeaderKillDuringExpiry: 200 leases fall due within a 3 s
// window and the leader is killed in the middle. Every user is dropped,
// none before its lease's end (the revocation statement records the
// database's clock), and the new leader's first revocation follows its
// election by under a second.
func TestDatabaseLeaderKillDuringExpiry(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	f.pg.Exec(t, `CREATE TABLE revoked (name text PRIMARY KEY, at timestamptz NOT NULL)`)
	revocation := `INSERT INTO revoked VALUES ('{{name}}', clock_timestamp()) ON CONFLICT DO NOTHING;
REVOKE ALL ON accounts FROM "{{name}}"; DROP ROLE IF EXISTS "{{name}}";`
	const n = 200
	// TTLs of 3, 4 and 5 s issued over about a second: due within ~3 s.
	for ttl := 3; ttl <= 5; ttl++ {
		f.readerRole(t, fmt.Sprintf("r%d", ttl), time.Duration(ttl)*time.Second, time.Minute, revocation)
	}
	type issued struct {
		user   string
		expire time.Time
	}
	all := make([]issued, n)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cr, err := f.cl.DatabaseCreds(c, fmt.Sprintf("r%d", 3+i%3))
			if err != nil {
				errs <- fmt.Errorf("creds %d: %w", i, err)
				return
			}
			info, err := f.cl.LookupLease(c, cr.GetLeaseId())
			if err != nil {
				errs <- err
				return
			}
			all[i] = issued{cr.GetUsername(), time.Unix(0, info.GetExpireTimeUnixNano())}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	first, last := all[0].expire, all[0].expire
	for _, l := range all {
		first, last = minTime(first, l.expire), maxTime(last, l.expire)
	}
	t.Logf("issued %d leases in %v, due from %v to %v", n, time.Since(start), first.Sub(start), last.Sub(start))
	mid := first.Add(last.Sub(first) / 2)
	time.Sleep(time.Until(mid)) // the schedule of the fault, not a synchronisation
	old := f.leader
	f.c.Kill(old)
	killed := time.Now()
	newLeader := f.c.WaitForNewLeader(t, old)
	elected := time.Now()
	t.Logf("leader %s killed; %s elected %v later", old.ID, newLeader.ID, elected.Sub(killed))

	waitUntil(t, time.Until(last)+15*time.Second, "every user dropped", func() bool {
		return len(f.pg.Roles(t, userPrefix)) == 0
	})
	at := map[string]time.Time{}
	rows, err := f.pg.Pool(t).Query(ctx(t), `SELECT name, at FROM revoked`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		var ts time.Time
		if err := rows.Scan(&name, &ts); err != nil {
			t.Fatal(err)
		}
		at[name] = ts
	}
	rows.Close()
	var firstAfterKill time.Time
	var lateness []time.Duration
	for _, l := range all {
		ts, ok := at[l.user]
		if !ok {
			t.Errorf("%s: dropped without its revocation statement", l.user)
			continue
		}
		if ts.Before(l.expire) {
			t.Errorf("%s revoked %v before its lease ended", l.user, l.expire.Sub(ts))
		}
		lateness = append(lateness, ts.Sub(l.expire))
		if ts.After(killed) && (firstAfterKill.IsZero() || ts.Before(firstAfterKill)) {
			firstAfterKill = ts
		}
	}
	slices.Sort(lateness)
	t.Logf("revocation after expiry: median %v, max %v", lateness[len(lateness)/2], lateness[len(lateness)-1])
	if firstAfterKill.IsZero() {
		t.Fatal("no revocation after the kill")
	}
	gap := firstAfterKill.Sub(elected)
	t.Logf("first revocation by the new leader %v after its election", gap)
	if gap > time.Second {
		t.Fatalf("the new leader's first revocation came %v after its election, want under 1s", gap)
	}
	// A lease goes a moment after its user: the worker deletes the leases
	// it revoked in a batch once their statements ran.
	waitUntil(t, 10*time.Second, "every lease removed", func() bool { return len(f.liveLeases(t)) == 0 })
}

// TestDatabaseLeaderKillDuringIssuance: 300 concurrent creds requests
// while the leader is killed twice. Afterwards (once the intents of the
// killed leaders fall due) the users coffer made in pg_roles are exactly
// the users of the live leases: no orphan, no lease without its user.
func TestDatabaseLeaderKillDuringIssuance(t *testing.T) {
	const window = 4 * time.Second
	f := newDBFixture(t, ClusterOptions{LeaseIntentWindow: window})
	f.readerRole(t, "reader", time.Hour, 2*time.Hour)
	const n = 300
	errs := make(chan error, n)
	ok := make(chan string, n)
	cl := f.c.Client(t)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cr, err := cl.DatabaseCreds(c, "reader")
			if err != nil {
				errs <- err
				return
			}
			ok <- cr.GetUsername()
		})
	}
	// Two kills, each once another 80 creds have been answered.
	for kill := range 2 {
		waitUntil(t, 20*time.Second, "some creds answered", func() bool { return len(ok)+len(errs) >= (kill+1)*80 })
		old := f.c.WaitForLeader(t)
		f.c.Kill(old)
		f.c.WaitForNewLeader(t, old)
		t.Logf("kill %d: %s; %d answered so far", kill+1, old.ID, len(ok)+len(errs))
		f.c.Restart(t, old)
		f.c.Unseal(t, old, 0)
	}
	waitUntil(t, 60*time.Second, "every creds call answered", func() bool { return len(ok)+len(errs) == n })
	wg.Wait()
	close(ok)
	close(errs)
	var failed []error
	for err := range errs {
		failed = append(failed, err)
	}
	t.Logf("%d creds succeeded, %d failed", n-len(failed), len(failed))
	for i, err := range failed {
		if i < 5 {
			t.Logf("failure: %v", err)
		}
		if !api.Retryable(err) && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("creds failed with a non-retryable error: %v", err)
		}
	}
	// Pending intents of the killed leaders fall due and are revoked.
	waitUntil(t, 3*window+10*time.Second, "no pending intent left", func() bool {
		for _, l := range f.leases(t) {
			if l.GetState() != "active" {
				return false
			}
		}
		return true
	})
	users := f.leaseUsers(t)
	roles := f.pg.Roles(t, userPrefix)
	slices.Sort(users)
	if !slices.Equal(users, roles) {
		t.Fatalf("live leases' users and coffer's users in pg_roles differ:\nleases %d: %v\nroles  %d: %v", len(users), head(users), len(roles), head(roles))
	}
	t.Logf("%d live leases, %d users: equal", len(users), len(roles))
}

// waitUntil polls cond until it holds, failing t after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testcluster.WaitFor(t, d, what, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
}

func head(s []string) []string {
	if len(s) > 10 {
		return s[:10]
	}
	return s
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// TestDatabaseStaticRotationAcrossFailover: a static role rotates every
// 5 s for a minute and the leader is killed in between. A client that
// logs in with what static-creds gave it, and after a failed login reads
// static-creds again, always logs in with the password it reads next.
func TestDatabaseStaticRotationAcrossFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for a minute")
	}
	f := newDBFixture(t, ClusterOptions{})
	f.pg.Exec(t, `CREATE ROLE app_rotating LOGIN PASSWORD 'initial-Password-1'`)
	if _, err := f.cl.WriteDatabaseStaticRole(ctx(t), &pb.DatabaseStaticRole{Name: "rot", DbName: "pg", Username: "app_rotating", RotationPeriodSeconds: 5}); err != nil {
		t.Fatal(err)
	}
	cl := f.c.Client(t)
	read := func() *pb.DatabaseStaticCreds {
		t.Helper()
		c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		sc, err := cl.DatabaseStaticCreds(c, "rot")
		if err != nil {
			t.Fatalf("static-creds: %v", err)
		}
		return sc
	}
	const run = time.Minute
	start := time.Now()
	killAt := start.Add(run / 2)
	killed := false
	cur := read()
	passwords := map[string]bool{cur.GetPassword(): true}
	logins, refused := 0, 0
	for time.Since(start) < run {
		if !killed && time.Now().After(killAt) {
			old := f.c.WaitForLeader(t)
			f.c.Kill(old)
			f.c.WaitForNewLeader(t, old)
			f.c.Restart(t, old)
			f.c.Unseal(t, old, 0)
			killed = true
			t.Logf("killed the leader %s at %v", old.ID, time.Since(start).Round(time.Millisecond))
		}
		if err := f.pg.CanLogin("app_rotating", cur.GetPassword()); err != nil {
			refused++
			next := read()
			if err := f.pg.CanLogin("app_rotating", next.GetPassword()); err != nil {
				t.Fatalf("after a refused login, static-creds gave a password that does not log in either (rotated at %v): %v",
					time.Unix(0, next.GetLastVaultRotationUnixNano()), err)
			}
			cur = next
			passwords[cur.GetPassword()] = true
		}
		logins++
		time.Sleep(100 * time.Millisecond) // the client's pace, not a synchronisation
	}
	t.Logf("%d logins, %d refused and recovered by one re-read, %d passwords seen", logins, refused, len(passwords))
	if len(passwords) < int(run/(5*time.Second))-3 {
		t.Fatalf("only %d passwords in %v with a 5s rotation period", len(passwords), run)
	}
}
