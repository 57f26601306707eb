package httpapi_test

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/internal/testcluster"
)

// TestVaultGenerateRoot makes a root token over HTTP from the cluster's
// shares (hex and base64), through each node in turn (a follower
// forwards to the leader), and decodes it as Vault's client does.
func TestVaultGenerateRoot(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	c.WaitForLeader(t)
	ctx := testCtx(t)
	for _, n := range c.Nodes() {
		cl := vaultClient(t, c, n, "", true)
		// No retries: a share the client sent again after a failed commit
		// would count in the next round.
		cl.SetMaxRetries(0)
		sys := cl.Sys()
		st, err := sys.GenerateRootStatusWithContext(ctx)
		if err != nil {
			t.Fatalf("%s status: %v", n.ID, err)
		}
		if st.Required != 3 || st.OTPLength == 0 {
			t.Fatalf("%s status: %+v", n.ID, st)
		}
		// An attempt lives in the leader's memory (as in Vault): when an
		// election under the test's load ends it, start again.
		var tok string
		testcluster.WaitFor(t, 30*time.Second, n.ID+" generate-root", func() error {
			c.WaitForLeader(t)
			_ = sys.GenerateRootCancelWithContext(ctx)
			tok, err = generateRootOnce(t, c, sys)
			return err
		})
		self, err := vaultClient(t, c, n, tok, false).Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			t.Fatalf("%s the new root token: %v", n.ID, err)
		}
		if !slices.Contains(self.Data["policies"].([]any), any("root")) || self.Data["path"] != "auth/token/root" {
			t.Fatalf("%s the new root token: %v", n.ID, self.Data)
		}
	}
	// Without a client certificate of the CA, no attempt starts.
	_, err := vaultClient(t, c, c.Nodes()[0], "", false).Sys().GenerateRootInitWithContext(ctx, "", "")
	if statusOf(err) < 400 {
		t.Fatalf("init without a client certificate: %v", err)
	}
}

// generateRootOnce runs one generate-root round: an attempt cancelled,
// then one with the node's OTP, a wrong nonce refused, three shares. It
// fails the test on a wrong answer and returns an error when the attempt
// was lost to an election (the caller starts again).
func generateRootOnce(t *testing.T, c *testcluster.Cluster, sys *vault.Sys) (string, error) {
	t.Helper()
	lost := func(what string, err error) error {
		if s := statusOf(err); s >= 500 || (s == http.StatusBadRequest && strings.Contains(err.Error(), "no generate-root attempt")) {
			return fmt.Errorf("%s: %w", what, err)
		}
		t.Fatalf("%s: %v", what, err)
		return nil
	}
	st, err := sys.GenerateRootInit("", "")
	if err != nil {
		return "", lost("init", err)
	}
	if !st.Started || st.Nonce == "" || len(st.OTP) != st.OTPLength || st.Progress != 0 {
		t.Fatalf("init: %+v", st)
	}
	if err := sys.GenerateRootCancel(); err != nil {
		return "", lost("cancel", err)
	}
	if st, err = sys.GenerateRootStatus(); err != nil || st.Started {
		t.Fatalf("status after cancel: %+v %v", st, err)
	}

	st, err = sys.GenerateRootInit("", "")
	if err != nil {
		return "", lost("init", err)
	}
	otp, nonce := st.OTP, st.Nonce
	_, err = sys.GenerateRootUpdate(hex.EncodeToString(c.Shares[0]), "not-the-nonce")
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "nonce") {
		return "", lost("a wrong nonce", err)
	}
	for i, share := range c.Shares[:3] {
		key := hex.EncodeToString(share)
		if i == 1 {
			key = base64.StdEncoding.EncodeToString(share)
		}
		st, err = sys.GenerateRootUpdate(key, nonce)
		if err != nil {
			return "", lost(fmt.Sprintf("update %d", i), err)
		}
		if st.Progress != i+1 || st.Complete != (i == 2) {
			t.Fatalf("update %d: %+v", i, st)
		}
	}
	if st.EncodedToken == "" || st.EncodedRootToken != st.EncodedToken {
		t.Fatalf("after the shares: %+v", st)
	}
	// Vault's decoding: unpadded base64, XOR the OTP's characters.
	enc, err := base64.RawStdEncoding.DecodeString(st.EncodedToken)
	if err != nil || len(enc) != len(otp) {
		t.Fatalf("encoded token %q: %v", st.EncodedToken, err)
	}
	tok := make([]byte, len(enc))
	for i := range enc {
		tok[i] = enc[i] ^ otp[i]
	}
	return string(tok), nil
}

