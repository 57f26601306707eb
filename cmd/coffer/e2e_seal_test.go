package main

import (
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

// TestRekeyCommand: on a dev node (one share), -init prints Vault's
// fields, a second -init is refused, -cancel drops the attempt, a wrong
// nonce and a bad configuration are refused, and the one share completes
// a rekey to 3 shares of which 2 unseal: printed once in keys_base64 (and
// keys in hex). Sealed, the node refuses the old key and unseals with two
// new shares.
func TestRekeyCommand(t *testing.T) {
	needBinary(t)
	n := startDev(t)
	m := regexp.MustCompile(`Unseal Key: (\S+)`).FindStringSubmatch(n.stdout.String())
	if m == nil {
		t.Fatalf("no unseal key in the dev banner:\n%s", n.stdout.String())
	}
	old := m[1]
	wantErr(t, n.run(t, "operator", "rekey", "-init", "-key-shares=3", "-key-threshold=4"), 1, "-key-threshold")
	wantErr(t, n.run(t, "operator", "rekey", "-status", "-key-shares=3"), 1, "-init")
	r := n.mustRun(t, "operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2", "-format=json")
	init := hasKeys(t, r, "nonce", "started", "progress", "required", "complete", "t", "n")
	if init["started"] != true || init["required"].(float64) != 1 || init["t"].(float64) != 2 || init["n"].(float64) != 3 || init["complete"] != false {
		t.Fatalf("init: %s", r)
	}
	wantErr(t, n.run(t, "operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2"), 1, "in progress")
	r = n.mustRun(t, "operator", "rekey", "-cancel")
	if !strings.Contains(r.stdout, "Canceled") {
		t.Fatalf("cancel: %s", r)
	}
	st := hasKeys(t, n.mustRun(t, "operator", "rekey", "-status", "-format=json"), "started", "nonce")
	if st["started"] != false || st["nonce"] != "" {
		t.Fatalf("status after cancel: %v", st)
	}
	init = hasKeys(t, n.mustRun(t, "operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2", "-format=json"), "nonce")
	nonce := init["nonce"].(string)
	wantErr(t, n.run(t, "operator", "rekey", "-nonce=wrong", old), 1, "nonce")
	r = n.mustRun(t, "operator", "rekey", "-format=json", "-nonce="+nonce, old)
	done := hasKeys(t, r, "nonce", "complete", "keys", "keys_base64", "t", "n")
	if done["complete"] != true || done["nonce"] != nonce {
		t.Fatalf("update: %s", r)
	}
	var fresh []string
	for i, k := range done["keys_base64"].([]any) {
		fresh = append(fresh, k.(string))
		raw, err := base64.StdEncoding.DecodeString(k.(string))
		if err != nil || len(raw) != 33 {
			t.Fatalf("new share %d: %q", i, k)
		}
	}
	if len(fresh) != 3 || len(done["keys"].([]any)) != 3 {
		t.Fatalf("new shares: %s", r)
	}
	if strings.Contains(n.stderr.String(), fresh[0]) || strings.Contains(n.stderr.String(), old) {
		t.Fatal("the server logged a share")
	}

	n.mustRun(t, "operator", "seal")
	wantErr(t, n.run(t, "operator", "unseal", old), 1, "")
	if r := n.run(t, "operator", "unseal", fresh[2]); r.code != 0 || !strings.Contains(r.stdout, "1/2") {
		t.Fatalf("first new share: %s", r)
	}
	r = n.mustRun(t, "operator", "unseal", "-format=json", fresh[0])
	u := hasKeys(t, r, "sealed", "type", "recovery_seal", "migration")
	if u["sealed"] != false || u["type"] != "shamir" || u["recovery_seal"] != false || u["migration"] != false {
		t.Fatalf("unseal with the new shares: %s", r)
	}
}
