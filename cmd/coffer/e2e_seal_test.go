package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
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

// restart starts a stopped or killed node again with its flags.
func (n *clusterNode) restart(t *testing.T) {
	t.Helper()
	n.serverProc = launch(t, n.env, n.addr, n.raftAddr, n.args)
}

// waitUnsealed polls until every node answers `coffer status` unsealed.
func (c *testCluster) waitUnsealed(t *testing.T, nodes ...*clusterNode) {
	t.Helper()
	for _, n := range nodes {
		if err := poll(60*time.Second, func() error {
			st, err := c.status(t, n)
			if err != nil {
				return err
			}
			if st.Sealed || !st.Initialized {
				return fmt.Errorf("%s: sealed %v, initialized %v (%s)", n.id, st.Sealed, st.Initialized, st.Message)
			}
			return nil
		}); err != nil {
			t.Fatalf("node not unsealed: %v\n%s", err, c.logs())
		}
	}
}

// TestStaticSealKillAll: three real nodes under the static seal (one
// given the key by file as hex, one as raw bytes, one by $COFFER_SEAL_KEY
// as base64) unseal themselves right after init, which prints recovery
// shares; kill -9 of every node, and they come back unsealed and serving
// without an operator step. The key is in no node's stderr.
func TestStaticSealKillAll(t *testing.T) {
	t.Parallel()
	needBinary(t)
	key := make([]byte, 32)
	rand.Read(key)
	dir := t.TempDir()
	hexFile, rawFile := filepath.Join(dir, "seal.hex"), filepath.Join(dir, "seal.key")
	if err := os.WriteFile(hexFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rawFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, "-seal=static", "-seal-key-file="+hexFile)
	// n2 reads the raw file, n3 the environment (which wins over the file).
	c.nodes[1].args = append(c.nodes[1].args, "-seal-key-file="+rawFile)
	c.nodes[2].env = append(c.nodes[2].env, "COFFER_SEAL_KEY="+base64.StdEncoding.EncodeToString(key))
	c.nodes[2].args = append(c.nodes[2].args, "-seal-key-file="+filepath.Join(dir, "missing"))
	for _, n := range c.nodes[1:] {
		n.stop(t)
		n.restart(t)
	}
	leader := c.waitLeader(t, "")
	r := c.on(t, leader, "operator", "init", "-recovery-shares=3", "-recovery-threshold=2", "-format=json")
	if r.code != 0 {
		t.Fatalf("init: %s\n%s", r, c.logs())
	}
	var ini initJSON
	decodeJSON(t, r, &ini)
	if len(ini.RecoveryKeysB64) != 3 || len(ini.UnsealKeysB64) != 0 || ini.RecoveryThreshold != 2 || ini.RootToken == "" {
		t.Fatalf("init under the static seal: %s", r)
	}
	c.token = ini.RootToken
	c.waitUnsealed(t, c.nodes...)
	st, err := c.status(t, c.nodes[2])
	if err != nil || st.Type != "static" || !st.RecoverySeal {
		t.Fatalf("status: %+v, %v", st, err)
	}
	c.mustRun(t, "kv", "put", "secret/auto", "v=unattended")

	for _, n := range c.nodes {
		n.kill()
	}
	for _, n := range c.nodes {
		n.restart(t)
	}
	c.waitLeader(t, "")
	c.waitUnsealed(t, c.nodes...)
	for _, n := range c.nodes {
		if err := poll(30*time.Second, func() error {
			if r := c.on(t, n, "kv", "get", "-field=v", "secret/auto"); r.code != 0 || strings.TrimSpace(r.stdout) != "unattended" {
				return fmt.Errorf("%s: %s", n.id, r)
			}
			return nil
		}); err != nil {
			t.Fatalf("read after kill -9: %v", err)
		}
	}
	for _, n := range c.nodes {
		for _, form := range []string{hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), string(key)} {
			if strings.Contains(n.stderr.String(), form) {
				t.Fatalf("%s logged the seal key", n.id)
			}
		}
	}
}

