package agent

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// testRecords returns cache records holding marker.
func testRecords(marker string, now time.Time) []api.CacheRecord {
	return []api.CacheRecord{
		{
			Key:      api.CacheKey{TokenHash: api.TokenHash("token-a"), Path: "secret/a"},
			Response: &pb.GetResponse{Data: map[string]string{"password": marker}, Metadata: &pb.VersionMetadata{Version: 3}, ReadMeta: &pb.ReadMeta{NodeId: "n1", AppliedIndex: 42}},
			Index:    42, Fetched: now.Add(-time.Second), Expires: now.Add(time.Minute),
		},
		{
			Key:      api.CacheKey{TokenHash: api.TokenHash("token-b"), Path: "secret/b", Version: 2},
			Response: &pb.GetResponse{Data: map[string]string{"k": marker + "-b"}},
			Index:    43, Fetched: now.Add(-2 * time.Second), Expires: now.Add(-time.Second),
		},
	}
}

func mustKeys(t testing.TB, key []byte) *fileKeys {
	t.Helper()
	k, err := deriveKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestCacheFileRoundTrip(t *testing.T) {
	now := time.Now().Round(0)
	marker := "file-marker-4f9a"
	recs := testRecords(marker, now)
	keys := mustKeys(t, newKey())
	b, err := encodeCacheFile(keys, cacheContents{Records: recs}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{marker, "secret/a", "token-a", "password"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("the file holds %q in the clear", s)
		}
	}
	if !bytes.HasPrefix(b, []byte(fileMagic+"\x01")) {
		t.Fatalf("header: %q", b[:9])
	}
	c, written, err := decodeCacheFile(keys, b)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Records
	if !written.Equal(now) || len(got) != len(recs) {
		t.Fatalf("written %v, %d records", written, len(got))
	}
	for i := range recs {
		w, g := recs[i], got[i]
		if g.Key != w.Key || g.Index != w.Index || !g.Fetched.Equal(w.Fetched) || !g.Expires.Equal(w.Expires) || !proto.Equal(g.Response, w.Response) {
			t.Fatalf("record %d: got %+v, want %+v", i, g, w)
		}
	}
	// Two writes of the same records differ (fresh nonce).
	b2, _ := encodeCacheFile(keys, cacheContents{Records: recs}, now)
	if bytes.Equal(b, b2) {
		t.Fatal("two encodings are identical: nonce reused")
	}
}

func TestCacheFileWrongKeyAndCorruption(t *testing.T) {
	now := time.Now()
	keys := mustKeys(t, newKey())
	b, err := encodeCacheFile(keys, cacheContents{Records: testRecords("m", now)}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := decodeCacheFile(mustKeys(t, newKey()), b); !errors.Is(err, ErrWrongCacheKey) {
		t.Fatalf("another key: %v", err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x01
		return c
	}
	corrupt := map[string][]byte{
		"empty":            nil,
		"truncated header": b[:10],
		"truncated box":    b[:len(b)-1],
		"bad magic":        flip(0),
		"unknown version":  flip(len(fileMagic)),
		"altered nonce":    flip(headerSize - 1),
		"altered box":      flip(headerSize + 3),
		"altered tag":      flip(len(b) - 1),
	}
	for name, c := range corrupt {
		if _, _, err := decodeCacheFile(keys, c); !errors.Is(err, ErrCorruptCacheFile) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// An altered key check reads as another key.
	if _, _, err := decodeCacheFile(keys, flip(len(fileMagic)+1)); !errors.Is(err, ErrWrongCacheKey) {
		t.Errorf("altered key check: %v", err)
	}
	// A box that authenticates but holds a bad entry is corrupt too.
	bad, _ := encodeCacheFile(keys, cacheContents{Records: []api.CacheRecord{{Key: api.CacheKey{TokenHash: "token-in-clear", Path: "secret/x"}, Response: &pb.GetResponse{}}}}, now)
	if _, _, err := decodeCacheFile(keys, bad); !errors.Is(err, ErrCorruptCacheFile) {
		t.Errorf("bad token hash: %v", err)
	}
}

// FuzzDecodeCacheFile: no input makes the decoder panic, and whatever it
// accepts encodes again.
func FuzzDecodeCacheFile(f *testing.F) {
	key := bytes.Repeat([]byte{7}, KeySize)
	keys, _ := deriveKeys(key)
	now := time.Unix(1_800_000_000, 0)
	good, _ := encodeCacheFile(keys, cacheContents{Records: testRecords("m", now)}, now)
	empty, _ := encodeCacheFile(keys, cacheContents{}, now)
	held, statics := testHeld("m", now)
	withHeld, _ := encodeCacheFile(keys, cacheContents{Records: testRecords("m", now), Leases: held, Static: statics}, now)
	f.Add(good)
	f.Add(empty)
	f.Add(withHeld)
	f.Add([]byte(fileMagic))
	f.Add(good[:headerSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		c, _, err := decodeCacheFile(keys, b)
		if err != nil {
			if !errors.Is(err, ErrCorruptCacheFile) && !errors.Is(err, ErrWrongCacheKey) {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		if _, err := encodeCacheFile(keys, c, now); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCacheFileSave(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(dir, "."+CacheFileName+".123.tmp")
	if err := os.WriteFile(leftover, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &cacheFile{dir: dir, keys: mustKeys(t, newKey()), source: "test"}
	notes, err := f.prepare()
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 2 {
		t.Fatalf("notes: %v", notes)
	}
	if info, _ := os.Stat(dir); info.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %s", info.Mode().Perm())
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("leftover temporary file: %v", err)
	}
	if c, _, err := f.load(); err != nil || c.Records != nil || c.Leases != nil || c.Static != nil {
		t.Fatalf("load without a file: %v %v", c, err)
	}
	now := time.Now()
	for i := range 3 {
		if err := f.save(cacheContents{Records: testRecords("save-marker", now.Add(time.Duration(i)))}, now); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != CacheFileName {
		t.Fatalf("dir holds %v", entries)
	}
	if info, _ := os.Stat(f.path()); info.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %s", info.Mode().Perm())
	}
	grepDir(t, dir, "save-marker")
	if c, _, err := f.load(); err != nil || len(c.Records) != 2 {
		t.Fatalf("load: %d %v", len(c.Records), err)
	}
}

// lockedBuffer collects log output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAgentCacheFileAtStart: a corrupt file is a warning and an empty
// cache; a wrong key stops New with a message naming the key's source;
// restored entries are served only as stale.
func TestAgentCacheFileAtStart(t *testing.T) {
	dir := t.TempDir()
	key := newKey()
	cfg := testConfig(t, []string{testcluster.FreeAddr(t)}, "t")
	cfg.CacheDir, cfg.CacheKey, cfg.CacheKeySource = dir, key, "-cache-key-file /tmp/k"
	path := filepath.Join(dir, CacheFileName)

	// Corrupt: a warning, an empty cache, and the agent runs.
	if err := os.WriteFile(path, []byte("garbage that is no cache file at all, not even close"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("corrupt file: %v", err)
	}
	if a.cache.Len() != 0 || !strings.Contains(logs.String(), "[WARN]") || !strings.Contains(logs.String(), "corrupt") {
		t.Fatalf("corrupt file: %d entries, logs:\n%s", a.cache.Len(), logs.String())
	}
	shutdown(t, a)

	// A good file: its entries come back, as expired.
	now := time.Now()
	f := &cacheFile{dir: dir, keys: mustKeys(t, key)}
	if err := f.save(cacheContents{Records: testRecords("restored", now)}, now); err != nil {
		t.Fatal(err)
	}
	a, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := a.cache.Get(api.CacheKey{TokenHash: api.TokenHash("token-a"), Path: "secret/a"})
	if e.State != api.CacheExpired || e.Response.Data["password"] != "restored" {
		t.Fatalf("restored entry: %+v", e)
	}
	shutdown(t, a)

	// Another key: New fails and says which key and file.
	wrong := cfg
	wrong.CacheKey = newKey()
	_, err = New(wrong)
	if !errors.Is(err, ErrWrongCacheKey) || !strings.Contains(err.Error(), "-cache-key-file /tmp/k") || !strings.Contains(err.Error(), path) {
		t.Fatalf("wrong key: %v", err)
	}
	for _, s := range []string{base64.StdEncoding.EncodeToString(key), base64.StdEncoding.EncodeToString(wrong.CacheKey)} {
		if strings.Contains(err.Error(), s) || strings.Contains(logs.String(), s) {
			t.Fatal("a key shows in an error or a log line")
		}
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.Upstream.Endpoints = []string{"127.0.0.1:1"}
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		mod  func(*Config)
		want error
	}{
		"no endpoints":         {func(c *Config) { c.Upstream.Endpoints = nil }, api.ErrNoEndpoints},
		"dir without key":      {func(c *Config) { c.CacheDir = "/tmp/x" }, ErrNoCacheKey},
		"short key":            {func(c *Config) { c.CacheDir, c.CacheKey = "/tmp/x", make([]byte, 16) }, ErrBadCacheKey},
		"key without dir":      {func(c *Config) { c.CacheKey = make([]byte, 32) }, ErrInvalidConfig},
		"bad listen":           {func(c *Config) { c.Listen = "nope" }, ErrInvalidConfig},
		"upstream cache":       {func(c *Config) { c.Upstream.Cache = &api.CacheConfig{} }, ErrInvalidConfig},
		"negative TTL":         {func(c *Config) { c.Cache.TTL = -1 }, api.ErrInvalidConfig},
		"negative persist":     {func(c *Config) { c.PersistDelay = -1 }, ErrInvalidConfig},
		"negative attempt":     {func(c *Config) { c.Upstream.AttemptTimeout = -1 }, api.ErrInvalidConfig},
		"negative shutdown to": {func(c *Config) { c.ShutdownTimeout = -1 }, ErrInvalidConfig},
	}
	for name, tc := range cases {
		c := base()
		tc.mod(&c)
		if err := c.Validate(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	d := Config{}.withDefaults()
	if d.Cache.MaxStale != DefaultMaxStale || d.Cache.TTL != DefaultTTL || d.Listen != DefaultListen || d.NodeID != DefaultNodeID {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	key := newKey()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, content := range map[string][]byte{
		"raw":            key,
		"base64":         []byte(base64.StdEncoding.EncodeToString(key)),
		"base64 newline": []byte(base64.StdEncoding.EncodeToString(key) + "\n"),
		"base64 url raw": []byte(base64.RawURLEncoding.EncodeToString(key)),
	} {
		got, err := ReadKeyFile(write(name, content))
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, content := range map[string][]byte{
		"short raw":    key[:31],
		"short base64": []byte(base64.StdEncoding.EncodeToString(key[:16])),
		"empty":        nil,
	} {
		if _, err := ReadKeyFile(write(name, content)); !errors.Is(err, ErrBadCacheKey) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
	if _, err := ParseKey("!!!"); !errors.Is(err, ErrBadCacheKey) {
		t.Errorf("ParseKey of bad base64: %v", err)
	}
}
