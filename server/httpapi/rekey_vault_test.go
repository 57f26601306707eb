package httpapi_test

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/internal/testcluster"
)

// TestVaultRekey rekeys over HTTP with Vault's client, through a
// follower (it forwards to the leader): status, a validation error, a
// cancelled attempt, a wrong nonce, then a rekey to 3 shares of which 2
// unseal, given the current shares in hex. A node sealed afterwards
// refuses the old shares over HTTP and unseals with the new ones in
// base64.
func TestVaultRekey(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	var f *testcluster.Node
	for _, n := range c.Nodes() {
		if n != leader {
			f = n
			break
		}
	}
	ctx := testCtx(t)
	cl := vaultClient(t, c, f, "", true)
	cl.SetMaxRetries(0)
	sys := cl.Sys()

	st, err := sys.RekeyStatusWithContext(ctx)
	if err != nil || st.Started || st.Required != 3 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	if _, err := sys.RekeyInitWithContext(ctx, &vault.RekeyInitRequest{SecretShares: 2, SecretThreshold: 3}); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("threshold above the shares: %v", err)
	}
	if _, err := sys.RekeyInitWithContext(ctx, &vault.RekeyInitRequest{SecretShares: 3, SecretThreshold: 2, PGPKeys: []string{"x", "y", "z"}}); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("pgp keys: %v", err)
	}
	st, err = sys.RekeyInitWithContext(ctx, &vault.RekeyInitRequest{SecretShares: 3, SecretThreshold: 2})
	if err != nil || !st.Started || st.Nonce == "" || st.T != 2 || st.N != 3 || st.Required != 3 {
		t.Fatalf("init: %+v, %v", st, err)
	}
	if err := sys.RekeyCancelWithContext(ctx); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if st, err = sys.RekeyStatusWithContext(ctx); err != nil || st.Started {
		t.Fatalf("status after cancel: %+v, %v", st, err)
	}
	st, err = sys.RekeyInitWithContext(ctx, &vault.RekeyInitRequest{SecretShares: 3, SecretThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sys.RekeyUpdateWithContext(ctx, hex.EncodeToString(c.Shares[0]), "not-the-nonce"); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("a wrong nonce: %v", err)
	}
	var up *vault.RekeyUpdateResponse
	for i, sh := range c.Shares[:3] {
		up, err = sys.RekeyUpdateWithContext(ctx, hex.EncodeToString(sh), st.Nonce)
		if err != nil {
			t.Fatalf("share %d: %v", i, err)
		}
		if i < 2 && up.Complete {
			t.Fatalf("share %d completed: %+v", i, up)
		}
	}
	if !up.Complete || len(up.Keys) != 3 || len(up.KeysB64) != 3 || up.Nonce != st.Nonce {
		t.Fatalf("last share: %+v", up)
	}

	// Sealed, a node refuses the old shares and takes the new ones.
	root := vaultClient(t, c, f, c.Token, true)
	if err := root.Sys().SealWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	var last *vault.SealStatusResponse
	for _, sh := range c.Shares[1:3] {
		last, err = sys.UnsealWithContext(ctx, hex.EncodeToString(sh))
		if err != nil {
			break
		}
	}
	if statusOf(err) != http.StatusBadRequest || (last != nil && !last.Sealed) {
		t.Fatalf("old shares after the rekey: %+v, %v", last, err)
	}
	if _, err := sys.ResetUnsealProcessWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	for _, sh := range up.KeysB64[1:] {
		if last, err = sys.UnsealWithContext(ctx, sh); err != nil {
			t.Fatal(err)
		}
	}
	if last.Sealed || last.Type != "shamir" || last.T != 2 || last.N != 3 {
		t.Fatalf("unseal with the new shares: %+v", last)
	}
}

// TestVaultStaticSeal initializes a cluster under the static seal with
// Vault's client: recovery_shares and recovery_threshold give recovery
// keys (no unseal keys), every node unseals itself, and seal-status says
// type static with recovery_seal. A rekey over HTTP takes the recovery
// keys.
func TestVaultStaticSeal(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{HTTP: true, StaticSeal: true})
	leader := c.WaitForLeader(t)
	ctx := testCtx(t)
	sys := vaultClient(t, c, leader, "", false).Sys()
	st, err := sys.SealStatusWithContext(ctx)
	if err != nil || st.Type != "static" || !st.RecoverySeal || st.Initialized || !st.Sealed {
		t.Fatalf("before init: %+v, %v", st, err)
	}
	init, err := sys.InitWithContext(ctx, &vault.InitRequest{RecoveryShares: 3, RecoveryThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(init.RecoveryKeys) != 3 || len(init.RecoveryKeysB64) != 3 || len(init.Keys) != 0 || init.RootToken == "" {
		t.Fatalf("init: %+v", init)
	}
	for _, n := range c.Nodes() {
		testcluster.WaitFor(t, 15*time.Second, n.ID+" unsealed", func() error {
			st, err := vaultClient(t, c, n, "", false).Sys().SealStatusWithContext(ctx)
			if err != nil {
				return err
			}
			if st.Sealed || st.Type != "static" || !st.RecoverySeal || st.Migration || st.T != 2 || st.N != 3 {
				return fmt.Errorf("%s: %+v", n.ID, st)
			}
			return nil
		})
	}
	rk, err := sys.RekeyInitWithContext(ctx, &vault.RekeyInitRequest{SecretShares: 2, SecretThreshold: 2})
	if err != nil || rk.Required != 2 {
		t.Fatalf("rekey init: %+v, %v", rk, err)
	}
	var up *vault.RekeyUpdateResponse
	for _, k := range init.RecoveryKeysB64[1:] {
		if up, err = sys.RekeyUpdateWithContext(ctx, k, rk.Nonce); err != nil {
			t.Fatal(err)
		}
	}
	if !up.Complete || len(up.KeysB64) != 2 {
		t.Fatalf("rekey with recovery keys: %+v", up)
	}
}
