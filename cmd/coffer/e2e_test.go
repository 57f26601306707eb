package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// devToken is the root token of the dev servers the tests start.
const devToken = "dev-root-token-e2e"

// devNode is a dev server and the environment to reach it.
type devNode struct {
	*serverProc
	tmp string // the server's TMPDIR, which holds its dev data directory
}

// env returns COFFER_ADDR and COFFER_TOKEN for the node.
func (n *devNode) env() []string {
	return []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + devToken}
}

// run runs the CLI against the node.
func (n *devNode) run(t *testing.T, args ...string) result {
	t.Helper()
	return runCLI(t, n.env(), "", args...)
}

// startDev starts `coffer server -dev` and waits until it is unsealed.
func startDev(t *testing.T) *devNode {
	t.Helper()
	tmp := t.TempDir()
	p := startServer(t, []string{"TMPDIR=" + tmp}, func(apiAddr, _ string) []string {
		return []string{"-dev", "-dev-root-token=" + devToken, "-api-addr=" + apiAddr, "-log-level=warn"}
	})
	n := &devNode{serverProc: p, tmp: tmp}
	if err := poll(60*time.Second, func() error {
		if r := n.run(t, "status"); r.code != 0 {
			return fmt.Errorf("status: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatalf("dev server not unsealed: %v\nstderr:\n%s", err, p.stderr.String())
	}
	return n
}

// mustRun runs the CLI and fails unless it exits 0.
func (n *devNode) mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := n.run(t, args...)
	if r.code != 0 {
		t.Fatalf("coffer %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// decodeJSON parses a command's JSON output into v.
func decodeJSON(t *testing.T, r result, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("output is not the expected JSON: %v\n%s", err, r)
	}
}

// hasKeys fails unless the JSON object in r's stdout has every key.
func hasKeys(t *testing.T, r result, keys ...string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("output is not a JSON object: %v\n%s", err, r)
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON output lacks %q: %s", k, r.stdout)
		}
	}
	return m
}

// wantErr fails unless r exited with code and one stderr line "Error: …".
func wantErr(t *testing.T, r result, code int, contains string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d: %s", r.code, code, r)
	}
	assertOneLineError(t, r.stderr, contains)
}

func checkTime(t *testing.T, what, s string) {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("%s %q is not RFC 3339: %v", what, s, err)
	}
	if ts.Location() != time.UTC || time.Since(ts) > time.Hour || time.Until(ts) > time.Minute {
		t.Fatalf("%s %q is not a recent UTC time", what, s)
	}
}

