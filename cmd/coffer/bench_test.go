package main

import (
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"coffer/internal/timeline"
)

// TestBenchCommand runs `coffer bench` briefly against a dev server and
// checks the figures scripts read.
func TestBenchCommand(t *testing.T) {
	n := startDev(t)
	for _, w := range []string{"kv-write", "kv-read", "mixed"} {
		r := n.mustRun(t, "bench", "-clients=4", "-duration=300ms", "-keys=20", "-value-size=64", "-consistency=stale", "-format=json", w)
		m := hasKeys(t, r, "ops_per_sec", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors")
		if ops, _ := m["ops_per_sec"].(float64); ops <= 0 {
			t.Fatalf("%s: ops_per_sec %v: %s", w, m["ops_per_sec"], r)
		}
		if errs, _ := m["errors"].(map[string]any); len(errs) != 0 {
			t.Fatalf("%s: errors %v", w, errs)
		}
		p50, _ := m["p50_ms"].(float64)
		p99, _ := m["p99_ms"].(float64)
		mx, _ := m["max_ms"].(float64)
		if p50 <= 0 || p50 > p99 || p99 > mx {
			t.Fatalf("%s: percentiles out of order: p50 %v p99 %v max %v", w, p50, p99, mx)
		}
		if rss, _ := m["node_rss_bytes"].(map[string]any); len(rss) != 1 {
			t.Fatalf("%s: node_rss_bytes %v, want the dev node's", w, m["node_rss_bytes"])
		}
	}
	r := n.run(t, "bench", "-clients=0", "kv-write")
	wantErr(t, r, 1, "-clients")
	wantErr(t, n.run(t, "bench", "-timeline="+filepath.Join(t.TempDir(), "x.jpg"), "kv-write"), 1, "name the file *.png")
	wantErr(t, n.run(t, "bench", "-duration=100ms", "-timeline="+filepath.Join(t.TempDir(), "no", "x.png"), "kv-write"), 1, "-timeline")
	r = n.run(t, "bench", "kv-nothing")
	wantErr(t, r, 1, "unknown workload")
}

// TestBenchTimeline runs `coffer bench -timeline` against a dev server:
// the picture is written, named in the result, and decodes as a PNG of
// the default size.
func TestBenchTimeline(t *testing.T) {
	n := startDev(t)
	path := filepath.Join(t.TempDir(), "x.png")
	r := n.mustRun(t, "bench", "-clients=4", "-duration=500ms", "-keys=20", "-value-size=64", "-timeline="+path, "-format=json", "mixed")
	if m := hasKeys(t, r, "timeline", "ops"); m["timeline"] != path {
		t.Fatalf("timeline %v, want %s", m["timeline"], path)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatalf("%s does not decode as a PNG: %v", path, err)
	}
	if cfg.Width != timeline.DefaultWidth || cfg.Height != timeline.DefaultHeight {
		t.Errorf("%s is %dx%d, want %dx%d", path, cfg.Width, cfg.Height, timeline.DefaultWidth, timeline.DefaultHeight)
	}
	r = n.mustRun(t, "bench", "-clients=2", "-duration=200ms", "-timeline="+path, "kv-write")
	if !strings.Contains(r.stdout, "timeline") || !strings.Contains(r.stdout, path) {
		t.Errorf("the table does not name the picture:\n%s", r.stdout)
	}
}

// TestBenchHTTP runs `coffer bench -protocol=http` briefly against a dev
// server's HTTP API: writes and reads succeed and are reported as HTTP;
// wrong flags and a wrong address give clear errors.
func TestBenchHTTP(t *testing.T) {
	tmp := t.TempDir()
	var httpAddr string
	p := startServer(t, []string{"TMPDIR=" + tmp}, func(apiAddr, _ string) []string {
		httpAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
		return []string{"-dev", "-dev-root-token=" + devToken, "-api-addr=" + apiAddr, "-http-addr=" + httpAddr, "-log-level=warn"}
	})
	n := &devNode{serverProc: p, tmp: tmp}
	if err := poll(60*time.Second, func() error {
		if r := n.run(t, "status"); r.code != 0 {
			return fmt.Errorf("status: %s", r)
		}
		return nil
	}); err != nil {
		t.Fatalf("dev server not unsealed: %v", err)
	}
	for _, w := range []string{"kv-write", "kv-read", "mixed"} {
		r := n.mustRun(t, "bench", "-protocol=http", "-http-addr=http://"+httpAddr, "-clients=4", "-duration=300ms", "-keys=20", "-value-size=64", "-format=json", w)
		m := hasKeys(t, r, "ops_per_sec", "p50_ms", "p99_ms", "errors", "protocol")
		if m["protocol"] != "http" {
			t.Fatalf("%s: protocol %v, want http", w, m["protocol"])
		}
		if ops, _ := m["ops_per_sec"].(float64); ops <= 0 {
			t.Fatalf("%s: ops_per_sec %v: %s", w, m["ops_per_sec"], r)
		}
		if errs, _ := m["errors"].(map[string]any); len(errs) != 0 {
			t.Fatalf("%s: errors %v", w, errs)
		}
	}
	// A wrong token is counted as the HTTP API's 403, not hidden.
	r := runCLI(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=nope"}, "", "bench", "-protocol=http", "-http-addr=http://"+httpAddr, "-clients=2", "-duration=200ms", "-format=json", "kv-write")
	if m := hasKeys(t, r, "errors"); m["errors"].(map[string]any)["http 403"] == nil {
		t.Fatalf("bench with a wrong token: errors %v, want http 403", m["errors"])
	}
	wantErr(t, n.run(t, "bench", "-protocol=http", "kv-write"), 1, "-http-addr")
	wantErr(t, n.run(t, "bench", "-protocol=http", "-http-addr="+httpAddr, "approle-login"), 1, "gRPC only")
	wantErr(t, n.run(t, "bench", "-protocol=smtp", "kv-write"), 1, "want grpc or http")
}

// TestBenchWatchCommand runs `coffer bench watch` briefly against a dev
// server: every change reaches every stream of its prefix, and the
// figures scripts read are there; bad flags get one line that names them.
func TestBenchWatchCommand(t *testing.T) {
	n := startDev(t)
	r := n.mustRun(t, "bench", "watch", "-streams=40", "-rate=20", "-duration=500ms", "-prefixes=3", "-format=json")
	m := hasKeys(t, r, "expected", "delivered", "delivery_p50_ms", "delivery_p99_ms", "delivery_after_ack_p99_ms",
		"node_rss_before_bytes", "node_rss_open_bytes", "node_bytes_per_stream", "client_bytes_per_stream")
	exp, _ := m["expected"].(float64)
	got, _ := m["delivered"].(float64)
	if exp <= 0 || got != exp {
		t.Fatalf("delivered %v of %v: %s", got, exp, r)
	}
	for _, k := range []string{"duplicates", "out_of_order", "foreign", "failed_streams", "short_writes", "write_errors"} {
		if v, _ := m[k].(float64); v != 0 {
			t.Fatalf("%s = %v: %s", k, v, r)
		}
	}
	if rss, _ := m["node_rss_open_bytes"].(map[string]any); len(rss) != 1 {
		t.Fatalf("node_rss_open_bytes %v, want the dev node's", m["node_rss_open_bytes"])
	}
	wantErr(t, n.run(t, "bench", "watch", "-streams=0"), 1, "-streams")
	wantErr(t, n.run(t, "bench", "watch", "-streams=5000", "-connections=2"), 1, "-connections")
	wantErr(t, n.run(t, "bench", "watch", "-rate=0"), 1, "-rate")
}
