package main

import (
	"testing"
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
	r = n.run(t, "bench", "kv-nothing")
	wantErr(t, r, 1, "unknown workload")
}