func TestDevServer(t *testing.T) {
	t.Parallel()
	n := startDev(t)

	t.Run("put then get -field prints exactly the value", func(t *testing.T) {
		r := n.mustRun(t, "kv", "put", "secret/api-key", "value=12345")
		if !strings.Contains(r.stdout, "version") {
			t.Errorf("kv put output lacks the version: %s", r)
		}
		for _, flag := range []string{"-field=value", "--field=value"} {
			r = n.mustRun(t, "kv", "get", flag, "secret/api-key")
			if r.stdout != "12345\n" || r.stderr != "" {
				t.Fatalf("kv get %s: %q, stderr %q; want \"12345\\n\"", flag, r.stdout, r.stderr)
			}
		}
		r = n.mustRun(t, "kv", "get", "-field", "value", "secret/api-key")
		if r.stdout != "12345\n" {
			t.Fatalf("kv get -field value: %q", r.stdout)
		}
		r = n.mustRun(t, "kv", "get", "secret/api-key")
		if !regexp.MustCompile(`(?m)^value\s+12345$`).MatchString(r.stdout) || !regexp.MustCompile(`(?m)^version\s+1$`).MatchString(r.stdout) {
			t.Fatalf("kv get table:\n%s", r.stdout)
		}
	})

	t.Run("json outputs", func(t *testing.T) {
		var put putJSON
		decodeJSON(t, n.mustRun(t, "kv", "put", "-format=json", "secret/json", "a=1", "b=two words"), &put)
		if put.Version != 1 || put.Index == 0 {
			t.Fatalf("put: %+v", put)
		}
		checkTime(t, "put created_time", put.CreatedTime)

		r := n.mustRun(t, "kv", "get", "-format=json", "secret/json")
		hasKeys(t, r, "data", "metadata")
		var get getJSON
		decodeJSON(t, r, &get)
		if get.Data["a"] != "1" || get.Data["b"] != "two words" || len(get.Data) != 2 {
			t.Fatalf("get data: %v", get.Data)
		}
		if get.Metadata.Version != 1 || get.Metadata.Deleted || get.Metadata.Destroyed || get.Metadata.DeletionTime != "" {
			t.Fatalf("get metadata: %+v", get.Metadata)
		}
		checkTime(t, "get created_time", get.Metadata.CreatedTime)
		if get.Metadata.CreatedTime != put.CreatedTime {
			t.Errorf("created_time: get %s, put %s", get.Metadata.CreatedTime, put.CreatedTime)
		}
		var md map[string]any
		_ = json.Unmarshal([]byte(r.stdout), &md)
		meta := md["metadata"].(map[string]any)
		for _, k := range []string{"version", "created_time", "deleted", "destroyed"} {
			if _, ok := meta[k]; !ok {
				t.Errorf("metadata lacks %q", k)
			}
		}
		if get.ReadMeta != nil && (get.ReadMeta.NodeID != "dev" || get.ReadMeta.AppliedIndex < put.Index) {
			t.Errorf("read_meta: %+v (put index %d)", get.ReadMeta, put.Index)
		}

		r = n.mustRun(t, "kv", "get", "-format=json", "-field=b", "secret/json")
		if r.stdout != "\"two words\"\n" {
			t.Errorf("-field with json: %q", r.stdout)
		}

		r = n.mustRun(t, "status", "-format=json")
		m := hasKeys(t, r, "initialized", "sealed", "shares", "threshold", "progress", "node_id", "raft_state",
			"leader_id", "leader_address", "term", "applied_index", "key_term", "version")
		if m["initialized"] != true || m["sealed"] != false || m["node_id"] != "dev" || m["raft_state"] != "leader" ||
			m["shares"] != 1.0 || m["threshold"] != 1.0 || m["leader_id"] != "dev" {
			t.Errorf("status: %s", r.stdout)
		}
		var st statusJSON
		decodeJSON(t, r, &st)

		var list listJSON
		decodeJSON(t, n.mustRun(t, "kv", "list", "-format=json", "secret/"), &list)
		if !contains(list.Keys, "api-key") || !contains(list.Keys, "json") {
			t.Errorf("list: %v", list.Keys)
		}
		r = n.mustRun(t, "kv", "list", "secret/")
		if !strings.HasPrefix(r.stdout, "Keys\n----\n") || !strings.Contains(r.stdout, "\njson\n") {
			t.Errorf("list table: %q", r.stdout)
		}
		// One page at a time: -limit, then -after the page's next_after.
		var page1, page2 listJSON
		decodeJSON(t, n.mustRun(t, "kv", "list", "-limit=1", "-format=json", "secret/"), &page1)
		if len(page1.Keys) != 1 || page1.NextAfter != page1.Keys[0] {
			t.Errorf("first page of one: %+v", page1)
		}
		decodeJSON(t, n.mustRun(t, "kv", "list", "-after="+page1.NextAfter, "-format=json", "secret/"), &page2)
		if len(page1.Keys)+len(page2.Keys) != len(list.Keys) || page2.NextAfter != "" {
			t.Errorf("pages %v + %v, want %v", page1.Keys, page2.Keys, list.Keys)
		}

		n.mustRun(t, "kv", "put", "secret/json", "a=2")
		var meta2 metadataJSON
		r = n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/json")
		hasKeys(t, r, "current_version", "oldest_version", "max_versions", "cas_required", "created_time", "updated_time", "versions")
		decodeJSON(t, r, &meta2)
		if meta2.CurrentVersion != 2 || len(meta2.Versions) != 2 || meta2.Versions[0].Version != 1 || meta2.Versions[1].Version != 2 {
			t.Fatalf("metadata: %+v", meta2)
		}
		checkTime(t, "metadata updated_time", meta2.UpdatedTime)
		checkTime(t, "version 1 created_time", meta2.Versions[0].CreatedTime)
		if meta2.Versions[0].DeletionTime != "" || meta2.Versions[0].Destroyed {
			t.Errorf("version 1: %+v", meta2.Versions[0])
		}
	})

	t.Run("exit codes of get", func(t *testing.T) {
		if r := n.run(t, "status"); r.code != 0 {
			t.Fatalf("status on dev: %s", r)
		}
		wantErr(t, n.run(t, "kv", "get", "secret/no-such-secret"), 2, "")
		wantErr(t, n.run(t, "kv", "get", "-field=value", "secret/no-such-secret"), 2, "")

		n.mustRun(t, "kv", "put", "secret/del", "v=one")
		n.mustRun(t, "kv", "put", "secret/del", "v=two")
		wantErr(t, n.run(t, "kv", "get", "-version=99", "secret/del"), 2, "")
		wantErr(t, n.run(t, "kv", "get", "-field=nope", "secret/del"), 1, `field "nope"`)

		n.mustRun(t, "kv", "delete", "secret/del")
		wantErr(t, n.run(t, "kv", "get", "secret/del"), 2, "")
		if r := n.mustRun(t, "kv", "get", "-version=1", "-field=v", "secret/del"); r.stdout != "one\n" {
			t.Fatalf("version 1 after deleting version 2: %q", r.stdout)
		}
		var md metadataJSON
		decodeJSON(t, n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/del"), &md)
		if md.Versions[1].DeletionTime == "" {
			t.Errorf("deleted version 2 has no deletion_time: %+v", md.Versions[1])
		}

		n.mustRun(t, "kv", "undelete", "-versions=2", "secret/del")
		if r := n.mustRun(t, "kv", "get", "-field=v", "secret/del"); r.stdout != "two\n" {
			t.Fatalf("after undelete: %q", r.stdout)
		}
		var w writeJSON
		decodeJSON(t, n.mustRun(t, "kv", "destroy", "-versions=2", "-format=json", "secret/del"), &w)
		if w.Index == 0 {
			t.Errorf("destroy index: %+v", w)
		}
		wantErr(t, n.run(t, "kv", "get", "-version=2", "secret/del"), 2, "")
		n.mustRun(t, "kv", "delete", "-versions=1", "secret/del")
		wantErr(t, n.run(t, "kv", "get", "-version=1", "secret/del"), 2, "")

		n.mustRun(t, "kv", "metadata", "delete", "secret/del")
		wantErr(t, n.run(t, "kv", "get", "-version=1", "secret/del"), 2, "")
	})

	t.Run("values from file and stdin", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "v")
		if err := os.WriteFile(file, []byte("from-file\nsecond line"), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, n.env(), "from-stdin", "kv", "put", "secret/io", "f=@"+file, "s=-")
		if r.code != 0 {
			t.Fatal(r)
		}
		if r := n.mustRun(t, "kv", "get", "-field=f", "secret/io"); r.stdout != "from-file\nsecond line\n" {
			t.Errorf("f: %q", r.stdout)
		}
		if r := n.mustRun(t, "kv", "get", "-field=s", "secret/io"); r.stdout != "from-stdin\n" {
			t.Errorf("s: %q", r.stdout)
		}
	})

	t.Run("metadata put", func(t *testing.T) {
		n.mustRun(t, "kv", "put", "secret/md", "a=1")
		n.mustRun(t, "kv", "metadata", "put", "-max-versions=3", "-cas-required=true", "secret/md")
		var md metadataJSON
		decodeJSON(t, n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/md"), &md)
		if md.MaxVersions != 3 || !md.CasRequired {
			t.Fatalf("after metadata put: %+v", md)
		}
		wantErr(t, n.run(t, "kv", "put", "secret/md", "a=2"), 1, "")
		n.mustRun(t, "kv", "put", "-cas=1", "secret/md", "a=2")
		// A setting not given keeps its value.
		n.mustRun(t, "kv", "metadata", "put", "-max-versions=4", "secret/md")
		decodeJSON(t, n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/md"), &md)
		if md.MaxVersions != 4 || !md.CasRequired || md.CurrentVersion != 2 {
			t.Fatalf("after second metadata put: %+v", md)
		}
		for i := 3; i <= 6; i++ {
			n.mustRun(t, "kv", "put", fmt.Sprintf("-cas=%d", i-1), "secret/md", fmt.Sprintf("a=%d", i))
		}
		decodeJSON(t, n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/md"), &md)
		if md.CurrentVersion != 6 || md.OldestVersion != 3 || len(md.Versions) != 4 {
			t.Fatalf("max-versions=4 after 6 writes: %+v", md)
		}
	})

	t.Run("metadata custom metadata and delete-version-after", func(t *testing.T) {
		n.mustRun(t, "kv", "put", "secret/cm", "a=1")
		n.mustRun(t, "kv", "metadata", "put", "-custom-metadata=owner=team a", "-custom-metadata=note=x=y,z", "-delete-version-after=1h", "secret/cm")
		var md metadataJSON
		decodeJSON(t, n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/cm"), &md)
		if md.CustomMetadata["owner"] != "team a" || md.CustomMetadata["note"] != "x=y,z" || len(md.CustomMetadata) != 2 || md.DeleteVersionAfter != "1h0m0s" {
			t.Fatalf("after metadata put: %+v", md)
		}
		// Other settings keep them; a new version gets its deletion time
		// but reads as live until then.
		n.mustRun(t, "kv", "metadata", "put", "-max-versions=5", "secret/cm")
		n.mustRun(t, "kv", "put", "secret/cm", "a=2")
		decodeJSON(t, n.mustRun(t, "kv", "metadata", "get", "-format=json", "secret/cm"), &md)
		if md.MaxVersions != 5 || len(md.CustomMetadata) != 2 || md.DeleteVersionAfter != "1h0m0s" || len(md.Versions) != 2 || md.Versions[1].DeletionTime == "" || md.Versions[0].DeletionTime != "" {
			t.Fatalf("after max-versions and a put: %+v", md)
		}
		if r := n.mustRun(t, "kv", "get", "-field=a", "secret/cm"); r.stdout != "2\n" {
			t.Fatalf("get: %q", r.stdout)
		}
		wantErr(t, n.run(t, "kv", "metadata", "put", "-custom-metadata="+strings.Repeat("k", 129)+"=v", "secret/cm"), 1, "custom_metadata")
		if r := n.mustRun(t, "kv", "metadata", "get", "secret/cm"); !strings.Contains(r.stdout, "map[note:x=y,z owner:team a]") {
			t.Fatalf("metadata get: %s", r.stdout)
		}
	})

	t.Run("bad input gets one clear line and the node keeps serving", func(t *testing.T) {
		big := filepath.Join(t.TempDir(), "big")
		if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 1<<20+1), 0o600); err != nil {
			t.Fatal(err)
		}
		n.mustRun(t, "kv", "put", "secret/cas", "v=1")
		n.mustRun(t, "kv", "put", "secret/cas", "v=2")
		const badToken = "not-the-token-4242"
		noToken := []string{"COFFER_ADDR=" + n.url}
		cases := []struct {
			name string
			env  []string
			args []string
			want string
		}{
			{"dotdot path", n.env(), []string{"kv", "put", "secret/../x", "a=b"}, ""},
			{"empty segment", n.env(), []string{"kv", "put", "secret//x", "a=b"}, ""},
			{"no mount", n.env(), []string{"kv", "get", "nomount/x"}, ""},
			{"malformed pair", n.env(), []string{"kv", "put", "secret/x", "novalue"}, `"novalue"`},
			{"value over 1 MiB", n.env(), []string{"kv", "put", "secret/big", "v=@" + big}, ""},
			{"no token", noToken, []string{"kv", "get", "secret/api-key"}, ""},
			{"bad token", n.env(), []string{"kv", "get", "-token=" + badToken, "secret/api-key"}, ""},
			{"bad token on put", n.env(), []string{"kv", "put", "-token=" + badToken, "secret/x", "a=b"}, ""},
			{"cas mismatch", n.env(), []string{"kv", "put", "-cas=1", "secret/cas", "v=3"}, ""},
			{"cas on new secret", n.env(), []string{"kv", "put", "-cas=0", "secret/cas", "v=3"}, ""},
			{"versions not numbers", n.env(), []string{"kv", "destroy", "-versions=1,x", "secret/cas"}, "want comma-separated positive integers"},
			{"undelete without versions", n.env(), []string{"kv", "undelete", "secret/cas"}, "-versions is required"},
			{"bad share", n.env(), []string{"operator", "unseal", "@@@@"}, "not valid base64"},
			{"init twice", n.env(), []string{"operator", "init"}, ""},
			{"seal with bad token", n.env(), []string{"operator", "seal", "-token=" + badToken}, ""},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				r := runCLI(t, c.env, "", c.args...)
				if r.code == 0 {
					t.Fatalf("succeeded: %s", r)
				}
				assertOneLineError(t, r.stderr, c.want)
				if strings.Contains(r.stderr, badToken) || strings.Contains(r.stderr, devToken) {
					t.Fatalf("error shows a token: %q", r.stderr)
				}
				if r.code == 66 || strings.Contains(r.stderr, "panic") {
					t.Fatalf("crashed: %s", r)
				}
			})
		}
		if r := n.run(t, "status"); r.code != 0 {
			t.Fatalf("status after bad input: %s", r)
		}
		if r := n.mustRun(t, "kv", "get", "-field=v", "secret/cas"); r.stdout != "2\n" {
			t.Fatalf("secret/cas after bad input: %q", r.stdout)
		}
		n.mustRun(t, "kv", "put", "secret/after-bad-input", "ok=yes")
	})

	t.Run("rotate keeps old values readable", func(t *testing.T) {
		var before statusJSON
		decodeJSON(t, n.mustRun(t, "status", "-format=json"), &before)
		var rot rotateJSON
		decodeJSON(t, n.mustRun(t, "operator", "rotate", "-format=json"), &rot)
		if rot.KeyTerm != before.KeyTerm+1 {
			t.Fatalf("rotate: key term %d, was %d", rot.KeyTerm, before.KeyTerm)
		}
		if r := n.mustRun(t, "kv", "get", "-field=value", "secret/api-key"); r.stdout != "12345\n" {
			t.Fatalf("old value after rotate: %q", r.stdout)
		}
		n.mustRun(t, "kv", "put", "secret/after-rotate", "v=new")
		if r := n.mustRun(t, "kv", "get", "-field=v", "secret/after-rotate"); r.stdout != "new\n" {
			t.Fatalf("new value after rotate: %q", r.stdout)
		}
	})

	t.Run("seal and unseal with the banner's key", func(t *testing.T) {
		var key string
		re := regexp.MustCompile(`(?m)^Unseal Key: (\S+)$`)
		if err := poll(10*time.Second, func() error {
			m := re.FindStringSubmatch(n.stdout.String())
			if m == nil {
				return fmt.Errorf("no unseal key in the banner: %q", n.stdout.String())
			}
			key = m[1]
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"export COFFER_ADDR='http://" + n.addr + "'", "export COFFER_TOKEN='" + devToken + "'", "Root Token: " + devToken, "production"} {
			if !strings.Contains(n.stdout.String(), want) {
				t.Errorf("banner lacks %q:\n%s", want, n.stdout.String())
			}
		}
		n.mustRun(t, "operator", "seal")
		if r := n.run(t, "status"); r.code != 2 {
			t.Fatalf("status after seal: %s", r)
		}
		wantErr(t, n.run(t, "kv", "get", "secret/api-key"), 1, "sealed")
		// The share from stdin (not a terminal), with whitespace around it.
		r := runCLI(t, n.env(), "  "+key+"  \n", "operator", "unseal", "-format=json")
		if r.code != 0 {
			t.Fatalf("unseal: %s", r)
		}
		var st sealStatusJSON
		decodeJSON(t, r, &st)
		if st.Sealed || !st.Initialized {
			t.Fatalf("after unseal: %+v", st)
		}
		if r := n.run(t, "status"); r.code != 0 {
			t.Fatalf("status after unseal: %s", r)
		}
		if r := n.mustRun(t, "kv", "get", "-field=value", "secret/api-key"); r.stdout != "12345\n" {
			t.Fatalf("after unseal: %q", r.stdout)
		}
	})

	t.Run("unreachable endpoint", func(t *testing.T) {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		r := runCLI(t, []string{"COFFER_TOKEN=" + devToken}, "", "kv", "get", "-address="+addr, "secret/api-key")
		wantErr(t, r, 1, "is the server running? check COFFER_ADDR / -address")
		if !strings.Contains(r.stderr, addr) {
			t.Fatalf("error does not name %s: %q", addr, r.stderr)
		}
		// With a dead endpoint first in the list, reads fail over to the live one.
		r = runCLI(t, []string{"COFFER_TOKEN=" + devToken, "COFFER_ADDR=" + addr + "," + n.url}, "", "kv", "get", "-field=value", "secret/api-key")
		if r.code != 0 || r.stdout != "12345\n" {
			t.Fatalf("failover read: %s", r)
		}
	})
}

