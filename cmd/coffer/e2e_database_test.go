package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/internal/pgtest"
	"coffer/internal/testcluster"
)

// TestDatabaseCommands: the database engine and the leases driven with
// the CLI against a dev server and a real PostgreSQL: a connection (its
// password never printed), a role from a statements file, `database
// creds` that logs in, `lease lookup|renew|list|revoke`, the user gone
// after its TTL, a static role and rotate-role, and one-line errors for a
// broken statement and a wrong password.
func TestDatabaseCommands(t *testing.T) {
	needBinary(t)
	pg := pgtest.Start(t)
	pg.Exec(t, `CREATE TABLE items (id int); CREATE ROLE app_static LOGIN PASSWORD 'first-Password-1'`)
	n := startDev(t)
	dir := t.TempDir()
	create := filepath.Join(dir, "create.sql")
	if err := os.WriteFile(create, []byte(`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON items TO "{{name}}";
`), 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "database", "config", "write", "-connection-url="+pg.URLTemplate(), "-username="+pg.User, "-password="+pg.Password,
		"-allowed-roles=app,short,static", "pg")
	cfg := n.mustRun(t, "database", "config", "read", "-format=json", "pg")
	if strings.Contains(cfg.stdout, pg.Password) || !strings.Contains(cfg.stdout, `"username": "`+pg.User+`"`) {
		t.Fatalf("config read: %s", cfg)
	}
	n.mustRun(t, "database", "role", "write", "-db=pg", "-creation-statements=@"+create, "-default-ttl=1h", "-max-ttl=2h", "app")
	if r := n.mustRun(t, "database", "role", "list"); strings.TrimSpace(r.stdout) != "app" {
		t.Fatalf("role list: %s", r)
	}

	m := hasKeys(t, n.mustRun(t, "database", "creds", "-format=json", "app"), "lease_id", "lease_duration", "renewable", "data")
	data := m["data"].(map[string]any)
	user, pw, lease := data["username"].(string), data["password"].(string), m["lease_id"].(string)
	if m["lease_duration"].(float64) != 3600 || m["renewable"] != true || !strings.HasPrefix(lease, "database/creds/app/") {
		t.Fatalf("creds: %v", m)
	}
	conn := pg.Connect(t, user, pw)
	if _, err := conn.Exec(t.Context(), "SELECT count(*) FROM items"); err != nil {
		t.Fatalf("select as the new user: %v", err)
	}
	if r := n.mustRun(t, "database", "creds", "app"); !strings.Contains(r.stdout, "lease_id") || !strings.Contains(r.stdout, "password") {
		t.Fatalf("creds table: %s", r)
	}

	look := hasKeys(t, n.mustRun(t, "lease", "lookup", "-format=json", lease), "id", "expire_time", "ttl", "state")
	if look["state"] != "active" || look["ttl"].(float64) > 3600 {
		t.Fatalf("lookup: %v", look)
	}
	ren := hasKeys(t, n.mustRun(t, "lease", "renew", "-format=json", "-increment=3h", lease), "ttl")
	if ren["ttl"].(float64) > 7200 {
		t.Fatalf("a renewal past max TTL: %v", ren)
	}
	if r := n.mustRun(t, "lease", "list", "-prefix=database/creds/app/"); strings.Count(r.stdout, "database/creds/app/") != 2 {
		t.Fatalf("lease list: %s", r)
	}
	n.mustRun(t, "lease", "revoke", lease)
	if pg.RoleExists(t, user) {
		t.Fatal("the user survived lease revoke")
	}
	n.mustRun(t, "lease", "revoke", "-prefix", "database/creds/app/")

	// A two-second lease: the user is gone soon after.
	n.mustRun(t, "database", "role", "write", "-db=pg", "-creation-statements=@"+create, "-default-ttl=2s", "short")
	short := hasKeys(t, n.mustRun(t, "database", "creds", "-format=json", "short"), "data")["data"].(map[string]any)["username"].(string)
	testcluster.WaitFor(t, 10*time.Second, "the user of a 2s lease dropped", func() error {
		if pg.RoleExists(t, short) {
			return errors.New("it still exists")
		}
		return nil
	})

	// Static role.
	n.mustRun(t, "database", "static-role", "write", "-db=pg", "-username=app_static", "-rotation-period=1h", "static")
	sc := hasKeys(t, n.mustRun(t, "database", "static-creds", "-format=json", "static"), "username", "password", "ttl", "last_vault_rotation")
	if err := pg.CanLogin("app_static", sc["password"].(string)); err != nil {
		t.Fatalf("static password: %v", err)
	}
	n.mustRun(t, "database", "rotate-role", "static")
	if err := pg.CanLogin("app_static", sc["password"].(string)); err == nil {
		t.Fatal("the old static password works after rotate-role")
	}

	// Errors: one line, with PostgreSQL's words; the password never.
	bad := filepath.Join(dir, "bad.sql")
	if err := os.WriteFile(bad, []byte(`CREAT ROLE "{{name}}"`), 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "database", "role", "write", "-db=pg", "-creation-statements=@"+bad, "broken")
	n.mustRun(t, "database", "config", "write", "-connection-url="+pg.URLTemplate(), "-username="+pg.User, "-password="+pg.Password, "-allowed-roles=*", "pg")
	wantErr(t, n.run(t, "database", "creds", "broken"), 1, "syntax error")
	r := n.run(t, "database", "config", "write", "-connection-url="+pg.URLTemplate(), "-username="+pg.User, "-password=wrong-Password-9", "-allowed-roles=*", "other")
	wantErr(t, r, 1, `"other"`)
	if strings.Contains(r.stderr, "wrong-Password-9") {
		t.Fatalf("the refused password is in the error: %s", r)
	}
	wantErr(t, n.run(t, "lease", "lookup", "database/creds/app/nope"), 2, "lease")

	// revoke-force forgets the lease and says the user stays.
	kept := hasKeys(t, n.mustRun(t, "database", "creds", "-format=json", "app"), "lease_id", "data")
	wantErr(t, n.run(t, "lease", "revoke", "-force", kept["lease_id"].(string)), 1, "-force works with -prefix only")
	r = n.mustRun(t, "lease", "revoke", "-force", "-prefix", "database/creds/app")
	if !strings.Contains(r.stdout, "Forgot 1 lease") || !strings.Contains(r.stderr, "WITHOUT revocation") {
		t.Fatalf("revoke -force: %s", r)
	}
	if !pg.RoleExists(t, kept["data"].(map[string]any)["username"].(string)) {
		t.Fatal("revoke -force dropped the user")
	}
	wantErr(t, n.run(t, "lease", "lookup", kept["lease_id"].(string)), 2, "lease")
}
