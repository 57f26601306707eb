package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	pb "coffer/api/cofferpb"
	"coffer/server"
)

// testEnv is an in-process env with captured output and a fixed
// environment.
func testEnv(stdin string, vars map[string]string) (*env, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &env{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errb,
		getenv: func(k string) string { return vars[k] },
	}, &out, &errb
}

func TestParsePairs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(file, []byte("line1\nline2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		stdin   string
		want    map[string]string
		wantErr string
	}{
		{name: "plain", args: []string{"user=alice", "pass=s3cr=t"}, want: map[string]string{"user": "alice", "pass": "s3cr=t"}},
		{name: "empty value", args: []string{"k="}, want: map[string]string{"k": ""}},
		{name: "file", args: []string{"cert=@" + file}, want: map[string]string{"cert": "line1\nline2\n"}},
		{name: "stdin", args: []string{"a=1", "b=-"}, stdin: "from stdin\n", want: map[string]string{"a": "1", "b": "from stdin\n"}},
		{name: "escaped at", args: []string{`k=\@home`}, want: map[string]string{"k": "@home"}},
		{name: "no equals", args: []string{"a=1", "oops"}, wantErr: `invalid argument "oops": want KEY=VALUE`},
		{name: "empty key", args: []string{"=hunter2"}, wantErr: "key before \"=\" is empty"},
		{name: "duplicate", args: []string{"a=1", "a=2"}, wantErr: `duplicate key "a"`},
		{name: "two stdin", args: []string{"a=-", "b=-"}, wantErr: "at most one KEY=- is allowed"},
		{name: "missing file", args: []string{"a=@" + filepath.Join(dir, "nope")}, wantErr: `reading the value of "a"`},
		{name: "empty file name", args: []string{"a=@"}, wantErr: "want KEY=@FILE with a file name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePairs(tt.args, strings.NewReader(tt.stdin))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error echoes a value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseVersions(t *testing.T) {
	good := map[string][]uint64{"1": {1}, "1,2": {1, 2}, " 3 , 4": {3, 4}}
	for in, want := range good {
		got, err := parseVersions(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseVersions(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1,x", "0", "1,,2", "-1", "1.5", "2,"} {
		_, err := parseVersions(in)
		want := `invalid -versions "` + in + `": want comma-separated positive integers`
		if err == nil || err.Error() != want {
			t.Errorf("parseVersions(%q) error = %v, want %q", in, err, want)
		}
	}
}

func TestFlagsBeforePositional(t *testing.T) {
	for _, args := range [][]string{
		{"-field=value", "secret/x"},
		{"--field=value", "secret/x"},
		{"-field", "value", "secret/x"},
		{"--field", "value", "secret/x"},
	} {
		e, _, _ := testEnv("", nil)
		o, err := parseKVGet(e, args)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if o.field != "value" || !o.fieldSet || o.path != "secret/x" {
			t.Errorf("%q: field=%q set=%v path=%q", args, o.field, o.fieldSet, o.path)
		}
	}

	e, _, _ := testEnv("", nil)
	o, err := parseKVGet(e, []string{"-version=3", "-consistency=stale", "-max-staleness=1500ms", "-min-index=42", "-format=json", "secret/a/b"})
	if err != nil {
		t.Fatal(err)
	}
	if o.version != 3 || o.path != "secret/a/b" || o.flags.format != formatJSON {
		t.Errorf("got version=%d path=%q format=%q", o.version, o.path, o.flags.format)
	}
	if o.read.GetConsistency() != pb.Consistency_CONSISTENCY_STALE || o.read.GetMaxStalenessMs() != 1500 || o.read.GetMinIndex() != 42 {
		t.Errorf("read options = %v", o.read)
	}

	// A flag after the path is reported, not silently taken as data.
	_, err = parseKVGet(e, []string{"secret/x", "-field=value"})
	if err == nil || !strings.Contains(err.Error(), "flag -field must come before the arguments") {
		t.Errorf("flag after path: err = %v", err)
	}
}

func TestFormatFlag(t *testing.T) {
	for _, f := range []string{"table", "json"} {
		if err := checkFormat(f); err != nil {
			t.Errorf("checkFormat(%q) = %v", f, err)
		}
	}
	for _, f := range []string{"", "yaml", "JSON"} {
		err := checkFormat(f)
		if err == nil || !strings.Contains(err.Error(), "want table or json") {
			t.Errorf("checkFormat(%q) = %v", f, err)
		}
	}
	e, _, _ := testEnv("", nil)
	if _, err := parseKVGet(e, []string{"-format=yaml", "secret/x"}); err == nil || !strings.Contains(err.Error(), `invalid -format "yaml"`) {
		t.Errorf("kv get -format=yaml: %v", err)
	}
}

func TestReadOptions(t *testing.T) {
	bad := []readFlags{{consistency: "eventual"}, {consistency: "stale", maxStaleness: -1}}
	for _, r := range bad {
		if _, err := r.options(); err == nil {
			t.Errorf("%+v: want an error", r)
		}
	}
	o, err := (&readFlags{consistency: "linearizable"}).options()
	if err != nil || o.GetConsistency() != pb.Consistency_CONSISTENCY_LINEARIZABLE {
		t.Errorf("linearizable: %v %v", o, err)
	}
}

func TestDecodeShare(t *testing.T) {
	share := []byte{1, 2, 3, 250, 251, 252, 253}
	enc := base64.StdEncoding.EncodeToString(share)
	for _, in := range []string{enc, "  " + enc + "\n", "\t" + enc + "\r\n", strings.TrimRight(enc, "=")} {
		got, err := decodeShare(in)
		if err != nil || !bytes.Equal(got, share) {
			t.Errorf("decodeShare(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "   ", "not base64!", "AAA*"} {
		_, err := decodeShare(in)
		if err == nil {
			t.Errorf("decodeShare(%q): want an error", in)
			continue
		}
		if strings.TrimSpace(in) != "" && strings.Contains(err.Error(), strings.TrimSpace(in)) {
			t.Errorf("error echoes the share: %v", err)
		}
	}
}

func TestReadShareFromStdin(t *testing.T) {
	e, _, _ := testEnv("  c2hhcmU=  \nsecond line\n", nil)
	s, err := readShare(e)
	if err != nil || strings.TrimSpace(s) != "c2hhcmU=" {
		t.Fatalf("readShare = %q, %v", s, err)
	}
	e, _, _ = testEnv("no-newline", nil)
	if s, err := readShare(e); err != nil || s != "no-newline" {
		t.Fatalf("readShare = %q, %v", s, err)
	}
	e, _, _ = testEnv("", nil)
	if _, err := readShare(e); err == nil || !strings.Contains(err.Error(), "no unseal key") {
		t.Fatalf("empty stdin: %v", err)
	}
}

func TestClientConfig(t *testing.T) {
	vars := map[string]string{"COFFER_ADDR": "10.0.0.1:8400, 10.0.0.2:8400", "COFFER_TOKEN": "env-token"}
	e, _, _ := testEnv("", vars)

	f := newFlags("coffer status", "[flags]", "").withClient()
	if _, err := f.parse(e, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.clientConfig(e)
	if err != nil || !reflect.DeepEqual(cfg.Endpoints, []string{"10.0.0.1:8400", "10.0.0.2:8400"}) || cfg.Token != "env-token" {
		t.Fatalf("from env: %+v %v", cfg, err)
	}

	f = newFlags("coffer status", "[flags]", "").withClient()
	if _, err := f.parse(e, []string{"-address=h1:1,h2:2", "-token=flag-token"}); err != nil {
		t.Fatal(err)
	}
	cfg, err = f.clientConfig(e)
	if err != nil || !reflect.DeepEqual(cfg.Endpoints, []string{"h1:1", "h2:2"}) || cfg.Token != "flag-token" {
		t.Fatalf("flags win: %+v %v", cfg, err)
	}

	e, _, _ = testEnv("", nil)
	f = newFlags("coffer status", "[flags]", "").withClient()
	if _, err := f.parse(e, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err = f.clientConfig(e)
	if err != nil || !reflect.DeepEqual(cfg.Endpoints, []string{"127.0.0.1:8400"}) {
		t.Fatalf("default endpoint: %v %v", cfg.Endpoints, err)
	}
	// A bare address speaks TLS, as VAULT_ADDR's does: without a CA the
	// nodes are verified against the system's roots.
	if cfg.TLS == nil || cfg.TLS.RootCAs != nil || cfg.TLS.InsecureSkipVerify {
		t.Fatalf("TLS without a CA: %+v", cfg.TLS)
	}
	// Schemes stay on the endpoints: they choose each one's transport.
	e, _, _ = testEnv("", map[string]string{"COFFER_ADDR": "http://10.0.0.1:8400/, https://10.0.0.2:8400"})
	f = newFlags("coffer status", "[flags]", "").withClient()
	if _, err := f.parse(e, nil); err != nil {
		t.Fatal(err)
	}
	if cfg, err := f.clientConfig(e); err != nil || !reflect.DeepEqual(cfg.Endpoints, []string{"http://10.0.0.1:8400", "https://10.0.0.2:8400"}) {
		t.Fatalf("endpoints with schemes: %v %v", cfg.Endpoints, err)
	}
}

// TestStaleFallbackFlag: -stale-fallback=false of a read turns the
// client's stale fallback off; without it, or =true, it stays on.
func TestStaleFallbackFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		off  bool
	}{
		{[]string{"secret/x"}, false},
		{[]string{"-stale-fallback=true", "secret/x"}, false},
		{[]string{"-stale-fallback=false", "secret/x"}, true},
		{[]string{"-stale-fallback=0", "-consistency=linearizable", "secret/x"}, true},
		{[]string{"-stale-fallback", "secret/x"}, false},
	} {
		e, _, _ := testEnv("", nil)
		o, err := parseKVGet(e, c.args)
		if err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		cfg, err := o.flags.clientConfig(e)
		if err != nil || cfg.DisableStaleFallback != c.off {
			t.Errorf("%q: DisableStaleFallback %v (%v), want %v", c.args, cfg.DisableStaleFallback, err, c.off)
		}
	}
}

// TestUsageErrors runs command lines that fail before any call, in process.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		code    int
		wantErr string // in stderr; "" means stderr must be empty
		wantOut string // in stdout
	}{
		{args: []string{"frobnicate"}, code: 1, wantErr: `unknown command "frobnicate"`},
		{args: []string{"kv", "frob"}, code: 1, wantErr: `unknown command "coffer kv frob"`},
		{args: []string{"kv", "get", "-nope", "secret/x"}, code: 1, wantErr: "flag provided but not defined: -nope"},
		{args: []string{"kv", "get"}, code: 1, wantErr: "missing PATH"},
		{args: []string{"kv", "get", "a", "b"}, code: 1, wantErr: "too many arguments"},
		{args: []string{"kv", "get", "-format=xml", "secret/x"}, code: 1, wantErr: `invalid -format "xml": want table or json`},
		{args: []string{"kv", "get", "-consistency=eventual", "secret/x"}, code: 1, wantErr: `invalid -consistency "eventual"`},
		{args: []string{"kv", "get", "-version=x", "secret/x"}, code: 1, wantErr: `invalid value "x" for flag -version`},
		{args: []string{"kv", "get", "-stale-fallback=maybe", "secret/x"}, code: 1, wantErr: `invalid boolean value "maybe" for -stale-fallback: want true or false`},
		{args: []string{"kv", "put", "secret/x"}, code: 1, wantErr: "give at least one KEY=VALUE"},
		{args: []string{"kv", "put", "secret/x", "novalue"}, code: 1, wantErr: `invalid argument "novalue"`},
		{args: []string{"kv", "put", "-cas=-1", "secret/x", "a=b"}, code: 1, wantErr: "want a non-negative integer"},
		{args: []string{"kv", "put", "secret/x", "a=b", "-cas=1"}, code: 1, wantErr: "flag -cas must come before the arguments"},
		{args: []string{"kv", "undelete", "secret/x"}, code: 1, wantErr: "-versions is required"},
		{args: []string{"kv", "destroy", "secret/x"}, code: 1, wantErr: "-versions is required"},
		{args: []string{"kv", "delete", "-versions=1,x", "secret/x"}, code: 1, wantErr: `invalid -versions "1,x": want comma-separated positive integers`},
		{args: []string{"operator", "unseal", "%%%not-base64%%%"}, code: 1, wantErr: "unseal key is not valid base64"},
		{args: []string{"operator", "unseal", "-reset", "AAAA"}, code: 1, wantErr: "-reset takes no SHARE"},
		{args: []string{"status", "extra"}, code: 1, wantErr: "takes no arguments"},
		{args: []string{"status", "-address="}, code: 1, wantErr: "-address is empty"},
		{args: []string{"server", "-log-level=loud"}, code: 1, wantErr: `invalid -log-level "loud"`},
		{args: []string{"server", "-dev-root-token=abc"}, code: 1, wantErr: "-dev-root-token needs -dev"},
		{args: []string{"server", "-node-id=n1"}, code: 1, wantErr: "no data directory: set -data-dir"},
		{args: []string{"server", "-dev", "-data-dir=/tmp/x"}, code: 1, wantErr: "drop -data-dir"},
		{args: []string{"kv", "get", "-h"}, code: 0, wantOut: "Usage: coffer kv get [flags] PATH"},
		{args: []string{"kv", "get", "--help"}, code: 0, wantOut: "-field"},
		{args: []string{"operator", "-h"}, code: 0, wantOut: "unseal"},
		{args: []string{"kv", "metadata", "-h"}, code: 0, wantOut: "cas-required"},
		{args: []string{"-h"}, code: 0, wantOut: "Usage: coffer <command>"},
		{args: []string{"server", "-h"}, code: 0, wantOut: "-dev-root-token"},
		{args: []string{"version"}, code: 0, wantOut: "coffer v"},
		{args: []string{"version", "-format=json"}, code: 0, wantOut: `"go_version"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			e, out, errb := testEnv("", nil)
			code := run(tt.args, e)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.code, errb.String())
			}
			if tt.wantErr == "" {
				if errb.Len() != 0 {
					t.Fatalf("stderr = %q, want empty", errb.String())
				}
			} else {
				assertOneLineError(t, errb.String(), tt.wantErr)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Fatalf("stdout %q does not contain %q", out.String(), tt.wantOut)
			}
		})
	}
}

// assertOneLineError checks that stderr is exactly one line "Error: …"
// containing want.
func assertOneLineError(t *testing.T, stderr, want string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "Error: ") || !strings.HasSuffix(stderr, "\n") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("stderr is not one line starting with \"Error: \": %q", stderr)
	}
	if !strings.Contains(stderr, want) {
		t.Fatalf("stderr %q does not contain %q", stderr, want)
	}
}

func TestCallErrorConnectionHint(t *testing.T) {
	// An unreachable endpoint: the error names it and suggests a fix.
	e, _, errb := testEnv("", nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	code := run([]string{"kv", "get", "-address=" + addr, "secret/x"}, e)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	assertOneLineError(t, errb.String(), "is the server running? check COFFER_ADDR / -address")
	if !strings.Contains(errb.String(), addr) {
		t.Fatalf("error does not name the endpoint %s: %q", addr, errb.String())
	}
}

func TestReportExitCodes(t *testing.T) {
	e, _, errb := testEnv("", nil)
	if got := report(e, silentExit(2)); got != 2 || errb.Len() != 0 {
		t.Fatalf("silentExit(2): %d %q", got, errb.String())
	}
	if got := report(e, &cliError{code: 2, msg: "no secret\nat path"}); got != 2 {
		t.Fatalf("cliError code 2: %d", got)
	}
	assertOneLineError(t, errb.String(), "no secret at path")
	errb.Reset()
	if got := report(e, errors.New("plain")); got != 1 {
		t.Fatalf("plain error: %d", got)
	}
	if got := report(e, errHelp); got != 0 {
		t.Fatalf("help: %d", got)
	}
}

func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := server.DefaultConfig()
	set, g, _, err := loadConfigFile(write(`{"node_id": "n7", "raft_addr": "10.1.1.1:9401"}`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "n7" || cfg.BindAddr != "10.1.1.1:9401" || cfg.APIAddr != server.DefaultConfig().APIAddr {
		t.Fatalf("cfg = %+v", cfg)
	}
	if !set["node_id"] || !set["raft_addr"] || set["api_addr"] || g.key != "" || g.addrSet || g.joinSet {
		t.Fatalf("set = %v, gossip %+v", set, g)
	}
	for body, want := range map[string]string{
		`{"node_name": "typo"}`: `unknown field "node_name"`,
		`{"node_id": 7}`:        "cannot unmarshal number",
		`not json`:              "invalid character",
	} {
		cfg := server.DefaultConfig()
		if _, _, _, err := loadConfigFile(write(body), &cfg); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", body, err, want)
		}
	}
	e, _, errb := testEnv("", nil)
	if code := run([]string{"server", "-config=" + filepath.Join(dir, "missing.json")}, e); code != 1 {
		t.Fatalf("missing config: exit %d", code)
	}
	assertOneLineError(t, errb.String(), "reading -config")
}