// TestDevServerShutdown checks that SIGTERM stops a dev server cleanly
// and removes its temporary data directory.
func TestDevServerShutdown(t *testing.T) {
	t.Parallel()
	n := startDev(t)
	n.mustRun(t, "kv", "put", "secret/x", "a=b")
	entries, err := os.ReadDir(n.tmp)
	if err != nil || len(entries) == 0 {
		t.Fatalf("dev data directory not under TMPDIR %s: %v %v", n.tmp, entries, err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit within 30s of SIGTERM\nstderr:\n%s", n.stderr.String())
	}
	if n.waitErr != nil {
		t.Fatalf("exit after SIGTERM: %v\nstderr:\n%s", n.waitErr, n.stderr.String())
	}
	if entries, _ := os.ReadDir(n.tmp); len(entries) != 0 {
		t.Fatalf("dev data directory left behind: %v", entries)
	}
}

// TestNodeLifecycle is the non-dev story: init, threshold unseal, restart
// after kill -9, unseal with another subset, no plaintext at rest.
func TestNodeLifecycle(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	args := func(apiAddr, raftAddr string) []string {
		return []string{"-node-id=n1", "-data-dir=" + dataDir, "-api-addr=" + apiAddr, "-raft-addr=" + raftAddr, "-log-level=warn"}
	}
	p := startServer(t, nil, args)
	addrEnv := []string{"COFFER_ADDR=" + p.url}
	cli := func(stdin string, args ...string) result {
		t.Helper()
		return runCLI(t, addrEnv, stdin, args...)
	}

	r := cli("", "status", "-format=json")
	if r.code != 2 {
		t.Fatalf("fresh status: %s", r)
	}
	var st statusJSON
	decodeJSON(t, r, &st)
	if st.Initialized || !st.Sealed || st.NodeID != "n1" {
		t.Fatalf("fresh status: %+v", st)
	}
	wantErr(t, cli("", "kv", "get", "secret/x"), 1, "")

	// Init right away, as a user would: the node must cope with not having
	// elected itself yet.
	r = cli("", "operator", "init", "-key-shares=5", "-key-threshold=3", "-format=json")
	if r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	var ini initJSON
	decodeJSON(t, r, &ini)
	if len(ini.UnsealKeysB64) != 5 || ini.RootToken == "" {
		t.Fatalf("init: %+v", ini)
	}
	keys, token := ini.UnsealKeysB64, ini.RootToken
	env := append(addrEnv, "COFFER_TOKEN="+token)
	tcli := func(args ...string) result {
		t.Helper()
		return runCLI(t, env, "", args...)
	}

	// Two shares leave the node sealed, with progress 2.
	for i, k := range keys[:2] {
		r := cli("", "operator", "unseal", "-format=json", k)
		if r.code != 0 {
			t.Fatalf("unseal %d: %s", i+1, r)
		}
	}
	r = cli("", "status", "-format=json")
	decodeJSON(t, r, &st)
	if r.code != 2 || !st.Sealed || st.Progress != 2 || st.Threshold != 3 || st.Shares != 5 {
		t.Fatalf("after 2 shares: exit %d %+v", r.code, st)
	}
	wantErr(t, tcli("kv", "get", "secret/x"), 1, "sealed")
	// The third unseals; from stdin this time.
	if r := cli(keys[2]+"\n", "operator", "unseal"); r.code != 0 || !regexp.MustCompile(`(?m)^Sealed\s+false$`).MatchString(r.stdout) {
		t.Fatalf("third share: %s", r)
	}
	if r := cli("", "status"); r.code != 0 {
		t.Fatalf("status after 3 shares: %s", r)
	}

	marker := "plaintext-marker-" + rand.Text()
	if r := tcli("kv", "put", "secret/app/db", "password="+marker+"-v1"); r.code != 0 {
		t.Fatal(r)
	}
	if r := tcli("kv", "put", "secret/app/db", "password="+marker+"-v2"); r.code != 0 {
		t.Fatal(r)
	}
	if r := tcli("kv", "get", "-field=password", "secret/app/db"); r.code != 0 || r.stdout != marker+"-v2\n" {
		t.Fatalf("get: %s", r)
	}

	// kill -9 and restart on the same data directory: sealed, reads refused.
	p.kill()
	p = restartServer(t, p, nil, args)
	r = cli("", "status", "-format=json")
	decodeJSON(t, r, &st)
	if r.code != 2 || !st.Initialized || !st.Sealed || st.Progress != 0 {
		t.Fatalf("status after restart: exit %d %+v", r.code, st)
	}
	wantErr(t, tcli("kv", "get", "secret/app/db"), 1, "sealed")

	// A wrong share never unseals; reset clears it.
	if r := cli("", "operator", "unseal", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"); r.code == 0 {
		if r := cli("", "operator", "unseal", "-reset"); r.code != 0 {
			t.Fatalf("reset: %s", r)
		}
	}
	if r := cli("", "status"); r.code != 2 {
		t.Fatalf("status after a wrong share: %s", r)
	}

	// A different subset of 3 unseals.
	for _, k := range []string{keys[4], keys[1], keys[3]} {
		if r := cli("", "operator", "unseal", k); r.code != 0 {
			t.Fatalf("unseal: %s", r)
		}
	}
	if err := poll(30*time.Second, func() error {
		if r := cli("", "status"); r.code != 0 {
			return fmt.Errorf("status: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]string{"1": marker + "-v1", "2": marker + "-v2"} {
		var r result
		if err := poll(30*time.Second, func() error {
			r = tcli("kv", "get", "-version="+v, "-field=password", "secret/app/db")
			if r.code != 0 {
				return fmt.Errorf("get -version=%s: %s", v, r)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if r.stdout != want+"\n" {
			t.Fatalf("version %s after restart: %q, want %q", v, r.stdout, want)
		}
	}

	// No plaintext at rest: the marker is in no file under the data dir.
	p.stop(t)
	files := 0
	err := filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("plaintext marker found in %s", path)
		}
		// Nor the root token (stored as its hash) or a key share.
		if bytes.Contains(b, []byte(token)) {
			t.Errorf("the root token found in %s", path)
		}
		for i, k := range keys {
			if share, err := base64.StdEncoding.DecodeString(k); err == nil && bytes.Contains(b, share) {
				t.Errorf("key share %d found in %s", i, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no files under the data directory %s", dataDir)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestServerConfigFile checks that -config fills the configuration and
// that flags given on the command line win over it.
func TestServerConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "coffer.json")
	p := startServer(t, nil, func(apiAddr, raftAddr string) []string {
		cfg := fmt.Sprintf(`{"node_id": "from-file", "data_dir": %q, "api_addr": "127.0.0.1:1", "raft_addr": %q}`,
			filepath.Join(dir, "data"), raftAddr)
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"-config=" + cfgFile, "-api-addr=" + apiAddr, "-log-level=error"}
	})
	r := runCLI(t, []string{"COFFER_ADDR=" + p.url}, "", "status", "-format=json")
	var st statusJSON
	decodeJSON(t, r, &st)
	if r.code != 2 || st.NodeID != "from-file" || st.Initialized {
		t.Fatalf("status: %s", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
		t.Fatalf("data_dir from the file not used: %v", err)
	}
}
