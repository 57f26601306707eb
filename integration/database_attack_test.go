package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Attacks on the database engine over a real three-node cluster and a
// real PostgreSQL: each does what an attacker would, then shows that
// nothing changed.

// leaseState is what a lease looks like to root: its id, state, user and
// expiry.
func (f *dbFixture) leaseState(t *testing.T, id string) string {
	t.Helper()
	info, err := f.cl.LookupLease(ctx(t), id)
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%s %s %s %d", info.GetId(), info.GetState(), info.GetSubject(), info.GetExpireTimeUnixNano())
}

// policyToken writes policy text under name and returns a client of node
// n with a token holding it (and the default policy).
func (f *dbFixture) policyToken(t *testing.T, name, text string, n *Node) *api.Client {
	t.Helper()
	if _, err := f.cl.WritePolicy(ctx(t), name, text); err != nil {
		t.Fatalf("write policy %s: %v", name, err)
	}
	tk, err := f.cl.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{name}, TtlSeconds: 3600, DisplayName: name})
	if err != nil {
		t.Fatal(err)
	}
	f.c.WaitForApplied(t, f.cl.LastWriteIndex())
	return tokenClient(t, f.c, tk.GetToken(), n)
}

// TestDatabaseCredsTokenGetsNothingElse: a token that may read
// database/creds/app (and holds the default policy) gets its own
// credentials and nothing else, through a follower and through the
// leader: not another role's credentials, not a connection, a role or a
// static role, not a static password, not a rotation, no lease list, no
// revocation of anyone's lease (its own included: Vault's default policy
// has no revoke either) and no revoke-prefix. Afterwards every lease,
// user, password and configuration is as it was.
func TestDatabaseCredsTokenGetsNothingElse(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	f.readerRole(t, "app", time.Hour, 2*time.Hour)
	f.readerRole(t, "app2", time.Hour, 2*time.Hour)
	f.pg.Exec(t, `CREATE ROLE app_static LOGIN PASSWORD 'initial-Password-1'`)
	if _, err := f.cl.WriteDatabaseStaticRole(ctx(t), &pb.DatabaseStaticRole{Name: "st", DbName: "pg", Username: "app_static", RotationPeriodSeconds: 3600}); err != nil {
		t.Fatal(err)
	}
	staticBefore, err := f.cl.DatabaseStaticCreds(ctx(t), "st")
	if err != nil {
		t.Fatal(err)
	}
	others := map[string]*pb.DatabaseCreds{}
	for _, role := range []string{"app", "app2"} {
		cr, err := f.cl.DatabaseCreds(ctx(t), role)
		if err != nil {
			t.Fatal(err)
		}
		others[role] = cr
	}
	cfgBefore, err := f.cl.ReadDatabaseConfig(ctx(t), "pg")
	if err != nil {
		t.Fatal(err)
	}

	for _, n := range []*Node{f.c.Followers(f.leader)[0], f.leader} {
		cl := f.policyToken(t, "app-creds-"+n.ID, `path "database/creds/app" { capabilities = ["read"] }`, n)
		own, err := cl.DatabaseCreds(ctx(t), "app")
		if err != nil {
			t.Fatalf("%s: the token's own creds: %v", n.ID, err)
		}
		attacks := map[string]func(c context.Context) error{
			"creds of app2": func(c context.Context) error { _, err := cl.DatabaseCreds(c, "app2"); return err },
			"read config":   func(c context.Context) error { _, err := cl.ReadDatabaseConfig(c, "pg"); return err },
			"list configs":  func(c context.Context) error { _, err := cl.ListDatabaseConfigs(c); return err },
			"point the connection elsewhere": func(c context.Context) error {
				_, err := cl.WriteDatabaseConfig(c, &pb.DatabaseConfig{Name: "pg", ConnectionUrl: "postgresql://{{username}}:{{password}}@127.0.0.1:1/x", Username: f.pg.User, AllowedRoles: []string{"*"}})
				return err
			},
			"delete config": func(c context.Context) error { _, err := cl.DeleteDatabaseConfig(c, "pg"); return err },
			"rotate root":   func(c context.Context) error { _, err := cl.RotateDatabaseRoot(c, "pg"); return err },
			"read role":     func(c context.Context) error { _, err := cl.ReadDatabaseRole(c, "app"); return err },
			"make app superuser": func(c context.Context) error {
				_, err := cl.WriteDatabaseRole(c, &pb.DatabaseRole{Name: "app", DbName: "pg", CreationStatements: []string{`CREATE ROLE "{{name}}" SUPERUSER LOGIN PASSWORD '{{password}}'`}})
				return err
			},
			"static creds":  func(c context.Context) error { _, err := cl.DatabaseStaticCreds(c, "st"); return err },
			"read static":   func(c context.Context) error { _, err := cl.ReadDatabaseStaticRole(c, "st"); return err },
			"rotate static": func(c context.Context) error { _, err := cl.RotateDatabaseRole(c, "st"); return err },
			"take over user": func(c context.Context) error {
				_, err := cl.WriteDatabaseStaticRole(c, &pb.DatabaseStaticRole{Name: "mine", DbName: "pg", Username: f.pg.User})
				return err
			},
			"list all leases": func(c context.Context) error {
				_, err := cl.ListLeases(c, &pb.LeaseListRequest{Prefix: ""})
				return err
			},
			"list app's leases": func(c context.Context) error {
				_, err := cl.ListLeases(c, &pb.LeaseListRequest{Prefix: "database/creds/app"})
				return err
			},
			"revoke app2's lease":        func(c context.Context) error { _, err := cl.RevokeLease(c, others["app2"].GetLeaseId()); return err },
			"revoke another's app lease": func(c context.Context) error { _, err := cl.RevokeLease(c, others["app"].GetLeaseId()); return err },
			"revoke its own lease":       func(c context.Context) error { _, err := cl.RevokeLease(c, own.GetLeaseId()); return err },
			"revoke-prefix app":          func(c context.Context) error { _, err := cl.RevokeLeasePrefix(c, "database/creds/app"); return err },
			"revoke-prefix all":          func(c context.Context) error { _, err := cl.RevokeLeasePrefix(c, "database"); return err },
		}
		for name, attack := range attacks {
			if err := attack(ctx(t)); !api.IsPermissionDenied(err) {
				t.Errorf("%s: %s: %v, want permission denied", n.ID, name, err)
			}
		}
		if st := f.leaseState(t, own.GetLeaseId()); !strings.Contains(st, " active ") {
			t.Errorf("%s: the token's own lease: %s", n.ID, st)
		}
	}

	for role, cr := range others {
		if st := f.leaseState(t, cr.GetLeaseId()); !strings.Contains(st, " active "+cr.GetUsername()) {
			t.Errorf("%s's lease after the attacks: %s", role, st)
		}
		if err := f.pg.CanLogin(cr.GetUsername(), cr.GetPassword()); err != nil {
			t.Errorf("%s's user after the attacks: %v", role, err)
		}
	}
	staticAfter, err := f.cl.DatabaseStaticCreds(ctx(t), "st")
	if err != nil || staticAfter.GetPassword() != staticBefore.GetPassword() {
		t.Errorf("the static password changed (%v)", err)
	}
	if err := f.pg.CanLogin(f.pg.User, f.pg.Password); err != nil {
		t.Errorf("the management password changed: %v", err)
	}
	cfgAfter, err := f.cl.ReadDatabaseConfig(ctx(t), "pg")
	if err != nil || cfgAfter.GetConnectionUrl() != cfgBefore.GetConnectionUrl() || !slices.Equal(cfgAfter.GetAllowedRoles(), cfgBefore.GetAllowedRoles()) {
		t.Errorf("the connection changed: %+v (%v)", cfgAfter, err)
	}
	role, err := f.cl.ReadDatabaseRole(ctx(t), "app")
	if err != nil || strings.Contains(strings.Join(role.GetCreationStatements(), " "), "SUPERUSER") {
		t.Errorf("the role changed: %v (%v)", role.GetCreationStatements(), err)
	}
}

