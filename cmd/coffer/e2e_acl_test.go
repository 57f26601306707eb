package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPolicyAndTokenCommands: a policy written with the CLI limits a token
// created with the CLI; a denied call exits 1 with one line naming the
// capability and the path; lint reports a deny overridden by a more
// specific rule; lookup, capabilities, renew and revoke work as their
// contract says.
func TestPolicyAndTokenCommands(t *testing.T) {
	needBinary(t)
	n := startDev(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "payments.hcl")
	if err := os.WriteFile(pol, []byte(`path "secret/data/payments/*" {
  capabilities = ["read"]
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "kv", "put", "secret/payments/db", "password=s3cret-marker")
	n.mustRun(t, "kv", "put", "secret/admin/key", "k=v")
	n.mustRun(t, "policy", "write", "payments", pol)
	if r := n.mustRun(t, "policy", "list"); !strings.Contains(r.stdout, "payments\n") || !strings.Contains(r.stdout, "default\n") || !strings.Contains(r.stdout, "root\n") {
		t.Fatalf("policy list: %s", r)
	}
	if r := n.mustRun(t, "policy", "read", "payments"); !strings.Contains(r.stdout, `"secret/data/payments/*"`) {
		t.Fatalf("policy read: %s", r)
	}

	r := n.mustRun(t, "token", "create", "-policy=payments", "-ttl=1h", "-format=json")
	m := hasKeys(t, r, "token", "accessor", "policies", "ttl", "renewable", "type", "expire_time")
	tok, acc := m["token"].(string), m["accessor"].(string)
	if m["type"] != "service" || m["ttl"].(float64) != 3600 || !strings.HasPrefix(tok, "cof.") || acc == "" {
		t.Fatalf("token create: %s", r)
	}
	if exp, err := time.Parse(time.RFC3339, m["expire_time"].(string)); err != nil || time.Until(exp) < 59*time.Minute || time.Until(exp) > 61*time.Minute {
		t.Fatalf("expire_time %q (%v): want an hour from now", m["expire_time"], err)
	}

	as := func(args ...string) result {
		return runCLI(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + tok}, "", args...)
	}
	if r := as("kv", "get", "-field=password", "secret/payments/db"); r.code != 0 || strings.TrimSpace(r.stdout) != "s3cret-marker" {
		t.Fatalf("read under the policy: %s", r)
	}
	wantErr(t, as("kv", "get", "secret/admin/key"), 1, "permission denied: read on secret/data/admin/key")
	wantErr(t, as("kv", "put", "secret/payments/db", "password=x"), 1, "permission denied: update on secret/data/payments/db")
	if r := as("token", "capabilities", "secret/data/payments/db"); r.code != 0 || strings.TrimSpace(r.stdout) != "read" {
		t.Fatalf("token capabilities: %s", r)
	}
	if r := as("token", "capabilities", "secret/data/admin/key"); r.code != 0 || strings.TrimSpace(r.stdout) != "deny" {
		t.Fatalf("token capabilities of a denied path: %s", r)
	}
	if r := n.mustRun(t, "token", "lookup", "-accessor", "-format=json", acc); strings.Contains(r.stdout, tok) {
		t.Fatalf("lookup by accessor printed the token: %s", r)
	}
	if r := as("token", "renew", "-increment=2h", "-format=json"); r.code != 0 || !strings.Contains(r.stdout, `"ttl": 7200`) {
		t.Fatalf("token renew: %s", r)
	}

	batch := n.mustRun(t, "token", "create", "-type=batch", "-policy=payments", "-ttl=10m", "-format=json")
	bm := hasKeys(t, batch, "token", "accessor", "type")
	if bm["type"] != "batch" || bm["accessor"] != "" || !strings.HasPrefix(bm["token"].(string), "cob.") {
		t.Fatalf("batch token: %s", batch)
	}
	if r := runCLI(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + bm["token"].(string)}, "", "kv", "get", "secret/payments/db"); r.code != 0 {
		t.Fatalf("read with the batch token: %s", r)
	}

	n.mustRun(t, "token", "revoke", tok)
	wantErr(t, as("kv", "get", "secret/payments/db"), 1, "token")

	// Lint: the deny on secret/data/* is overridden for payments/*.
	lint := filepath.Join(dir, "lint.hcl")
	if err := os.WriteFile(lint, []byte(`path "secret/data/*" { capabilities = ["deny"] }
path "secret/data/payments/*" { capabilities = ["read"] }
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := n.run(t, "policy", "lint", lint); r.code != 2 || !strings.Contains(r.stdout, "secret/data/*") {
		t.Fatalf("policy lint: %s", r)
	}
	bad := filepath.Join(dir, "bad.hcl")
	if err := os.WriteFile(bad, []byte("path \"secret/data/x\" {\n  capabilities = [\"reed\"]\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantErr(t, n.run(t, "policy", "write", "bad", bad), 1, "line 2")
	wantErr(t, n.run(t, "policy", "delete", "root"), 1, "cannot be deleted")
}

// TestGenerateRootCommand: -init prints a nonce and an OTP, one share
// (a dev node has one) completes it, -decode with the OTP gives a root
// token that works.
func TestGenerateRootCommand(t *testing.T) {
	needBinary(t)
	n := startDev(t)
	m := regexp.MustCompile(`Unseal Key: (\S+)`).FindStringSubmatch(n.stdout.String())
	if m == nil {
		t.Fatalf("no unseal key in the dev banner:\n%s", n.stdout.String())
	}
	r := n.mustRun(t, "operator", "generate-root", "-init", "-format=json")
	init := hasKeys(t, r, "nonce", "otp", "otp_length", "required", "started")
	if init["started"] != true || init["otp_length"].(float64) != 30 {
		t.Fatalf("init: %s", r)
	}
	wantErr(t, n.run(t, "operator", "generate-root", "-init"), 1, "in progress")
	r = n.mustRun(t, "operator", "generate-root", "-format=json", "-nonce="+init["nonce"].(string), m[1])
	done := hasKeys(t, r, "complete", "encoded_token", "encoded_root_token")
	if done["complete"] != true || done["encoded_token"] == "" {
		t.Fatalf("update: %s", r)
	}
	r = n.mustRun(t, "operator", "generate-root", "-decode="+done["encoded_token"].(string), "-otp="+init["otp"].(string))
	tok := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(tok, "cof.") || tok == devToken {
		t.Fatalf("decoded token %q", tok)
	}
	look := runCLI(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + tok}, "", "token", "lookup", "-format=json")
	if look.code != 0 || !strings.Contains(look.stdout, `"root"`) {
		t.Fatalf("lookup with the new root token: %s", look)
	}
	wantErr(t, n.run(t, "operator", "generate-root", "-decode=AAAA", "-otp=AAAAAA"), 1, "cannot decode")
}