func TestVaultAuditHashRotate(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx := testCtx(t)
	var first string
	for _, n := range c.Nodes() {
		sys := vaultClient(t, c, n, c.Token, false).Sys()
		h, err := sys.AuditHashWithContext(ctx, "file", "s3cret")
		if err != nil {
			t.Fatalf("%s audit-hash: %v", n.ID, err)
		}
		if h == "" || strings.Contains(h, "s3cret") {
			t.Fatalf("%s audit-hash: %q", n.ID, h)
		}
		if first == "" {
			first = h
		} else if h != first {
			t.Fatalf("%s hashes %q, another node %q", n.ID, h, first)
		}
		other, err := sys.AuditHashWithContext(ctx, "file", "s3cret2")
		if err != nil || other == h {
			t.Fatalf("%s audit-hash of another input: %q %v", n.ID, other, err)
		}

		before := c.Status(t, leader).GetKeyTerm()
		if err := sys.RotateWithContext(ctx); err != nil {
			t.Fatalf("%s rotate: %v", n.ID, err)
		}
		if after := c.Status(t, leader).GetKeyTerm(); after != before+1 {
			t.Fatalf("%s rotate: key term %d -> %d", n.ID, before, after)
		}
	}
	// A token without sudo on sys/rotate: 403.
	tok, err := vaultClient(t, c, leader, c.Token, false).Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{Policies: []string{"default"}, TTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	weak := vaultClient(t, c, leader, tok.Auth.ClientToken, false).Sys()
	wantStatus(t, "rotate without the right", weak.RotateWithContext(ctx), http.StatusForbidden)
	_, err = weak.AuditHashWithContext(ctx, "file", "x")
	wantStatus(t, "audit-hash without the right", err, http.StatusForbidden)
}

// TestVaultCertLogin logs in with the TLS connection's client
// certificate, on each node (a follower forwards the certificate it
// verified).
func TestVaultCertLogin(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	ctx := testCtx(t)
	root := vaultClient(t, c, leader, c.Token, false).Logical()
	if _, err := root.WriteWithContext(ctx, "auth/cert/certs/ops", map[string]any{"allowed_common_names": "root", "token_policies": "default", "token_ttl": "20m"}); err != nil {
		t.Fatalf("write cert role: %v", err)
	}
	r, err := root.ReadWithContext(ctx, "auth/cert/certs/ops")
	if err != nil || !slices.Equal(r.Data["allowed_common_names"].([]any), []any{"root"}) {
		t.Fatalf("read cert role: %v %v", r, err)
	}
	_, err = root.WriteWithContext(ctx, "auth/cert/certs/pem", map[string]any{"certificate": "-----BEGIN CERTIFICATE-----", "allowed_common_names": "root"})
	wantStatus(t, "cert role with a certificate", err, http.StatusBadRequest)
	for _, n := range c.Nodes() {
		sec, err := vaultClient(t, c, n, "", true).Logical().WriteWithContext(ctx, "auth/cert/login", map[string]any{"name": "ops"})
		if err != nil {
			t.Fatalf("%s cert login: %v", n.ID, err)
		}
		if sec.Auth == nil || sec.Auth.ClientToken == "" || !within(int64(sec.Auth.LeaseDuration), 1200, 5) {
			t.Fatalf("%s cert login: %+v", n.ID, sec.Auth)
		}
		_, err = vaultClient(t, c, n, "", false).Logical().WriteWithContext(ctx, "auth/cert/login", nil)
		wantStatus(t, n.ID+" cert login without a certificate", err, http.StatusBadRequest)
	}
}
