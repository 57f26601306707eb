package main

import (
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// compareRaw is a small run of scripts/compare-figures.sh (two sizes, two
// runs of the writes), as it writes its measurements.
const compareRaw = `{"kind":"meta","meta":{"measured":"2026-12-07T05:00Z","cores":"2"}}
{"kind":"preload","tool":"coffer","keys":1000,"seconds":0.5,"written":1000}
{"kind":"snapshot","tool":"coffer","keys":1000,"bytes":300000,"live_bytes":256000}
{"kind":"snapshot","tool":"etcd","keys":1000,"bytes":400000,"live_bytes":256000}
{"kind":"row","tool":"coffer","row":"w16","keys":1000,"run":1,"ops_per_sec":1500,"p50_ms":9,"p99_ms":30,"ops":4500,"nodes":[{"node":"n1","role":"leader","cpu_s":0.9,"write_bytes":4500000},{"node":"n2","role":"follower","cpu_s":0.45,"write_bytes":2250000}]}
{"kind":"row","tool":"coffer","row":"w16","keys":1000,"run":2,"ops_per_sec":1300,"p50_ms":10,"p99_ms":50,"ops":3900,"nodes":[{"node":"n1","role":"leader","cpu_s":1.17,"write_bytes":3900000},{"node":"n2","role":"follower","cpu_s":0.39,"write_bytes":1950000}]}
{"kind":"row","tool":"etcd","row":"w16","keys":1000,"run":1,"ops_per_sec":1200,"p50_ms":11,"p99_ms":35,"ops":3600}
{"kind":"row","tool":"etcd","row":"w16","keys":1000,"run":2,"ops_per_sec":1200,"p50_ms":11,"p99_ms":45,"ops":3600}
{"kind":"row","tool":"coffer","row":"w64","keys":1000,"run":1,"ops_per_sec":2000,"p50_ms":30,"p99_ms":100,"ops":6000}
{"kind":"row","tool":"etcd","row":"w64","keys":1000,"run":1,"ops_per_sec":1900,"p50_ms":30,"p99_ms":190,"ops":5700}
{"kind":"row","tool":"coffer","row":"s64","keys":1000,"run":1,"ops_per_sec":20000,"p99_ms":10,"ops":60000}
{"kind":"row","tool":"etcd","row":"s64","keys":1000,"run":1,"ops_per_sec":6000,"p99_ms":30,"ops":18000}
{"kind":"fsync","tool":"coffer","row":"w16","keys":1000,"node":"n1","role":"leader","fsyncs":450,"ops":4500}
{"kind":"row","tool":"coffer","row":"w64","keys":1000000,"run":1,"ops_per_sec":1500,"p99_ms":150,"ops":4500}
{"kind":"row","tool":"etcd","row":"w64","keys":1000000,"run":1,"ops_per_sec":1800,"p99_ms":200,"ops":5400}
{"kind":"row","tool":"coffer","row":"s64","keys":1000000,"run":1,"ops_per_sec":19000,"p99_ms":12,"ops":57000}
{"kind":"row","tool":"etcd","row":"s64","keys":1000000,"run":1,"ops_per_sec":5900,"p99_ms":31,"ops":17700}
{"kind":"snapshot","tool":"coffer","keys":1000000,"bytes":500000000,"live_bytes":256000000,"stored_bytes":400000000}
{"kind":"snapshot","tool":"etcd","keys":1000000,"bytes":300000000,"live_bytes":256000000}
{"kind":"rss","tool":"coffer","keys":1000000,"node":"n1","role":"leader","bytes":400000000,"anon_bytes":104857600}
{"kind":"rss","tool":"coffer","keys":1000000,"node":"n2","role":"follower","bytes":300000000,"anon_bytes":209715200}
{"kind":"rss","tool":"etcd","keys":1000000,"node":"e1","role":"leader","bytes":500000000}
{"kind":"restart","tool":"coffer","keys":1000000,"run":1,"seconds":3}
{"kind":"restart","tool":"coffer","keys":1000000,"run":2,"seconds":9}
{"kind":"restart","tool":"coffer","keys":1000000,"run":3,"seconds":4}
{"kind":"restart","tool":"etcd","keys":1000000,"run":1,"seconds":2}
{"kind":"join","tool":"coffer","keys":1000000,"seconds":70}
`

// TestBenchReportAndPlot turns measurements into the figures, the goal
// table and the scale picture, and checks the medians and the verdicts.
func TestBenchReportAndPlot(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw.jsonl")
	if err := os.WriteFile(raw, []byte(compareRaw), 0o600); err != nil {
		t.Fatal(err)
	}
	out, md, pic := filepath.Join(dir, "f.json"), filepath.Join(dir, "f.md"), filepath.Join(dir, "scale.png")
	if r := runCLI(t, nil, "", "bench", "report", "-in", raw, "-json", out, "-md", md); r.code != 0 {
		t.Fatalf("report: %s", r)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var figs compareFigures
	if err := json.Unmarshal(b, &figs); err != nil {
		t.Fatalf("the figures are not JSON: %v", err)
	}
	w16 := figs.row("coffer", "w16", 1000)
	if w16 == nil || w16.OpsPerSec != 1400 || w16.P99Ms != 40 {
		t.Fatalf("coffer w16 medians: %+v, want 1400 ops/s and p99 40 ms", w16)
	}
	// CPU per write: leader 0.9 s / 4500 = 200 µs and 1.17 s / 3900 = 300 µs.
	if got := w16.CPUPerOpUs["leader n1"]; got < 249.9 || got > 250.1 {
		t.Fatalf("leader CPU per write %v µs, want 250", got)
	}
	if got := w16.WriteBytesPerOp["follower n2"]; got != 500 {
		t.Fatalf("follower bytes per write %v, want 500", got)
	}
	if len(figs.Fsyncs) != 1 || figs.Fsyncs[0].FsyncsPerOp != 0.1 {
		t.Fatalf("fsyncs %+v, want 0.1 per write on n1", figs.Fsyncs)
	}
	if len(figs.Restarts) != 2 || figs.Restarts[0].Seconds != 4 {
		t.Fatalf("restarts %+v, want coffer's median 4 s", figs.Restarts)
	}
	want := map[string]string{
		"writes, 16 clients, 1,000 keys":                                    "yes", // 1.17×, p99 40 ≤ etcd's 40
		"writes, 64 clients, 1,000 keys":                                    "no",  // 1.05×
		"stale follower reads, 64 clients (etcd: serializable), 1,000 keys": "yes", // 3.3×
		"stale follower reads, 16 clients (etcd: serializable), 1,000 keys": "n/a",
		"writes, 64 clients with 1,000,000 keys stored":                     "no",  // 75 %
		"stale follower reads, 64 clients with 1,000,000 keys stored":       "yes", // 95 %
		"`kill -9` + restart + unseal → serving, 1,000,000 keys":            "yes",
		"a new node joins and catches up, 1,000,000 keys":                   "no",
		"snapshot file size, 1,000,000 keys":                                "no", // 1.95×
		"RSS per node (the largest), 1,000,000 keys":                        "yes",
	}
	got := map[string]string{}
	for _, g := range figs.Goals {
		got[g.Workload] = g.Met
	}
	for w, met := range want {
		if got[w] != met {
			t.Errorf("goal %q: met %q, want %q (goals %+v)", w, got[w], met, figs.Goals)
		}
	}
	mdText, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"| workload | coffer | etcd v3.7.1 | ratio | goal | met? |", "| 1,000,000 |", "CPU µs per write", "| coffer | writes, 16 clients, 1,000 keys | n1 (leader) | 250 | 1000 | 0.10 |", "381.5 MiB (anonymous 100.0 MiB)",
		"| snapshot file size, 1,000,000 keys | 476.8 MiB (1.95× the values only; 1.25× the keys and values stored) | 286.1 MiB (1.17× the values only) | 1.67 | ≤ 1.5× the live data (values only) | no |"} {
		if !strings.Contains(string(mdText), s) {
			t.Errorf("the markdown lacks %q:\n%s", s, mdText)
		}
	}

	if r := runCLI(t, nil, "", "bench", "plot", "-in", out, "-out", pic); r.code != 0 {
		t.Fatalf("plot: %s", r)
	}
	f, err := os.Open(pic)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", pic, err)
	}
	if cfg.Width != 960 || cfg.Height != 540 {
		t.Errorf("picture %dx%d, want 960x540", cfg.Width, cfg.Height)
	}

	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte(`{"kind":"meta"}`+"\nnot json\n"), 0o600)
	wantErr(t, runCLI(t, nil, "", "bench", "report", "-in", bad, "-json", out), 1, "line 2")
	wantErr(t, runCLI(t, nil, "", "bench", "report", "-in", raw), 1, "-json")
	wantErr(t, runCLI(t, nil, "", "bench", "plot", "-in", out, "-out", filepath.Join(dir, "x.jpg")), 1, "*.png")
	wantErr(t, runCLI(t, nil, "", "bench", "plot", "-in", raw, "-out", pic), 1, "not the JSON")
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(empty, []byte(`{"scale":[]}`), 0o600)
	wantErr(t, runCLI(t, nil, "", "bench", "plot", "-in", empty, "-out", pic), 1, "no scale rows")
}
