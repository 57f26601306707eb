package httpapi_test

import (
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/internal/pgtest"
	"coffer/internal/testcluster"
)

// TestVaultDatabaseEngine drives the database engine and the leases with
// hashicorp/vault/api as Vault's own tools do: `vault write
// database/config/…`, `vault read database/creds/app`, `vault lease
// renew|lookup|revoke`, static roles, and a policy that grants creds and
// nothing else, through a follower of a TLS cluster.
func TestVaultDatabaseEngine(t *testing.T) {
	pg := pgtest.Start(t)
	pg.Exec(t, `CREATE TABLE orders (id int); CREATE ROLE app_static LOGIN PASSWORD 'first-Password-1'`)
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	fol := c.Followers(leader)[0]
	root := vaultClient(t, c, fol, c.Token, false)
	lg := root.Logical()
	ctx := testCtx(t)

	if _, err := lg.WriteWithContext(ctx, "database/config/pg", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": pg.URLTemplate(),
		"username": pg.User, "password": pg.Password, "allowed_roles": "app,static-app",
	}); err != nil {
		t.Fatalf("config write: %v", err)
	}
	cfg, err := lg.ReadWithContext(ctx, "database/config/pg")
	if err != nil || cfg == nil {
		t.Fatalf("config read: %v", err)
	}
	details, _ := cfg.Data["connection_details"].(map[string]any)
	if details["username"] != pg.User || strings.Contains(cfg.Data["connection_details"].(map[string]any)["connection_url"].(string), pg.Password) {
		t.Fatalf("config read: %v", cfg.Data)
	}
	if _, err := lg.WriteWithContext(ctx, "database/roles/app", map[string]any{
		"db_name":             "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON orders TO "{{name}}";`,
		"default_ttl":         "1h", "max_ttl": "24h",
	}); err != nil {
		t.Fatalf("role write: %v", err)
	}
	keys, err := lg.ListWithContext(ctx, "database/roles")
	if err != nil || keys == nil || len(keys.Data["keys"].([]any)) != 1 {
		t.Fatalf("role list: %v %v", keys, err)
	}

	// A token whose policy grants creds and lease renewal only.
	if err := root.Sys().PutPolicyWithContext(ctx, "app-db", `path "database/creds/app" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	tok, err := root.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{"app-db"}})
	if err != nil {
		t.Fatal(err)
	}
	app := vaultClient(t, c, fol, tok.Auth.ClientToken, false)
	s, err := app.Logical().ReadWithContext(ctx, "database/creds/app")
	if err != nil {
		t.Fatalf("vault read database/creds/app: %v", err)
	}
	user, _ := s.Data["username"].(string)
	pw, _ := s.Data["password"].(string)
	if s.LeaseID == "" || !strings.HasPrefix(s.LeaseID, "database/creds/app/") || s.LeaseDuration != 3600 || !s.Renewable || user == "" || pw == "" {
		t.Fatalf("creds: lease %q %ds renewable=%v data %v", s.LeaseID, s.LeaseDuration, s.Renewable, s.Data)
	}
	if err := pg.CanLogin(user, pw); err != nil {
		t.Fatalf("login with vault-read creds: %v", err)
	}
	wantStatus(t, "config read with the app token", func() error { _, err := app.Logical().ReadWithContext(ctx, "database/config/pg"); return err }(), 403)

	// update on an existing role is enough to change it; creating one
	// asks create (Vault's distinction).
	if err := root.Sys().PutPolicyWithContext(ctx, "role-editor", `path "database/roles/*" { capabilities = ["update"] }`); err != nil {
		t.Fatal(err)
	}
	ed, err := root.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{"role-editor"}})
	if err != nil {
		t.Fatal(err)
	}
	editor := vaultClient(t, c, fol, ed.Auth.ClientToken, false).Logical()
	role := map[string]any{"db_name": "pg", "creation_statements": `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'`, "default_ttl": "30m"}
	if _, err := editor.WriteWithContext(ctx, "database/roles/app", role); err != nil {
		t.Fatalf("update of an existing role with update: %v", err)
	}
	wantStatus(t, "creating a role with update only", func() error { _, err := editor.WriteWithContext(ctx, "database/roles/new", role); return err }(), 403)
	if _, err := lg.WriteWithContext(ctx, "database/roles/app", map[string]any{
		"db_name":             "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON orders TO "{{name}}";`,
		"default_ttl":         "1h", "max_ttl": "24h",
	}); err != nil {
		t.Fatal(err)
	}

	// The default policy renews and looks up leases.
	renewed, err := app.Sys().RenewWithContext(ctx, s.LeaseID, 600)
	if err != nil || renewed.LeaseID != s.LeaseID || renewed.LeaseDuration != 600 || !renewed.Renewable {
		t.Fatalf("renew: %+v, %v", renewed, err)
	}
	if until, ok := pg.ValidUntil(t, user); !ok || until.After(time.Now().Add(11*time.Minute)) {
		t.Fatalf("VALID UNTIL after a renewal to 10m: %v", until)
	}
	look, err := app.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": s.LeaseID})
	if err != nil || look.Data["id"] != s.LeaseID || num(t, look.Data["ttl"]) > 600 {
		t.Fatalf("lookup: %v, %v", look, err)
	}
	// Listing leases needs sudo: the app token may not, root may.
	wantStatus(t, "lease list without sudo", func() error {
		_, err := app.Logical().ListWithContext(ctx, "sys/leases/lookup/database/creds/app/")
		return err
	}(), 403)
	list, err := lg.ListWithContext(ctx, "sys/leases/lookup/database/creds/app/")
	if err != nil || list == nil || len(list.Data["keys"].([]any)) != 1 || !strings.HasSuffix(s.LeaseID, list.Data["keys"].([]any)[0].(string)) {
		t.Fatalf("lease list: %v, %v", list, err)
	}
	if err := root.Sys().RevokeWithContext(ctx, s.LeaseID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if pg.RoleExists(t, user) {
		t.Fatal("the user survived vault lease revoke")
	}

	// revoke-prefix: three users, all gone once the worker is through.
	var users []string
	for range 3 {
		s, err := lg.ReadWithContext(ctx, "database/creds/app")
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, s.Data["username"].(string))
	}
	if err := root.Sys().RevokePrefixWithContext(ctx, "database/creds/app"); err != nil {
		t.Fatalf("revoke-prefix: %v", err)
	}
	testcluster.WaitFor(t, 10*time.Second, "users under the prefix dropped", func() error {
		for _, u := range users {
			if pg.RoleExists(t, u) {
				return errUserLeft(u)
			}
		}
		return nil
	})

	// Static roles.
	if _, err := lg.WriteWithContext(ctx, "database/static-roles/static-app", map[string]any{"db_name": "pg", "username": "app_static", "rotation_period": "1h"}); err != nil {
		t.Fatalf("static role: %v", err)
	}
	sc, err := lg.ReadWithContext(ctx, "database/static-creds/static-app")
	if err != nil || sc.Data["username"] != "app_static" || num(t, sc.Data["rotation_period"]) != 3600 {
		t.Fatalf("static-creds: %v, %v", sc, err)
	}
	if err := pg.CanLogin("app_static", sc.Data["password"].(string)); err != nil {
		t.Fatalf("static password: %v", err)
	}
	if _, err := lg.WriteWithContext(ctx, "database/rotate-role/static-app", nil); err != nil {
		t.Fatalf("rotate-role: %v", err)
	}
	if err := pg.CanLogin("app_static", sc.Data["password"].(string)); err == nil {
		t.Fatal("the old static password works after rotate-role")
	}
}

