package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"coffer/server"
	"coffer/server/snapshotfile"
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

// TestSnapshotInspect: `snapshot inspect` of a saved snapshot of a dev
// server with a few thousand secrets shows its index, term, secrets,
// versions and buckets, in JSON whose stored bytes are the buckets' sum,
// and never a secret; a scheduled snapshot's checksum is checked; a
// truncated, flipped, foreign or mis-named file is one line and exit 1; a
// state with a bucket coffer does not know is inspected and the bucket
// marked.
func TestSnapshotInspect(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "snaps")
	tmp := t.TempDir()
	p := startServer(t, []string{"TMPDIR=" + tmp}, func(apiAddr, _ string) []string {
		return []string{"-dev", "-dev-root-token=" + devToken, "-api-addr=" + apiAddr, "-log-level=warn",
			"-snapshot-interval=1s", "-snapshot-dir=" + dir}
	})
	n := &devNode{serverProc: p, tmp: tmp}
	marker := "inspect-marker-" + rand.Text()
	if err := poll(60*time.Second, func() error {
		if r := n.run(t, "kv", "put", "secret/m", "v="+marker); r.code != 0 {
			return fmt.Errorf("kv put: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "kv", "put", "secret/m", "v="+marker+"2")
	n.mustRun(t, "kv", "destroy", "-versions=1", "secret/m")
	const keys = 2000
	n.mustRun(t, "bench", "preload", "-keys="+fmt.Sprint(keys), "-clients=16")
	file := filepath.Join(t.TempDir(), "saved.snap")
	n.mustRun(t, "operator", "raft", "snapshot", "save", file)
	var status struct {
		AppliedIndex uint64 `json:"applied_index"`
	}
	if err := json.Unmarshal([]byte(n.mustRun(t, "status", "-format=json").stdout), &status); err != nil {
		t.Fatal(err)
	}

	r := runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", "-format=json", file)
	if r.code != 0 {
		t.Fatalf("inspect: %s", r)
	}
	var j snapshotInspectJSON
	decodeJSON(t, r, &j)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if j.Size != fi.Size() || j.Format != 2 || j.MAC != "present, not checked" || j.Checksum != "none" || j.NodeID != "dev" ||
		j.Index == 0 || j.Index > status.AppliedIndex || j.Index < j.HeaderAppliedIndex || j.Term == 0 || j.StateFormat != 2 {
		t.Fatalf("inspect: %+v (node's applied index %d)", j, status.AppliedIndex)
	}
	checkTime(t, "created", j.Created)
	if j.Secrets != keys+1 || j.Versions != keys+2 || j.DestroyedVersions != 1 {
		t.Fatalf("secrets %d versions %d destroyed %d, want %d, %d, 1", j.Secrets, j.Versions, j.DestroyedVersions, keys+1, keys+2)
	}
	var sum int64
	seen := map[string]snapshotBucketJSON{}
	for _, b := range j.Buckets {
		sum += b.Bytes
		seen[b.Name] = b
		if b.Unexpected || b.Bytes != b.KeyBytes+b.ValueBytes {
			t.Errorf("bucket %+v", b)
		}
	}
	if sum != j.StoredBytes || j.StoredBytes > j.Size || j.StoredBytes < keys*256 || seen["secret_meta"].Keys != j.Secrets ||
		seen["secret_values"].Keys != j.Versions-j.DestroyedVersions || j.UsedPages+j.FreePages != j.Pages || j.StateBytes > j.Size {
		t.Fatalf("figures do not add up: %s", r.stdout)
	}
	text := runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", file)
	if text.code != 0 || !strings.Contains(text.stdout, fmt.Sprintf("Stored bytes    %d (keys and values", j.StoredBytes)) ||
		!strings.Contains(text.stdout, "secret_values") || !strings.Contains(text.stdout, fmt.Sprintf("Secrets         %d", keys+1)) {
		t.Fatalf("table: %s", text)
	}
	for _, out := range []string{r.stdout, text.stdout} {
		if strings.Contains(out, marker) || strings.Contains(out, devToken) {
			t.Fatalf("inspect shows a secret or the token:\n%s", out)
		}
	}

	// A scheduled snapshot: its name's SHA-256 is checked.
	var list []snapshotListJSON
	if err := poll(60*time.Second, func() error {
		list = nil
		lr := runCLI(t, nil, "", "operator", "raft", "snapshot", "list", "-format=json", "-dir="+dir)
		decodeJSON(t, lr, &list)
		if len(list) == 0 {
			return errors.New("no scheduled snapshot yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.stop(t)
	sched := filepath.Join(dir, list[0].File)
	r = runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", "-format=json", sched)
	j = snapshotInspectJSON{}
	decodeJSON(t, r, &j)
	if r.code != 0 || j.Checksum != "OK" || j.HeaderAppliedIndex != list[0].AppliedIndex {
		t.Fatalf("scheduled: %s", r)
	}

	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lay, err := snapshotfile.ReadLayout(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	body := good[lay.BodyOffset : lay.BodyOffset+lay.BodyLen]
	// withBody is the saved file with another state (and a MAC no key
	// made: inspect cannot check it).
	withBody := func(b []byte) []byte {
		out := append(bytes.Clone(good[:lay.BodyOffset]), b...)
		return append(out, make([]byte, snapshotfile.MACSize)...)
	}
	pageTypes := bytes.Clone(body)
	for off := 2 * 4096; off+4096 <= len(pageTypes); off += 4096 {
		pageTypes[off+8], pageTypes[off+9] = 0xad, 0xde
	}
	wrongMagic := bytes.Clone(good)
	wrongMagic[0] = 'X'
	schedBytes, err := os.ReadFile(sched)
	if err != nil {
		t.Fatal(err)
	}
	schedBytes[len(schedBytes)/2] ^= 0x01
	attackDir := t.TempDir()
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"truncated.snap":     {good[:len(good)/2], "truncated"},
		"no-mac.snap":        {good[:lay.BodyOffset+10], "truncated"},
		"header-only.snap":   {good[:lay.BodyOffset-3], "truncated"},
		"empty.snap":         {nil, "not a coffer snapshot file"},
		"magic.snap":         {wrongMagic, "not a coffer snapshot file"},
		"page-types.snap":    {withBody(pageTypes), "neither a branch nor a leaf"},
		"garbage-state.snap": {withBody(bytes.Repeat([]byte{0x5a}, len(body))), "damaged or not coffer's"},
		filepath.Base(sched): {schedBytes, "SHA-256 is not the one in its name"},
	} {
		path := filepath.Join(attackDir, name)
		if err := os.WriteFile(path, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		wantErr(t, runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", path), 1, c.want)
	}
	// Bytes flipped through the state: inspected or refused in one line,
	// never a crash.
	refused := 0
	for i := range 20 {
		b := bytes.Clone(body)
		b[(i*7919*4096/20+i*131)%len(b)] ^= 0xff
		path := filepath.Join(attackDir, fmt.Sprintf("flip%d.snap", i))
		if err := os.WriteFile(path, withBody(b), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", path)
		switch r.code {
		case 0:
		case 1:
			assertOneLineError(t, r.stderr, "damaged or not coffer's")
			refused++
		default:
			t.Fatalf("flip %d: %s", i, r)
		}
	}
	t.Logf("%d of 20 flipped states refused", refused)
	wantErr(t, runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", attackDir), 1, "not a regular file")
	wantErr(t, runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", filepath.Join(attackDir, "missing")), 1, "reading the snapshot")
	wantErr(t, runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect"), 1, "missing FILE")

	// A valid state with a bucket coffer does not know.
	statePath := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(statePath, body, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(statePath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("planted"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("value"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	planted, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(attackDir, "planted.snap")
	if err := os.WriteFile(path, withBody(planted), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", "-format=json", path)
	j = snapshotInspectJSON{}
	decodeJSON(t, r, &j)
	found := false
	for _, b := range j.Buckets {
		found = found || (b.Name == "planted" && b.Unexpected && b.Keys == 1 && b.Bytes == 6)
	}
	if r.code != 0 || !found || j.Secrets != keys+1 {
		t.Fatalf("planted bucket: %s", r)
	}
	if text := runCLI(t, nil, "", "operator", "raft", "snapshot", "inspect", path); !strings.Contains(text.stdout, "planted (unexpected)") {
		t.Fatalf("table: %s", text)
	}
}