// TestDatabaseLeasePrefixesStayUnderTheName: a token allowed to list and
// revoke the leases of database/creds/app (Vault's sudo paths, written
// without the trailing slash) names the prefix "database/creds/app",
// which as bytes also begins "database/creds/app2/…" and
// "database/creds/app-admin/…". It sees and revokes app's leases only:
// the other roles' leases and users stay.
func TestDatabaseLeasePrefixesStayUnderTheName(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{})
	leases := map[string][]*pb.DatabaseCreds{}
	for _, role := range []string{"app", "app2", "app-admin"} {
		f.readerRole(t, role, time.Hour, 2*time.Hour)
		for range 2 {
			cr, err := f.cl.DatabaseCreds(ctx(t), role)
			if err != nil {
				t.Fatal(err)
			}
			leases[role] = append(leases[role], cr)
		}
	}
	cl := f.policyToken(t, "app-leases", `
path "sys/leases/lookup/database/creds/app" { capabilities = ["list", "sudo"] }
path "sys/leases/revoke-prefix/database/creds/app" { capabilities = ["update", "sudo"] }
`, f.c.Followers(f.leader)[0])

	resp, err := cl.ListLeases(ctx(t), &pb.LeaseListRequest{Prefix: "database/creds/app"})
	if err == nil {
		for _, l := range resp.GetLeases() {
			if !strings.HasPrefix(l.GetId(), "database/creds/app/") {
				t.Errorf("listing database/creds/app showed %s", l.GetId())
			}
		}
	} else if !api.IsPermissionDenied(err) {
		t.Fatalf("list: %v", err)
	}
	n, err := cl.RevokeLeasePrefix(ctx(t), "database/creds/app")
	if err != nil {
		t.Fatalf("revoke-prefix: %v", err)
	}
	if n.GetCount() != int64(len(leases["app"])) {
		t.Errorf("revoke-prefix database/creds/app reached %d leases, want %d", n.GetCount(), len(leases["app"]))
	}
	waitUntil(t, 10*time.Second, "app's users dropped", func() bool {
		for _, cr := range leases["app"] {
			if f.pg.RoleExists(t, cr.GetUsername()) {
				return false
			}
		}
		return true
	})
	for _, role := range []string{"app2", "app-admin"} {
		for _, cr := range leases[role] {
			if st := f.leaseState(t, cr.GetLeaseId()); !strings.Contains(st, " active ") {
				t.Errorf("%s's lease after revoke-prefix of app: %s", role, st)
			}
			if err := f.pg.CanLogin(cr.GetUsername(), cr.GetPassword()); err != nil {
				t.Errorf("%s's user after revoke-prefix of app: %v", role, err)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDatabaseSecretsStayOutOfLogsAndAudit: a run of everything that
// handles a database password — connections written (also with a wrong
// password, refused), credentials issued, renewed, revoked (also while
// the database is down, so that failures are logged and recorded), a
// failing creation, a static role taken over, read and rotated, and
// rotate-root — at debug level with an audit file on every node. No
// node's log line, audit file or answered error holds any of the
// passwords: the management user's (before and after rotate-root), the
// generated ones, the static ones and the wrong one.
func TestDatabaseSecretsStayOutOfLogsAndAudit(t *testing.T) {
	logs := &syncBuffer{}
	f := newDBFixture(t, ClusterOptions{AuditFiles: true, LogTap: logs})
	c := ctx(t)
	const mgrPassword = "Mgr-password-0123456789"
	const wrongPassword = "Wrong-password-9876543210"
	const initialStatic = "Static-initial-password-1"
	f.pg.Exec(t, `CREATE ROLE coffer_mgr LOGIN SUPERUSER PASSWORD '`+mgrPassword+`';
CREATE ROLE app_static LOGIN PASSWORD '`+initialStatic+`';
CREATE TABLE root_passwords (pw text)`)
	secrets := []string{mgrPassword, wrongPassword, initialStatic, f.pg.Password}
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}

	_, err := f.cl.WriteDatabaseConfig(c, &pb.DatabaseConfig{Name: "mgr", ConnectionUrl: f.pg.URLTemplate(), Username: "coffer_mgr", Password: wrongPassword, AllowedRoles: []string{"*"}})
	if err == nil {
		t.Fatal("a wrong management password was accepted")
	}
	note(err)
	if _, err := f.cl.WriteDatabaseConfig(c, &pb.DatabaseConfig{Name: "mgr", ConnectionUrl: f.pg.URLTemplate(), Username: "coffer_mgr", Password: mgrPassword,
		AllowedRoles: []string{"*"}, RootRotationStatements: []string{`ALTER USER "{{username}}" WITH PASSWORD '{{password}}'; INSERT INTO root_passwords VALUES ('{{password}}')`}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*pb.DatabaseRole{
		{Name: "app", DbName: "mgr", CreationStatements: []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}, DefaultTtlSeconds: 60},
		// PostgreSQL quotes the token it stumbles on: the password literal.
		{Name: "broken", DbName: "mgr", CreationStatements: []string{`CREATE ROLE "{{name}}" LOGIN '{{password}}'`}},
	} {
		if _, err := f.cl.WriteDatabaseRole(c, r); err != nil {
			t.Fatal(err)
		}
	}
	var issued []*pb.DatabaseCreds
	for range 3 {
		cr, err := f.cl.DatabaseCreds(c, "app")
		if err != nil {
			t.Fatal(err)
		}
		issued = append(issued, cr)
		secrets = append(secrets, cr.GetPassword())
	}
	_, err = f.cl.DatabaseCreds(c, "broken")
	if err == nil {
		t.Fatal("the broken role issued creds")
	}
	note(err)
	if _, err := f.cl.RenewLease(c, issued[0].GetLeaseId(), 120); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.RevokeLease(c, issued[0].GetLeaseId()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.WriteDatabaseStaticRole(c, &pb.DatabaseStaticRole{Name: "st", DbName: "mgr", Username: "app_static", RotationPeriodSeconds: 3600}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		sc, err := f.cl.DatabaseStaticCreds(c, "st")
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, sc.GetPassword())
		if _, err := f.cl.RotateDatabaseRole(c, "st"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.cl.RotateDatabaseRoot(c, "mgr"); err != nil {
		t.Fatal(err)
	}
	var rootPassword string
	if err := f.pg.Pool(t).QueryRow(c, `SELECT pw FROM root_passwords`).Scan(&rootPassword); err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, rootPassword)
	cr, err := f.cl.DatabaseCreds(c, "app")
	if err != nil {
		t.Fatalf("creds after rotate-root: %v", err)
	}
	issued = append(issued, cr)
	secrets = append(secrets, cr.GetPassword())

	// The database down: a revocation fails (logged, recorded, answered).
	f.pg.Stop(t)
	_, err = f.cl.RevokeLease(c, issued[1].GetLeaseId())
	if err == nil {
		t.Fatal("a revocation succeeded with the database down")
	}
	note(err)
	_, err = f.cl.DatabaseCreds(c, "app")
	note(err)
	f.pg.Start(t)
	waitUntil(t, 30*time.Second, "the failed revocation completed", func() bool {
		_, err := f.cl.LookupLease(ctx(t), issued[1].GetLeaseId())
		return api.IsNotFound(err)
	})

	found := func(where, text string) {
		t.Helper()
		for i, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s holds password #%d", where, i)
			}
		}
	}
	for _, n := range f.c.Nodes() {
		raw, err := os.ReadFile(n.AuditFile())
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) == 0 {
			t.Fatalf("%s: the audit file is empty", n.ID)
		}
		found(n.ID+"'s audit file", string(raw))
	}
	text := logs.String()
	if !strings.Contains(text, "[DEBUG]") || !strings.Contains(text, "revocation failed") {
		t.Fatalf("the log tap did not see the run at debug level (%d bytes)", len(text))
	}
	found("the nodes' logs", text)
	for _, e := range errs {
		found("an answered error", e)
	}
	t.Logf("%d passwords looked for in %d bytes of logs and %d errors", len(secrets), len(text), len(errs))
}

// TestDatabaseQuotasHoldUnderConcurrentCreds: 40 creds requests at once,
// spread over the three nodes, against a role with max_leases 5 and then
// against a role without one on a cluster run with -max-leases 8. Exactly
// the quota is issued (the state machine checks it, one command at a
// time), every other request is refused with QUOTA_EXCEEDED, and the
// users in PostgreSQL are exactly those of the leases.
func TestDatabaseQuotasHoldUnderConcurrentCreds(t *testing.T) {
	f := newDBFixture(t, ClusterOptions{MaxLeases: 8})
	create := []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{Name: "five", DbName: "pg", CreationStatements: create, MaxLeases: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{Name: "open", DbName: "pg", CreationStatements: create}); err != nil {
		t.Fatal(err)
	}
	var clients []*api.Client
	for _, n := range f.c.Nodes() {
		clients = append(clients, f.c.Client(t, n))
	}
	storm := func(role string) (ok int) {
		const n = 40
		var wg sync.WaitGroup
		results := make(chan error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_, err := clients[i%len(clients)].DatabaseCreds(c, role)
				results <- err
			})
		}
		close(start)
		wg.Wait()
		close(results)
		for err := range results {
			switch {
			case err == nil:
				ok++
			case api.Reason(err) != pb.ErrorReason_QUOTA_EXCEEDED:
				t.Errorf("%s: a refusal other than the quota's: %v", role, err)
			}
		}
		return ok
	}
	if ok := storm("five"); ok != 5 {
		t.Fatalf("role with max_leases 5: %d creds issued", ok)
	}
	if ok := storm("open"); ok != 3 {
		t.Fatalf("-max-leases 8 with 5 live: %d more creds issued, want 3", ok)
	}
	users := f.leaseUsers(t)
	slices.Sort(users)
	if roles := f.pg.Roles(t, userPrefix); len(users) != 8 || !slices.Equal(users, roles) {
		t.Fatalf("leases' users %v, users in PostgreSQL %v", users, roles)
	}
}
