package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/internal/testcluster"
)

// testCtx is a context for one test's calls.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// num reads a JSON number of a vault/api answer as an int64.
func num(t *testing.T, v any) int64 {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok {
		t.Fatalf("%v (%T) is not a JSON number", v, v)
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// within reports whether got is want, or at most slack below it (the
// time passed between the write and the answer).
func within(got, want, slack int64) bool { return got <= want && got >= want-slack }

// wantStatus fails unless err is a vault/api error with the HTTP status.
func wantStatus(t *testing.T, what string, err error, status int) *vault.ResponseError {
	t.Helper()
	var re *vault.ResponseError
	if !errors.As(err, &re) || re.StatusCode != status {
		t.Fatalf("%s: want HTTP %d, got %v", what, status, err)
	}
	return re
}

// refused waits until cl's token is refused (403) on its node: a
// revocation is replicated, and a follower refuses the token once it
// applied it.
func refused(t *testing.T, what string, cl *vault.Client) {
	t.Helper()
	testcluster.WaitFor(t, 10*time.Second, what, func() error {
		_, err := cl.Auth().Token().LookupSelf()
		if statusOf(err) != http.StatusForbidden {
			return fmt.Errorf("the token still works: %v", err)
		}
		return nil
	})
}

func TestVaultTokens(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx := testCtx(t)

	for _, n := range c.Nodes() {
		root := vaultClient(t, c, n, c.Token, false)
		tokens := root.Auth().Token()

		// The root token: never expires (expire_time null), path root.
		self, err := tokens.LookupSelfWithContext(ctx)
		if err != nil {
			t.Fatalf("%s lookup-self: %v", n.ID, err)
		}
		if self.Data["expire_time"] != nil || self.Data["id"] != c.Token || num(t, self.Data["ttl"]) != 0 {
			t.Fatalf("%s root lookup-self: %v", n.ID, self.Data)
		}

		// A child with a TTL as Vault's client sends it ("1h").
		sec, err := tokens.CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{"default"}, TTL: "1h", DisplayName: "web"})
		if err != nil {
			t.Fatalf("%s create: %v", n.ID, err)
		}
		a := sec.Auth
		if a == nil || !strings.HasPrefix(a.ClientToken, "cof.") || a.Accessor == "" || !slices.Contains(a.Policies, "default") ||
			!slices.Equal(a.Policies, a.TokenPolicies) || !within(int64(a.LeaseDuration), 3600, 5) || !a.Renewable || a.Orphan {
			t.Fatalf("%s create: auth %+v", n.ID, a)
		}
		if tt, _ := sec.TokenIsRenewable(); !tt {
			t.Fatalf("%s: not renewable", n.ID)
		}

		// Lookup by token and by accessor, from this node.
		look, err := tokens.LookupWithContext(ctx, a.ClientToken)
		if err != nil {
			t.Fatalf("%s lookup: %v", n.ID, err)
		}
		d := look.Data
		if d["id"] != a.ClientToken || d["accessor"] != a.Accessor || d["display_name"] != "token-web" || d["path"] != "auth/token/create" ||
			d["type"] != "service" || d["orphan"] != false || d["renewable"] != true || num(t, d["creation_ttl"]) != 3600 ||
			!within(num(t, d["ttl"]), 3600, 5) {
			t.Fatalf("%s lookup: %v", n.ID, d)
		}
		exp, err := time.Parse(time.RFC3339, d["expire_time"].(string))
		if err != nil || exp.Sub(time.Now()) > time.Hour+5*time.Second || exp.Sub(time.Now()) < time.Hour-10*time.Second {
			t.Fatalf("%s expire_time %v: %v", n.ID, d["expire_time"], err)
		}
		byAcc, err := tokens.LookupAccessorWithContext(ctx, a.Accessor)
		if err != nil {
			t.Fatalf("%s lookup-accessor: %v", n.ID, err)
		}
		if byAcc.Data["id"] != "" || byAcc.Data["accessor"] != a.Accessor {
			t.Fatalf("%s lookup-accessor: %v", n.ID, byAcc.Data)
		}

		// The token itself: lookup-self (GET and POST), renew-self.
		own := vaultClient(t, c, n, a.ClientToken, false)
		ownSelf, err := own.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil || ownSelf.Data["id"] != a.ClientToken {
			t.Fatalf("%s own lookup-self: %v %v", n.ID, err, ownSelf)
		}
		post, err := own.Logical().WriteWithContext(ctx, "auth/token/lookup-self", nil)
		if err != nil || post.Data["accessor"] != a.Accessor {
			t.Fatalf("%s POST lookup-self: %v %v", n.ID, err, post)
		}
		ren, err := own.Auth().Token().RenewSelfWithContext(ctx, 7200)
		if err != nil {
			t.Fatalf("%s renew-self: %v", n.ID, err)
		}
		if ren.Auth.ClientToken != a.ClientToken || !within(int64(ren.Auth.LeaseDuration), 7200, 5) {
			t.Fatalf("%s renew-self: %+v", n.ID, ren.Auth)
		}

		// TTLs in Vault's other forms, an orphan, a bad TTL.
		num3600, err := root.Logical().WriteWithContext(ctx, "auth/token/create-orphan", map[string]any{"ttl": 3600, "policies": "default"})
		if err != nil || !within(int64(num3600.Auth.LeaseDuration), 3600, 5) || !num3600.Auth.Orphan {
			t.Fatalf("%s create-orphan ttl 3600: %v %+v", n.ID, err, num3600)
		}
		m30, err := tokens.CreateOrphanWithContext(ctx, &vault.TokenCreateRequest{TTL: "30m"})
		if err != nil || !within(int64(m30.Auth.LeaseDuration), 1800, 5) || !m30.Auth.Orphan {
			t.Fatalf("%s create-orphan 30m: %v %+v", n.ID, err, m30)
		}
		_, err = root.Logical().WriteWithContext(ctx, "auth/token/create", map[string]any{"ttl": "soon"})
		wantStatus(t, n.ID+" bad ttl", err, http.StatusBadRequest)

		// Revoke by accessor and by itself: the tokens stop working (403).
		if err := tokens.RevokeAccessorWithContext(ctx, num3600.Auth.Accessor); err != nil {
			t.Fatalf("%s revoke-accessor: %v", n.ID, err)
		}
		refused(t, n.ID+" revoked by accessor", vaultClient(t, c, n, num3600.Auth.ClientToken, false))
		if err := own.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
			t.Fatalf("%s revoke-self: %v", n.ID, err)
		}
		refused(t, n.ID+" revoked self", own)
		if err := tokens.RevokeTreeWithContext(ctx, m30.Auth.ClientToken); err != nil {
			t.Fatalf("%s revoke: %v", n.ID, err)
		}
		_, err = tokens.LookupWithContext(ctx, m30.Auth.ClientToken)
		if re := wantStatus(t, n.ID+" lookup of a revoked token", err, http.StatusForbidden); re.Errors[0] != "bad token" {
			t.Fatalf("%s lookup of a revoked token: %q", n.ID, re.Errors)
		}
		_, err = tokens.LookupAccessorWithContext(ctx, m30.Auth.Accessor)
		if re := wantStatus(t, n.ID+" lookup of a revoked accessor", err, http.StatusBadRequest); re.Errors[0] != "invalid accessor" {
			t.Fatalf("%s lookup of a revoked accessor: %q", n.ID, re.Errors)
		}
	}

	// No token on a token path: 403.
	_, err := vaultClient(t, c, leader, "", false).Auth().Token().LookupSelfWithContext(ctx)
	wantStatus(t, "no token", err, http.StatusForbidden)
	_, err = vaultClient(t, c, leader, "", false).Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{})
	wantStatus(t, "create without a token", err, http.StatusForbidden)
}

