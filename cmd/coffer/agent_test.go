package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"coffer/api"
	"coffer/api/agent"
	"coffer/internal/pgtest"
)

// parseAgentT parses a `coffer agent` command line with the given
// environment and fails on an error.
func parseAgentT(t *testing.T, vars map[string]string, args ...string) *agentOpts {
	t.Helper()
	e, _, _ := testEnv("", vars)
	o, err := parseAgent(e, args)
	if err != nil {
		t.Fatalf("coffer agent %s: %v", strings.Join(args, " "), err)
	}
	return o
}

// writeKeyFile writes a fresh base64 cache key to a file and returns its
// path.
func writeKeyFile(t *testing.T) string {
	t.Helper()
	key := make([]byte, agent.KeySize)
	rand.Read(key)
	p := filepath.Join(t.TempDir(), "agent.key")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseAgent(t *testing.T) {
	o := parseAgentT(t, map[string]string{"COFFER_ADDR": "n1:8400,n2:8400", "COFFER_TOKEN": "env-token"})
	c := o.cfg
	if c.Listen != agent.DefaultListen || c.Cache.TTL != time.Minute || c.Cache.MaxStale != 24*time.Hour ||
		c.Cache.MaxEntries != api.DefaultCacheEntries || c.CacheDir != "" || c.Upstream.Token != "env-token" ||
		c.LeaseMargin != agent.DefaultLeaseMargin || c.MaxHeldLeases != agent.DefaultMaxHeldLeases ||
		strings.Join(c.Upstream.Endpoints, ",") != "n1:8400,n2:8400" || len(o.warnings) != 0 {
		t.Fatalf("defaults: %+v", c)
	}

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  file-token\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keyFile := writeKeyFile(t)
	o = parseAgentT(t, map[string]string{"COFFER_TOKEN": "env-token"},
		"-listen=127.0.0.1:9500", "-address=a:1", "-token-file="+tokenFile, "-cache-dir="+filepath.Join(dir, "c"),
		"-cache-key-file="+keyFile, "-ttl=5s", "-max-stale=1h", "-cache-entries=10", "-lease-margin=5s", "-max-held-leases=7")
	c = o.cfg
	if c.Listen != "127.0.0.1:9500" || c.Upstream.Token != "file-token" || c.Cache.TTL != 5*time.Second || c.Cache.MaxStale != time.Hour ||
		c.LeaseMargin != 5*time.Second || c.MaxHeldLeases != 7 ||
		c.Cache.MaxEntries != 10 || len(c.CacheKey) != 32 || c.CacheKeySource != "-cache-key-file "+keyFile {
		t.Fatalf("flags: %+v", c)
	}
	// A warning: a token file others may read.
	if len(o.warnings) != 1 || !strings.Contains(o.warnings[0], "chmod 600") {
		t.Fatalf("warnings: %q", o.warnings)
	}
	// A non-loopback listener is refused: the agent serves in plaintext.
	e, _, _ := testEnv("", map[string]string{"COFFER_TOKEN": "t"})
	if _, err := parseAgent(e, []string{"-listen=0.0.0.0:9500", "-address=a:1"}); err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Fatalf("-listen on all interfaces: %v", err)
	}
	// The key from the environment; -max-stale=0 turns stale serving off.
	envKey := base64.StdEncoding.EncodeToString(make([]byte, 32))
	o = parseAgentT(t, map[string]string{agent.EnvCacheKey: envKey}, "-cache-dir="+dir, "-max-stale=0")
	if len(o.cfg.CacheKey) != 32 || o.cfg.CacheKeySource != "$"+agent.EnvCacheKey || o.cfg.Cache.MaxStale >= 0 {
		t.Fatalf("env key: %+v", o.cfg)
	}

	bad := []struct {
		name string
		vars map[string]string
		args []string
		want string
	}{
		{"dir without key", nil, []string{"-cache-dir=" + dir}, "-cache-dir needs a key"},
		{"key file without dir", nil, []string{"-cache-key-file=" + keyFile}, "-cache-key-file needs -cache-dir"},
		{"bad env key", map[string]string{agent.EnvCacheKey: "c2hvcnQ="}, []string{"-cache-dir=" + dir}, "$" + agent.EnvCacheKey},
		{"bad key file", nil, []string{"-cache-dir=" + dir, "-cache-key-file=" + tokenFile}, "-cache-key-file"},
		{"missing key file", nil, []string{"-cache-dir=" + dir, "-cache-key-file=" + filepath.Join(dir, "nope")}, "-cache-key-file"},
		{"token and token file", nil, []string{"-token=x", "-token-file=" + tokenFile}, "not both"},
		{"missing token file", nil, []string{"-token-file=" + filepath.Join(dir, "nope")}, "-token-file"},
		{"zero ttl", nil, []string{"-ttl=0s"}, "-ttl"},
		{"negative max-stale", nil, []string{"-max-stale=-1s"}, "-max-stale"},
		{"zero lease margin", nil, []string{"-lease-margin=0s"}, "-lease-margin"},
		{"zero max held leases", nil, []string{"-max-held-leases=0"}, "-max-held-leases"},
		{"bad listen", nil, []string{"-listen=nope"}, "-listen"},
		{"own address upstream", map[string]string{"COFFER_ADDR": "127.0.0.1:8500"}, nil, "own -listen address"},
		{"own address upstream, with its scheme", map[string]string{"COFFER_ADDR": "n1:8400,http://127.0.0.1:8500/"}, nil, "own -listen address"},
		{"unknown scheme", map[string]string{"COFFER_ADDR": "grpc://n1:8400"}, nil, "unknown scheme grpc://"},
		{"positional", nil, []string{"extra"}, "takes no arguments"},
		{"bad log level", nil, []string{"-log-level=loud"}, "-log-level"},
	}
	for _, tc := range bad {
		e, _, _ := testEnv("", tc.vars)
		if _, err := parseAgent(e, tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// launchAgent starts `coffer agent -listen=addr args…` without waiting.
func launchAgent(t *testing.T, env []string, addr string, args []string) *serverProc {
	t.Helper()
	needBinary(t)
	// The agent serves in plaintext.
	p := &serverProc{addr: addr, url: "http://" + addr, stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(cofferBin, append([]string{"agent", "-listen=" + addr}, args...)...)
	p.cmd.Env = append(baseEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	bindToTest(p.cmd)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting coffer agent: %v", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// startAgentProc starts an agent on addr (a fresh port when empty) and
// waits until `coffer status` through it answers as an agent; it retries
// while the port is taken.
func startAgentProc(t *testing.T, env []string, addr string, args []string) *serverProc {
	t.Helper()
	var p *serverProc
	err := poll(30*time.Second, func() error {
		a := addr
		if a == "" {
			a = "127.0.0.1:" + strconv.Itoa(freePort(t))
		}
		p = launchAgent(t, env, a, args)
		err := poll(30*time.Second, func() error {
			select {
			case <-p.exited:
				return stopPolling{fmt.Errorf("agent exited: %v", p.waitErr)}
			default:
			}
			r := runCLI(t, nil, "", "status", "-format=json", "-address=http://"+a)
			if r.code != 0 || !strings.Contains(r.stdout, `"raft_state": "agent"`) {
				return fmt.Errorf("status: %s", r)
			}
			return nil
		})
		if err != nil && strings.Contains(p.stderr.String(), "address already in use") {
			p.stop(t)
			return err
		}
		if err != nil {
			return stopPolling{fmt.Errorf("%w\nagent stderr:\n%s", err, p.stderr.String())}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("agent did not come up: %v", err)
	}
	return p
}

// TestAgentEndToEnd: `coffer agent` in front of `coffer server -dev`; the
// CLI pointed at the agent reads and writes; with the server killed, reads
// through the agent still print the value (stale); an agent restarted
// during the outage with the same -cache-dir still serves; the cache dir
// holds no plaintext; a wrong key stops the agent with a clear error.
func TestAgentEndToEnd(t *testing.T) {
	t.Parallel()
	n := startDev(t)
	marker := "agent-e2e-marker-" + rand.Text()
	n.mustRun(t, "kv", "put", "secret/app/db", "password="+marker)

	dir := filepath.Join(t.TempDir(), "agent-cache")
	keyFile := writeKeyFile(t)
	upstream := []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + devToken}
	args := []string{"-cache-dir=" + dir, "-cache-key-file=" + keyFile, "-ttl=300ms", "-max-stale=10m"}
	ag := startAgentProc(t, upstream, "", args)
	viaAgent := func(args ...string) result {
		t.Helper()
		return runCLI(t, []string{"COFFER_ADDR=" + ag.url, "COFFER_TOKEN=" + devToken}, "", args...)
	}

	if r := viaAgent("kv", "get", "-field=password", "secret/app/db"); r.code != 0 || r.stdout != marker+"\n" {
		t.Fatalf("kv get through the agent: %s", r)
	}
	var st statusJSON
	r := viaAgent("status", "-format=json")
	decodeJSON(t, r, &st)
	if r.code != 0 || st.NodeID != "agent" || st.RaftState != "agent" || st.Sealed || !st.Initialized || st.Version != version {
		t.Fatalf("status through the agent: %s", r)
	}
	if r := viaAgent("kv", "put", "secret/app/other", "k=through-the-agent"); r.code != 0 {
		t.Fatalf("kv put through the agent: %s", r)
	}
	if r := n.mustRun(t, "kv", "get", "-field=k", "secret/app/other"); r.stdout != "through-the-agent\n" {
		t.Fatalf("the agent's write on the node: %s", r)
	}
	wantErr(t, viaAgent("operator", "seal"), 1, "this is a coffer agent: send it to a node")
	// Another token gets nothing from the agent's cache.
	r = runCLI(t, []string{"COFFER_ADDR=" + ag.url, "COFFER_TOKEN=not-the-token"}, "", "kv", "get", "secret/app/db")
	wantErr(t, r, 1, "")
	if strings.Contains(r.stdout, marker) {
		t.Fatalf("another token was served the value: %s", r)
	}

	// The server dies: reads through the agent go on, marked stale.
	n.kill()
	if r := viaAgent("kv", "get", "-field=password", "secret/app/db"); r.code != 0 || r.stdout != marker+"\n" {
		t.Fatalf("kv get through the agent, server down: %s", r)
	}
	if err := poll(30*time.Second, func() error {
		r := viaAgent("kv", "get", "secret/app/db")
		if r.code != 0 || !strings.Contains(r.stdout, marker) {
			return stopPolling{fmt.Errorf("kv get: %s", r)}
		}
		if !strings.Contains(r.stderr, "Warning: this answer may be stale") {
			return fmt.Errorf("no stale warning yet: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Restart the agent during the outage, on the same address.
	ag.stop(t)
	if ag.waitErr != nil {
		t.Fatalf("agent exit after SIGTERM: %v\nstderr:\n%s", ag.waitErr, ag.stderr.String())
	}
	files := 0
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		if strings.Contains(string(b), marker) {
			t.Errorf("plaintext marker in %s", path)
		}
		return nil
	})
	if files != 1 {
		t.Fatalf("%d files in the cache dir, want 1", files)
	}
	// A wrong key: the agent refuses to start and names the key's source.
	wrongKey := writeKeyFile(t)
	wr := runCLI(t, upstream, "", "agent", "-listen=127.0.0.1:"+strconv.Itoa(freePort(t)), "-cache-dir="+dir, "-cache-key-file="+wrongKey)
	wantErr(t, wr, 1, "written with another key")
	if !strings.Contains(wr.stderr, wrongKey) {
		t.Fatalf("the error does not name the key file: %s", wr)
	}

	ag2 := startAgentProc(t, upstream, ag.addr, args)
	if r := viaAgent("kv", "get", "-field=password", "secret/app/db"); r.code != 0 || r.stdout != marker+"\n" {
		t.Fatalf("kv get through the restarted agent: %s\nagent stderr:\n%s", r, ag2.stderr.String())
	}
	// Nothing cached for this path: a clear error from upstream.
	wantErr(t, viaAgent("kv", "get", "secret/app/never-read"), 1, "coffer agent: no upstream node could answer, and the agent holds no cached answer of secret/app/never-read")

	ag2.stop(t)
	for _, p := range []*serverProc{ag, ag2} {
		if strings.Contains(p.stderr.String(), devToken) {
			t.Fatalf("the agent logged a token:\n%s", p.stderr.String())
		}
	}
}

// TestAgentDatabaseCredsEndToEnd: `coffer database creds` pointed at the
// agent twice with one token prints one database user, which logs in;
// `coffer lease lookup` passes through; with the server killed, the agent
// still prints the user while its lease runs.
func TestAgentDatabaseCredsEndToEnd(t *testing.T) {
	t.Parallel()
	pg := pgtest.Start(t)
	n := startDev(t)
	n.mustRun(t, "database", "config", "write", "-connection-url="+pg.URLTemplate(), "-username="+pg.User, "-password="+pg.Password, "-allowed-roles=*", "pg")
	n.mustRun(t, "database", "role", "write", "-db=pg", `-creation-statements=CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
		"-default-ttl=1m", "-max-ttl=10m", "reader")
	ag := startAgentProc(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + devToken}, "", nil)
	viaAgent := func(args ...string) result {
		t.Helper()
		return runCLI(t, []string{"COFFER_ADDR=" + ag.url, "COFFER_TOKEN=" + devToken}, "", args...)
	}
	get := func() credsJSON {
		t.Helper()
		var c credsJSON
		r := viaAgent("database", "creds", "-format=json", "reader")
		decodeJSON(t, r, &c)
		if r.code != 0 || c.Data["username"] == "" || c.LeaseID == "" || c.LeaseDuration <= 0 {
			t.Fatalf("database creds through the agent: %s", r)
		}
		return c
	}
	first, second := get(), get()
	if first.Data["username"] != second.Data["username"] || first.LeaseID != second.LeaseID {
		t.Fatalf("two creds through the agent with one token: %v, %v", first.Data["username"], second.Data["username"])
	}
	if err := pg.CanLogin(first.Data["username"], first.Data["password"]); err != nil {
		t.Fatalf("logging in with the agent's credentials: %v", err)
	}
	if r := viaAgent("lease", "lookup", first.LeaseID); r.code != 0 || !strings.Contains(r.stdout, first.LeaseID) {
		t.Fatalf("lease lookup through the agent: %s", r)
	}
	n.kill()
	if c := get(); c.Data["username"] != first.Data["username"] {
		t.Fatalf("creds through the agent, server down: %v", c.Data["username"])
	}
	ag.stop(t)
	if strings.Contains(ag.stderr.String(), first.Data["password"]) || strings.Contains(ag.stderr.String(), devToken) {
		t.Fatalf("the agent logged a secret:\n%s", ag.stderr.String())
	}
}
