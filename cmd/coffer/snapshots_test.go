package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/server"
)

// TestServerSnapshotFlags: the flags and the config file fill the
// schedule (flags win); bad settings are one line naming the flag.
func TestServerSnapshotFlags(t *testing.T) {
	base := []string{"-node-id=n1", "-data-dir=" + t.TempDir(), "-insecure"}
	if cfg := parseServerT(t, nil, base...); cfg.Snapshots.Enabled() {
		t.Fatalf("snapshots scheduled by default: %+v", cfg.Snapshots)
	}
	cfg := parseServerT(t, nil, append(base, "-snapshot-interval=2s", "-snapshot-dir=/snaps", "-snapshot-retain=3")...)
	if want := (server.SnapshotSchedule{Interval: 2 * time.Second, Dir: "/snaps", Retain: 3}); cfg.Snapshots != want {
		t.Fatalf("flags: %+v, want %+v", cfg.Snapshots, want)
	}
	file := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(file, []byte(`{"snapshot_interval": "1h", "snapshot_dir": "/from-file", "snapshot_retain": 5}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = parseServerT(t, nil, append(base, "-config="+file)...)
	if want := (server.SnapshotSchedule{Interval: time.Hour, Dir: "/from-file", Retain: 5}); cfg.Snapshots != want {
		t.Fatalf("file: %+v, want %+v", cfg.Snapshots, want)
	}
	cfg = parseServerT(t, nil, append(base, "-config="+file, "-snapshot-retain=7")...)
	if cfg.Snapshots.Retain != 7 || cfg.Snapshots.Dir != "/from-file" {
		t.Fatalf("the flag does not win over the file: %+v", cfg.Snapshots)
	}
	for args, want := range map[string]string{
		"-snapshot-interval=1h":                                      "-snapshot-dir",
		"-snapshot-dir=/x":                                           "-snapshot-interval",
		"-snapshot-interval=1ms -snapshot-dir=/x":                    "below",
		"-snapshot-interval=1h -snapshot-dir=/x -snapshot-retain=-1": "-snapshot-retain",
	} {
		e, _, _ := testEnv("", nil)
		if _, err := parseServer(e, append(base, strings.Fields(args)...)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"snapshot_interval": "hourly"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	e, _, _ := testEnv("", nil)
	if _, err := parseServer(e, append(base, "-config="+bad)); err == nil || !strings.Contains(err.Error(), "snapshot_interval") {
		t.Errorf("a bad snapshot_interval in the file: %v", err)
	}
}

// TestSnapshotList: a dev server with a 1s schedule writes snapshots that
// `coffer operator raft snapshot list -dir` lists newest first, verified,
// without the marker written; a corrupted file shows as BAD (exit 1, one
// line), a garbage file named like a snapshot too, other files are
// ignored, and a missing directory is one clear line.
func TestSnapshotList(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "snaps")
	tmp := t.TempDir()
	p := startServer(t, []string{"TMPDIR=" + tmp}, func(apiAddr, _ string) []string {
		return []string{"-dev", "-dev-root-token=" + devToken, "-api-addr=" + apiAddr, "-log-level=warn",
			"-snapshot-interval=1s", "-snapshot-dir=" + dir, "-snapshot-retain=3"}
	})
	n := &devNode{serverProc: p, tmp: tmp}
	marker := "list-marker-" + rand.Text()
	if err := poll(60*time.Second, func() error {
		if r := n.run(t, "kv", "put", "secret/m", "v="+marker); r.code != 0 {
			return fmt.Errorf("kv put: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var list []snapshotListJSON
	if err := poll(60*time.Second, func() error {
		r := runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-format=json", "-dir="+dir)
		if r.code != 0 {
			return fmt.Errorf("list: %s", r)
		}
		list = nil
		decodeJSON(t, r, &list)
		if len(list) < 3 {
			return fmt.Errorf("%d snapshots", len(list))
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\nserver stderr:\n%s", err, p.stderr.String())
	}
	p.stop(t) // the files stay put from here on

	r := runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-format=json", "-dir="+dir)
	list = nil
	decodeJSON(t, r, &list)
	if r.code != 0 || len(list) != 3 {
		t.Fatalf("after stop, want 3 snapshots (retain): %s", r)
	}
	for i, s := range list {
		if s.Checksum != "OK" || s.NodeID != "dev" || s.Size == 0 || len(s.SHA256) != 64 || s.Error != "" {
			t.Fatalf("snapshot %d: %+v", i, s)
		}
		checkTime(t, "time", s.Time)
		if i > 0 && s.Time > list[i-1].Time {
			t.Fatalf("not newest first: %s after %s", s.Time, list[i-1].Time)
		}
		b, err := os.ReadFile(filepath.Join(dir, s.File))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(marker)) {
			t.Fatalf("%s holds the plaintext marker", s.File)
		}
	}
	text := runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-dir="+dir)
	if text.code != 0 || !strings.HasPrefix(text.stdout, "TIME") || strings.Count(text.stdout, " OK ") != 3 {
		t.Fatalf("table: %s", text)
	}

	// Corrupt the newest; drop garbage beside them.
	newest := filepath.Join(dir, list[0].File)
	b, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-100] ^= 0xff
	if err := os.WriteFile(newest, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"coffer-snapshot-garbage.snap": "junk", "notes.txt": "not ours"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r = runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-dir="+dir)
	if r.code != 1 {
		t.Fatalf("list with BAD files: %s", r)
	}
	assertOneLineError(t, r.stderr, "2 of 4 snapshot files")
	for _, want := range []string{
		"BAD " + list[0].File + ": its SHA-256 is not the one in its name",
		"BAD coffer-snapshot-garbage.snap: the name does not follow",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("list lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "notes.txt") || strings.Count(r.stdout, " OK ") != 2 {
		t.Errorf("list:\n%s", r.stdout)
	}
	var bad []snapshotListJSON
	r = runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-format=json", "-dir="+dir)
	decodeJSON(t, r, &bad)
	if r.code != 1 || len(bad) != 4 || bad[0].Checksum != "BAD" || bad[1].Checksum != "OK" || bad[3].File != "coffer-snapshot-garbage.snap" || bad[3].Checksum != "BAD" || bad[3].Size != 4 {
		t.Fatalf("JSON with BAD files: %s", r)
	}

	wantErr(t, runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-dir="+filepath.Join(dir, "missing")), 1, "reading -dir")
	wantErr(t, runCLI(t, nil, "", "operator", "raft", "snapshot", "list"), 1, "give -dir=DIR")
	empty := t.TempDir()
	if r := runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-dir="+empty); r.code != 0 || !strings.Contains(r.stdout, "No scheduled snapshots") {
		t.Fatalf("empty dir: %s", r)
	}
}

// TestSnapshotListEscapesNames: a file named like a snapshot but holding
// terminal control sequences (anyone who can write the directory) is
// listed quoted: printed raw, it could clear the screen or rewrite the
// BAD line the operator relies on.
func TestSnapshotListEscapesNames(t *testing.T) {
	dir := t.TempDir()
	name := "coffer-snapshot-\x1b[2J\x1b[1A\rall OK"
	if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-dir="+dir)
	if r.code != 1 {
		t.Fatalf("list of a BAD file: %s", r)
	}
	for _, out := range []string{r.stdout, r.stderr} {
		if strings.ContainsAny(out, "\x1b\r") {
			t.Fatalf("list printed a control character: %q", out)
		}
	}
	if !strings.Contains(r.stdout, `\x1b[2J`) {
		t.Fatalf("the name is not shown escaped: %q", r.stdout)
	}
}