func TestVaultPolicies(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	c.WaitForLeader(t)
	ctx := testCtx(t)
	for _, n := range c.Nodes() {
		sys := vaultClient(t, c, n, c.Token, false).Sys()
		name := "app-" + n.ID
		text := `path "secret/data/app/*" { capabilities = ["read", "list"] }`
		if err := sys.PutPolicyWithContext(ctx, name, text); err != nil {
			t.Fatalf("%s put policy: %v", n.ID, err)
		}
		for _, m := range c.Nodes() {
			got, err := vaultClient(t, c, m, c.Token, false).Sys().GetPolicyWithContext(ctx, name)
			if err != nil || got != text {
				t.Fatalf("%s get policy from %s: %q %v", m.ID, n.ID, got, err)
			}
		}
		names, err := sys.ListPoliciesWithContext(ctx)
		if err != nil || !slices.Contains(names, name) || !slices.Contains(names, "default") || !slices.Contains(names, "root") {
			t.Fatalf("%s list policies: %v %v", n.ID, names, err)
		}
		legacy, err := vaultClient(t, c, n, c.Token, false).Logical().ReadWithContext(ctx, "sys/policy")
		if err != nil || !slices.Contains(legacy.Data["policies"].([]any), any(name)) {
			t.Fatalf("%s GET sys/policy: %v %v", n.ID, legacy, err)
		}
		old, err := vaultClient(t, c, n, c.Token, false).Logical().ReadWithContext(ctx, "sys/policy/"+name)
		if err != nil || old.Data["rules"] != text || old.Data["name"] != name {
			t.Fatalf("%s GET sys/policy/%s: %v %v", n.ID, name, old, err)
		}
		err = sys.PutPolicyWithContext(ctx, "broken", `path "secret/*" { capabilities = [`)
		wantStatus(t, n.ID+" broken policy", err, http.StatusBadRequest)

		// A token of the policy: its capabilities.
		tok, err := vaultClient(t, c, n, c.Token, false).Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{name}, TTL: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		csys := vaultClient(t, c, n, tok.Auth.ClientToken, false).Sys()
		caps, err := csys.CapabilitiesSelfWithContext(ctx, "secret/data/app/db")
		if err != nil || !slices.Equal(sorted(caps), []string{"list", "read"}) {
			t.Fatalf("%s capabilities-self: %v %v", n.ID, caps, err)
		}
		caps, err = csys.CapabilitiesSelfWithContext(ctx, "secret/data/other")
		if err != nil || !slices.Equal(caps, []string{"deny"}) {
			t.Fatalf("%s capabilities-self elsewhere: %v %v", n.ID, caps, err)
		}
		caps, err = sys.CapabilitiesWithContext(ctx, tok.Auth.ClientToken, "secret/data/app/db")
		if err != nil || !slices.Equal(sorted(caps), []string{"list", "read"}) {
			t.Fatalf("%s capabilities of another token: %v %v", n.ID, caps, err)
		}
		// The policy's token may not write policies.
		err = csys.PutPolicyWithContext(ctx, "mine", text)
		wantStatus(t, n.ID+" put policy without the right", err, http.StatusForbidden)

		if err := sys.DeletePolicyWithContext(ctx, name); err != nil {
			t.Fatalf("%s delete policy: %v", n.ID, err)
		}
		got, err := sys.GetPolicyWithContext(ctx, name)
		if err != nil || got != "" {
			t.Fatalf("%s get deleted policy: %q %v", n.ID, got, err)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestVaultLeastPrivilege: a policy granting read on secret/data/app/*,
// an AppRole with it, a login through a follower, then a read that works
// and a write that is refused with Vault's error.
func TestVaultLeastPrivilege(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx := testCtx(t)
	root := vaultClient(t, c, leader, c.Token, false)
	if err := root.Sys().PutPolicyWithContext(ctx, "app-read", `path "secret/data/app/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	if _, err := root.KVv2("secret").Put(ctx, "app/db", map[string]any{"password": "p1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.KVv2("secret").Put(ctx, "other/x", map[string]any{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	lg := root.Logical()
	if _, err := lg.WriteWithContext(ctx, "auth/approle/role/app", map[string]any{"token_policies": "app-read", "token_ttl": "1h", "token_max_ttl": 7200}); err != nil {
		t.Fatalf("write role: %v", err)
	}
	role, err := lg.ReadWithContext(ctx, "auth/approle/role/app")
	if err != nil || num(t, role.Data["token_ttl"]) != 3600 || num(t, role.Data["token_max_ttl"]) != 7200 ||
		!slices.Equal(role.Data["token_policies"].([]any), []any{"app-read"}) {
		t.Fatalf("read role: %v %v", role, err)
	}
	list, err := lg.ListWithContext(ctx, "auth/approle/role")
	if err != nil || !slices.Equal(list.Data["keys"].([]any), []any{"app"}) {
		t.Fatalf("list roles: %v %v", list, err)
	}
	rid, err := lg.ReadWithContext(ctx, "auth/approle/role/app/role-id")
	if err != nil {
		t.Fatal(err)
	}
	roleID, _ := rid.Data["role_id"].(string)
	sid, err := lg.WriteWithContext(ctx, "auth/approle/role/app/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	secretID, _ := sid.Data["secret_id"].(string)
	if roleID == "" || secretID == "" || sid.Data["secret_id_accessor"] == "" {
		t.Fatalf("role-id %v, secret-id %v", rid.Data, sid.Data)
	}

	for _, f := range c.Followers(leader) {
		app := vaultClient(t, c, f, "", false)
		// A bad secret_id is 400, as Vault.
		_, err := app.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": roleID, "secret_id": "wrong"})
		re := wantStatus(t, f.ID+" bad secret_id", err, http.StatusBadRequest)
		if len(re.Errors) == 0 || re.Errors[0] != "invalid role or secret ID" {
			t.Fatalf("%s bad secret_id errors: %q", f.ID, re.Errors)
		}
		sec, err := app.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": roleID, "secret_id": secretID})
		if err != nil {
			t.Fatalf("%s login: %v", f.ID, err)
		}
		if sec.Auth == nil || !slices.Contains(sec.Auth.Policies, "app-read") || !within(int64(sec.Auth.LeaseDuration), 3600, 5) || !sec.Auth.Orphan {
			t.Fatalf("%s login auth: %+v", f.ID, sec.Auth)
		}
		app.SetToken(sec.Auth.ClientToken)
		got, err := app.KVv2("secret").Get(ctx, "app/db")
		if err != nil || got.Data["password"] != "p1" {
			t.Fatalf("%s read: %v %v", f.ID, got, err)
		}
		_, err = app.KVv2("secret").Put(ctx, "app/db", map[string]any{"password": "mine"})
		re = wantStatus(t, f.ID+" write", err, http.StatusForbidden)
		if len(re.Errors) == 0 || !strings.Contains(re.Errors[0], "permission denied") {
			t.Fatalf("%s write errors: %q", f.ID, re.Errors)
		}
		_, err = app.KVv2("secret").Get(ctx, "other/x")
		wantStatus(t, f.ID+" read elsewhere", err, http.StatusForbidden)
		look, err := app.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil || look.Data["path"] != "auth/approle/login" || look.Data["display_name"] != "approle-app" {
			t.Fatalf("%s lookup-self of a login token: %v %v", f.ID, look, err)
		}
	}
	// The secret_id destroyed: it logs in no more.
	if _, err := lg.WriteWithContext(ctx, "auth/approle/role/app/secret-id-accessor/destroy", map[string]any{"secret_id_accessor": sid.Data["secret_id_accessor"]}); err != nil {
		t.Fatalf("destroy secret-id: %v", err)
	}
	_, err = vaultClient(t, c, leader, "", false).Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": roleID, "secret_id": secretID})
	wantStatus(t, "destroyed secret_id", err, http.StatusBadRequest)
	_, err = vaultClient(t, c, leader, "", false).Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": roleID})
	wantStatus(t, "no secret_id", err, http.StatusBadRequest)
	if _, err := lg.DeleteWithContext(ctx, "auth/approle/role/app"); err != nil {
		t.Fatalf("delete role: %v", err)
	}
	gone, err := lg.ReadWithContext(ctx, "auth/approle/role/app")
	if err != nil || gone != nil {
		t.Fatalf("deleted role read: %v %v", gone, err)
	}
}