type errUserLeft string

func (e errUserLeft) Error() string { return "user " + string(e) + " still exists" }

// TestVaultDatabaseBadDurations: negative and huge durations and counts
// in database and lease requests are refused with 400 and change nothing:
// no role is written, the lease keeps its expiry.
func TestVaultDatabaseBadDurations(t *testing.T) {
	pg := pgtest.Start(t)
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{HTTP: true, Standalone: true})
	root := vaultClient(t, c, c.WaitForLeader(t), c.Token, false)
	lg := root.Logical()
	ctx := testCtx(t)
	if _, err := lg.WriteWithContext(ctx, "database/config/pg", map[string]any{
		"connection_url": pg.URLTemplate(), "username": pg.User, "password": pg.Password, "allowed_roles": "*",
	}); err != nil {
		t.Fatal(err)
	}
	create := `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`
	for name, body := range map[string]map[string]any{
		"negative default_ttl":       {"default_ttl": "-1"},
		"negative max_ttl":           {"max_ttl": "-1h"},
		"default_ttl of 110 years":   {"default_ttl": "40000d"},
		"max_ttl of 10^12 seconds":   {"max_ttl": "1e12"},
		"negative max_leases":        {"max_leases": -1},
		"default_ttl over max_ttl":   {"default_ttl": "2h", "max_ttl": "1h"},
		"max_ttl past int64 seconds": {"max_ttl": "9223372036854775807"},
	} {
		body["db_name"], body["creation_statements"] = "pg", create
		_, err := lg.WriteWithContext(ctx, "database/roles/bad", body)
		wantStatus(t, name, err, 400)
	}
	if r, err := lg.ReadWithContext(ctx, "database/roles/bad"); err != nil || r != nil {
		t.Fatalf("a refused role was stored: %v, %v", r, err)
	}
	for name, period := range map[string]string{"negative": "-5", "110 years": "40000d"} {
		_, err := lg.WriteWithContext(ctx, "database/static-roles/bad", map[string]any{"db_name": "pg", "username": pg.User, "rotation_period": period})
		wantStatus(t, "rotation_period "+name, err, 400)
	}

	if _, err := lg.WriteWithContext(ctx, "database/roles/app", map[string]any{"db_name": "pg", "creation_statements": create, "default_ttl": "1h", "max_ttl": "2h"}); err != nil {
		t.Fatal(err)
	}
	s, err := lg.ReadWithContext(ctx, "database/creds/app")
	if err != nil {
		t.Fatal(err)
	}
	before, err := lg.WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": s.LeaseID})
	if err != nil {
		t.Fatal(err)
	}
	for name, inc := range map[string]any{"negative": -5, "10^12 seconds": "1e12", "110 years": "40000d"} {
		_, err := lg.WriteWithContext(ctx, "sys/leases/renew", map[string]any{"lease_id": s.LeaseID, "increment": inc})
		wantStatus(t, "renew increment "+name, err, 400)
	}
	after, err := lg.WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": s.LeaseID})
	if err != nil || after.Data["expire_time"] != before.Data["expire_time"] || after.Data["last_renewal"] != nil {
		t.Fatalf("the lease changed after refused renewals: %v → %v (%v)", before.Data, after.Data, err)
	}
}