// TestStaticSealWrongKey: a single node under the static seal, initialized,
// restarted with another key, then with a missing key file, then with a
// file that is not a key: each time it stays sealed, its status and its
// one log line say why and what to do, and neither key is in its stderr.
func TestStaticSealWrongKey(t *testing.T) {
	t.Parallel()
	needBinary(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	key, wrong := make([]byte, 32), make([]byte, 32)
	rand.Read(key)
	rand.Read(wrong)
	keyFile := filepath.Join(dir, "seal.key")
	write := func(b []byte) {
		if err := os.WriteFile(keyFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write([]byte(base64.StdEncoding.EncodeToString(key)))
	api, raft := "127.0.0.1:"+strconv.Itoa(freePort(t)), "127.0.0.1:"+strconv.Itoa(freePort(t))
	args := []string{"-node-id=solo", "-data-dir=" + data, "-api-addr=" + api, "-raft-addr=" + raft, "-seal=static", "-seal-key-file=" + keyFile}
	p := launch(t, nil, api, raft, args)
	if err := p.waitServing(t, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	env := []string{"COFFER_ADDR=" + p.url}
	if r := runCLI(t, env, "", "operator", "init", "-format=json"); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	if err := poll(30*time.Second, func() error {
		if r := runCLI(t, env, "", "status"); r.code != 0 {
			return fmt.Errorf("%s", r)
		}
		return nil
	}); err != nil {
		t.Fatalf("not unsealed after init: %v\n%s", err, p.stderr.String())
	}
	p.stop(t)

	for _, c := range []struct {
		name   string
		prep   func()
		status string // in the status message and the log
	}{
		{"another key", func() { write([]byte(hex.EncodeToString(wrong))) }, "does not open this cluster's root key"},
		{"no key file", func() { os.Remove(keyFile) }, "cannot read -seal-key-file " + keyFile},
		{"not a key", func() { write([]byte("hunter2\n")) }, "does not hold a seal key"},
	} {
		c.prep()
		p = launch(t, nil, api, raft, args)
		if err := p.waitServing(t, 60*time.Second); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var st statusJSON
		if err := poll(30*time.Second, func() error {
			r := runCLI(t, env, "", "status", "-format=json")
			if r.code != 2 {
				return fmt.Errorf("status: %s", r)
			}
			if err := jsonUnmarshalStrict(r.stdout, &st); err != nil {
				return err
			}
			if !strings.Contains(st.Message, c.status) {
				return fmt.Errorf("message %q", st.Message)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, p.stderr.String())
		}
		if !st.Sealed || !strings.Contains(st.Message, "restart") {
			t.Fatalf("%s: %+v", c.name, st)
		}
		if r := runCLI(t, env, "", "status"); !strings.Contains(r.stdout, c.status) {
			t.Fatalf("%s: text status: %s", c.name, r)
		}
		lines := 0
		for _, l := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(l, c.status) {
				lines++
			}
		}
		if lines != 1 {
			t.Fatalf("%s: %d log lines say why, want 1:\n%s", c.name, lines, p.stderr.String())
		}
		for _, k := range [][]byte{key, wrong} {
			for _, form := range []string{hex.EncodeToString(k), base64.StdEncoding.EncodeToString(k), string(k)} {
				if strings.Contains(p.stderr.String(), form) {
					t.Fatalf("%s: a key is in the server's stderr", c.name)
				}
			}
		}
		p.stop(t)
	}
}

// TestServerSealFlags: -seal and -seal-key-file, their config-file keys
// (flags win), and $COFFER_SEAL_KEY (taken only under the static seal).
func TestServerSealFlags(t *testing.T) {
	base := []string{"-node-id=n1", "-data-dir=" + t.TempDir(), "-insecure"}
	if c := parseServerT(t, nil, base...); c.Seal != "" || c.SealKeyFile != "" || c.SealKey != nil {
		t.Fatalf("defaults: %q %q", c.Seal, c.SealKeyFile)
	}
	c := parseServerT(t, map[string]string{"COFFER_SEAL_KEY": "abc"}, append(base, "-seal=static", "-seal-key-file=/k")...)
	if c.Seal != "static" || c.SealKeyFile != "/k" || string(c.SealKey) != "abc" || c.Validate() != nil {
		t.Fatalf("flags: %q %q %q %v", c.Seal, c.SealKeyFile, c.SealKey, c.Validate())
	}
	if c := parseServerT(t, map[string]string{"COFFER_SEAL_KEY": "abc"}, base...); c.SealKey != nil {
		t.Fatal("the environment's key was taken under the Shamir seal")
	}
	cfg := writeConfig(t, `{"seal": "static", "seal_key_file": "/from/file"}`)
	if c := parseServerT(t, nil, append(base, "-config="+cfg)...); c.Seal != "static" || c.SealKeyFile != "/from/file" {
		t.Fatalf("config file: %q %q", c.Seal, c.SealKeyFile)
	}
	if c := parseServerT(t, nil, append(base, "-config="+cfg, "-seal-key-file=/flag")...); c.SealKeyFile != "/flag" {
		t.Fatalf("flag over the file: %q", c.SealKeyFile)
	}
	for args, want := range map[string]string{
		"-seal=static":                   "needs the static seal key",
		"-seal=awskms":                   "unknown",
		"-seal-key-file=/k":              "-seal=static",
		"-seal=shamir -seal-key-file=/k": "-seal=static",
	} {
		c := parseServerT(t, nil, append(base, strings.Fields(args)...)...)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
	e, _, _ := testEnv("", nil)
	if _, err := parseServer(e, []string{"-dev", "-seal=static", "-seal-key-file=/k"}); err == nil || !strings.Contains(err.Error(), "-dev") {
		t.Fatalf("-dev with the static seal: %v", err)
	}
}
