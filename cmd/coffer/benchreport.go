package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// compareRecord is one measurement of scripts/compare-figures.sh, one JSON
// object a line. Kind says which fields it fills:
//
//	meta      Meta: when, where, how (free-form strings and numbers)
//	row       Tool, Row, Keys, Run, OpsPerSec, P50Ms, P99Ms, Ops, Errors, Nodes
//	fsync     Tool, Row, Keys, Node, Role, Fsyncs, Ops
//	rss       Tool, Keys, Node, Role, Bytes
//	snapshot  Tool, Keys, Bytes, LiveBytes (keys × value size: the values
//	          only), StoredBytes (coffer: every key and value the state
//	          holds, from snapshot inspect; 0 when not measured)
//	restart   Tool, Keys, Run, Seconds (kill -9 to serving)
//	join      Tool, Keys, Seconds (start to caught up)
//	preload   Tool, Keys, Seconds, Written
type compareRecord struct {
	Kind      string     `json:"kind"`
	Tool      string     `json:"tool,omitempty"`
	Row       string     `json:"row,omitempty"`
	Keys      int        `json:"keys,omitempty"`
	Run       int        `json:"run,omitempty"`
	OpsPerSec float64    `json:"ops_per_sec,omitempty"`
	P50Ms     float64    `json:"p50_ms,omitempty"`
	P99Ms     float64    `json:"p99_ms,omitempty"`
	Ops       int64      `json:"ops,omitempty"`
	Errors    int64      `json:"errors,omitempty"`
	Nodes     []nodeCost `json:"nodes,omitempty"`
	Node      string     `json:"node,omitempty"`
	Role      string     `json:"role,omitempty"`
	Bytes     int64      `json:"bytes,omitempty"`
	LiveBytes int64      `json:"live_bytes,omitempty"`
	// StoredBytes is a coffer snapshot's keys and values (stored_bytes of
	// `coffer operator raft snapshot inspect`): metadata, indexes and
	// idempotency records besides the values of LiveBytes.
	StoredBytes int64 `json:"stored_bytes,omitempty"`
	// AnonBytes is the anonymous part of an RSS record's Bytes (heap,
	// stacks): the rest is mapped files, such as the state database's
	// pages, which the kernel can drop.
	AnonBytes int64          `json:"anon_bytes,omitempty"`
	Fsyncs    int64          `json:"fsyncs,omitempty"`
	Seconds   float64        `json:"seconds,omitempty"`
	Written   int64          `json:"written,omitempty"`
	Meta      map[string]any `json:"meta,omitempty"`
}

// nodeCost is what one node or member spent during a row: CPU seconds
// (user + system) and bytes written to storage (/proc/PID/io write_bytes).
type nodeCost struct {
	Node       string  `json:"node"`
	Role       string  `json:"role"`
	CPUSeconds float64 `json:"cpu_s"`
	WriteBytes int64   `json:"write_bytes"`
}

// The rows compare-figures.sh measures, by the name it records them under.
var compareRows = map[string]string{
	"w16": "writes, 16 clients",
	"w64": "writes, 64 clients",
	"s16": "stale follower reads, 16 clients (etcd: serializable)",
	"s64": "stale follower reads, 64 clients (etcd: serializable)",
	"l64": "linearizable follower reads, 64 clients",
}

// compareFigures is bin/compare-figures.json: the medians of every row
// and the goals of issue 16 judged on them.
type compareFigures struct {
	Meta      map[string]any  `json:"meta"`
	Rows      []figureRow     `json:"rows"`
	Fsyncs    []figureFsync   `json:"fsyncs,omitempty"`
	RSS       []compareRecord `json:"rss,omitempty"`
	Snapshots []compareRecord `json:"snapshots,omitempty"`
	Restarts  []figureTimes   `json:"restarts,omitempty"`
	Joins     []figureTimes   `json:"joins,omitempty"`
	Preloads  []compareRecord `json:"preloads,omitempty"`
	Scale     []scalePoint    `json:"scale"`
	Goals     []goalRow       `json:"goals"`
}

// figureRow is the medians of one row's runs.
type figureRow struct {
	Tool      string    `json:"tool"`
	Row       string    `json:"row"`
	Label     string    `json:"label"`
	Keys      int       `json:"keys"`
	Runs      []float64 `json:"runs_ops_per_sec"`
	OpsPerSec float64   `json:"ops_per_sec"`
	P50Ms     float64   `json:"p50_ms"`
	P99Ms     float64   `json:"p99_ms"`
	Errors    int64     `json:"errors"`
	// CPUPerOpUs and WriteBytesPerOp are by "role node" (e.g. "leader
	// n2"): the median over the runs of the node's CPU or bytes written
	// during the row divided by the row's operations.
	CPUPerOpUs      map[string]float64 `json:"cpu_us_per_op,omitempty"`
	WriteBytesPerOp map[string]float64 `json:"write_bytes_per_op,omitempty"`
}

// figureFsync is the fsync and fdatasync calls of one node per write,
// from a separate run under strace.
type figureFsync struct {
	Tool        string  `json:"tool"`
	Row         string  `json:"row"`
	Keys        int     `json:"keys"`
	Node        string  `json:"node"`
	Role        string  `json:"role"`
	FsyncsPerOp float64 `json:"fsyncs_per_op"`
}

// figureTimes is the runs of a timed event and their median.
type figureTimes struct {
	Tool    string    `json:"tool"`
	Keys    int       `json:"keys"`
	Runs    []float64 `json:"runs_s"`
	Seconds float64   `json:"seconds"`
}

// scalePoint is one tool's writes and reads with Keys stored.
type scalePoint struct {
	Tool   string  `json:"tool"`
	Keys   int     `json:"keys"`
	Writes float64 `json:"writes_ops_per_sec"`
	Reads  float64 `json:"reads_ops_per_sec"`
}

// goalRow is one goal of issue 16 with both tools' figures.
type goalRow struct {
	Workload string  `json:"workload"`
	Coffer   string  `json:"coffer"`
	Etcd     string  `json:"etcd"`
	Ratio    float64 `json:"ratio,omitempty"`
	Goal     string  `json:"goal"`
	// Met is "yes", "no" or "n/a" (a figure is missing).
	Met string `json:"met"`
}

// cmdBenchReport is `coffer bench report`.
func cmdBenchReport(e *env, args []string) error {
	f := newFlags("coffer bench report", "[flags]", `
Turn the measurements of scripts/compare-figures.sh (JSON lines, -in) into
the medians of every row and the goals of issue 16 judged on them: a JSON
file (-json) and a markdown table (-md) with coffer | etcd | ratio | goal |
met? per goal row, the scale rows and the writes' profile.`)
	var in, outJSON, outMD string
	f.fs.StringVar(&in, "in", "", "the measurements, one JSON object a line (required)")
	f.fs.StringVar(&outJSON, "json", "", "write the figures as JSON to this file (required)")
	f.fs.StringVar(&outMD, "md", "", "write the markdown tables to this file (default: stdout)")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if in == "" || outJSON == "" {
		return usageErrorf(f.name, "give the measurements with -in=FILE and the output with -json=FILE")
	}
	recs, err := readCompareRecords(in)
	if err != nil {
		return err
	}
	figs := summarize(recs)
	b, err := json.MarshalIndent(figs, "", "  ")
	if err != nil {
		return &cliError{code: 1, msg: err.Error()}
	}
	if err := os.WriteFile(outJSON, append(b, '\n'), 0o644); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-json: %v", err)}
	}
	if outMD == "" {
		writeCompareMarkdown(e.stdout, figs)
		return nil
	}
	var sb strings.Builder
	writeCompareMarkdown(&sb, figs)
	if err := os.WriteFile(outMD, []byte(sb.String()), 0o644); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-md: %v", err)}
	}
	return nil
}

// readCompareRecords reads a file of JSON lines; a bad line is an error
// that names it.
func readCompareRecords(path string) ([]compareRecord, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, &cliError{code: 1, msg: fmt.Sprintf("-in: %v", err)}
	}
	defer fh.Close()
	var recs []compareRecord
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r compareRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("%s line %d is not a measurement: %v", path, n, err)}
		}
		if r.Kind == "" {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("%s line %d has no kind", path, n)}
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, &cliError{code: 1, msg: fmt.Sprintf("-in: %v", err)}
	}
	return recs, nil
}

// median is the median of xs (the mean of the middle two for an even
// count); NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summarize takes the medians of the runs and judges the goals.
func summarize(recs []compareRecord) *compareFigures {
	figs := &compareFigures{Meta: map[string]any{}}
	type rowKey struct {
		tool, row string
		keys      int
	}
	rows := map[rowKey][]compareRecord{}
	var rowOrder []rowKey
	type evKey struct {
		tool string
		keys int
	}
	restarts, joins := map[evKey][]float64{}, map[evKey][]float64{}
	var restartOrder, joinOrder []evKey
	type fsKey struct {
		tool, row, node, role string
		keys                  int
	}
	fsyncs := map[fsKey][2]int64{}
	var fsOrder []fsKey
	for _, r := range recs {
		switch r.Kind {
		case "meta":
			for k, v := range r.Meta {
				figs.Meta[k] = v
			}
		case "row":
			k := rowKey{r.Tool, r.Row, r.Keys}
			if _, ok := rows[k]; !ok {
				rowOrder = append(rowOrder, k)
			}
			rows[k] = append(rows[k], r)
		case "fsync":
			k := fsKey{r.Tool, r.Row, r.Node, r.Role, r.Keys}
			if _, ok := fsyncs[k]; !ok {
				fsOrder = append(fsOrder, k)
			}
			v := fsyncs[k]
			fsyncs[k] = [2]int64{v[0] + r.Fsyncs, v[1] + r.Ops}
		case "rss":
			figs.RSS = append(figs.RSS, r)
		case "snapshot":
			figs.Snapshots = append(figs.Snapshots, r)
		case "preload":
			figs.Preloads = append(figs.Preloads, r)
		case "restart":
			k := evKey{r.Tool, r.Keys}
			if _, ok := restarts[k]; !ok {
				restartOrder = append(restartOrder, k)
			}
			restarts[k] = append(restarts[k], r.Seconds)
		case "join":
			k := evKey{r.Tool, r.Keys}
			if _, ok := joins[k]; !ok {
				joinOrder = append(joinOrder, k)
			}
			joins[k] = append(joins[k], r.Seconds)
		}
	}
	for _, k := range rowOrder {
		figs.Rows = append(figs.Rows, rowFigures(k.tool, k.row, k.keys, rows[k]))
	}
	for _, k := range fsOrder {
		v := fsyncs[k]
		if v[1] > 0 {
			figs.Fsyncs = append(figs.Fsyncs, figureFsync{Tool: k.tool, Row: k.row, Keys: k.keys, Node: k.node, Role: k.role, FsyncsPerOp: float64(v[0]) / float64(v[1])})
		}
	}
	for _, k := range restartOrder {
		figs.Restarts = append(figs.Restarts, figureTimes{Tool: k.tool, Keys: k.keys, Runs: restarts[k], Seconds: median(restarts[k])})
	}
	for _, k := range joinOrder {
		figs.Joins = append(figs.Joins, figureTimes{Tool: k.tool, Keys: k.keys, Runs: joins[k], Seconds: median(joins[k])})
	}
	figs.Scale = scalePoints(figs.Rows)
	figs.Goals = judgeGoals(figs)
	return figs
}

// rowFigures is the medians of one row's runs.
func rowFigures(tool, row string, keys int, runs []compareRecord) figureRow {
	fr := figureRow{Tool: tool, Row: row, Label: compareRows[row], Keys: keys}
	if fr.Label == "" {
		fr.Label = row
	}
	var p50, p99 []float64
	cpu, wb := map[string][]float64{}, map[string][]float64{}
	for _, r := range runs {
		fr.Runs = append(fr.Runs, r.OpsPerSec)
		p50 = append(p50, r.P50Ms)
		p99 = append(p99, r.P99Ms)
		fr.Errors += r.Errors
		if r.Ops <= 0 {
			continue
		}
		for _, n := range r.Nodes {
			k := n.Role + " " + n.Node
			cpu[k] = append(cpu[k], n.CPUSeconds*1e6/float64(r.Ops))
			wb[k] = append(wb[k], float64(n.WriteBytes)/float64(r.Ops))
		}
	}
	fr.OpsPerSec, fr.P50Ms, fr.P99Ms = median(fr.Runs), median(p50), median(p99)
	if len(cpu) > 0 {
		fr.CPUPerOpUs, fr.WriteBytesPerOp = map[string]float64{}, map[string]float64{}
		for k, v := range cpu {
			fr.CPUPerOpUs[k] = median(v)
			fr.WriteBytesPerOp[k] = median(wb[k])
		}
	}
	return fr
}

// The rows whose ops/s make the scale figures: writes and stale follower
// reads, 64 clients, at every size.
const (
	scaleWriteRow = "w64"
	scaleReadRow  = "s64"
)

// scalePoints is each tool's scale rows by keys stored, fewest first.
func scalePoints(rows []figureRow) []scalePoint {
	type k struct {
		tool string
		keys int
	}
	points := map[k]*scalePoint{}
	for _, r := range rows {
		if r.Row != scaleWriteRow && r.Row != scaleReadRow {
			continue
		}
		p := points[k{r.Tool, r.Keys}]
		if p == nil {
			p = &scalePoint{Tool: r.Tool, Keys: r.Keys}
			points[k{r.Tool, r.Keys}] = p
		}
		if r.Row == scaleWriteRow {
			p.Writes = r.OpsPerSec
		} else {
			p.Reads = r.OpsPerSec
		}
	}
	out := make([]scalePoint, 0, len(points))
	for _, p := range points {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b scalePoint) int {
		if a.Tool != b.Tool {
			return strings.Compare(a.Tool, b.Tool)
		}
		return a.Keys - b.Keys
	})
	return out
}

// keySizes is the sizes measured, fewest first.
func (f *compareFigures) keySizes() []int {
	var ks []int
	for _, r := range f.Rows {
		if !slices.Contains(ks, r.Keys) {
			ks = append(ks, r.Keys)
		}
	}
	slices.Sort(ks)
	return ks
}

// row finds a row's medians (nil: not measured).
func (f *compareFigures) row(tool, row string, keys int) *figureRow {
	for i := range f.Rows {
		if r := &f.Rows[i]; r.Tool == tool && r.Row == row && r.Keys == keys {
			return r
		}
	}
	return nil
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// ratioOf is a/b, 0 when either is missing.
func ratioOf(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0
	}
	return a / b
}

// fmtKeys writes a key count with thousands separators.
func fmtKeys(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// judgeGoals compares the tools row by row against the goals of issue 16.
func judgeGoals(f *compareFigures) []goalRow {
	var goals []goalRow
	sizes := f.keySizes()
	if len(sizes) == 0 {
		return goals
	}
	small, large := sizes[0], sizes[len(sizes)-1]
	na := func(w, goal string) goalRow {
		return goalRow{Workload: w, Coffer: "-", Etcd: "-", Goal: goal, Met: "n/a"}
	}
	for _, g := range []struct {
		row, goal string
		min       float64
		p99       bool
	}{
		{"w16", "≥ 1.1× etcd's ops/s, p99 ≤ etcd's", 1.1, true},
		{"w64", "≥ 1.1× etcd's ops/s, p99 ≤ etcd's", 1.1, true},
		{"s16", "≥ 1.3× etcd serializable", 1.3, false},
		{"s64", "≥ 1.3× etcd serializable", 1.3, false},
		{"l64", "≥ 1.3× etcd linearizable", 1.3, false},
	} {
		w := fmt.Sprintf("%s, %s keys", compareRows[g.row], fmtKeys(small))
		c, e := f.row("coffer", g.row, small), f.row("etcd", g.row, small)
		if c == nil || e == nil {
			goals = append(goals, na(w, g.goal))
			continue
		}
		gr := goalRow{Workload: w, Goal: g.goal,
			Coffer: fmt.Sprintf("%.0f ops/s, p99 %.2f ms", c.OpsPerSec, c.P99Ms),
			Etcd:   fmt.Sprintf("%.0f ops/s, p99 %.2f ms", e.OpsPerSec, e.P99Ms),
			Ratio:  ratioOf(c.OpsPerSec, e.OpsPerSec)}
		gr.Met = yesNo(gr.Ratio >= g.min && (!g.p99 || c.P99Ms <= e.P99Ms))
		goals = append(goals, gr)
	}
	for _, s := range []struct{ row, what string }{{scaleWriteRow, "writes, 64 clients"}, {scaleReadRow, "stale follower reads, 64 clients"}} {
		w := fmt.Sprintf("%s with %s keys stored", s.what, fmtKeys(large))
		goal := fmt.Sprintf("≥ 80 %% of the same row with %s", fmtKeys(small))
		c0, c1 := f.row("coffer", s.row, small), f.row("coffer", s.row, large)
		e0, e1 := f.row("etcd", s.row, small), f.row("etcd", s.row, large)
		if small == large || c0 == nil || c1 == nil || e0 == nil || e1 == nil {
			goals = append(goals, na(w, goal))
			continue
		}
		cp, ep := ratioOf(c1.OpsPerSec, c0.OpsPerSec), ratioOf(e1.OpsPerSec, e0.OpsPerSec)
		goals = append(goals, goalRow{Workload: w, Goal: goal,
			Coffer: fmt.Sprintf("%.0f ops/s (%.0f %%)", c1.OpsPerSec, 100*cp),
			Etcd:   fmt.Sprintf("%.0f ops/s (%.0f %%)", e1.OpsPerSec, 100*ep),
			Ratio:  ratioOf(c1.OpsPerSec, e1.OpsPerSec), Met: yesNo(cp >= 0.8)})
	}
	timed := func(list []figureTimes, tool string) *figureTimes {
		for i := range list {
			if list[i].Tool == tool && list[i].Keys == large {
				return &list[i]
			}
		}
		return nil
	}
	for _, t := range []struct {
		list      []figureTimes
		what, cmp string
		max       float64
	}{
		{f.Restarts, "`kill -9` + restart + unseal → serving", "≤ 5 s", 5},
		{f.Joins, "a new node joins and catches up", "≤ 60 s", 60},
	} {
		w := fmt.Sprintf("%s, %s keys", t.what, fmtKeys(large))
		c, e := timed(t.list, "coffer"), timed(t.list, "etcd")
		if c == nil {
			goals = append(goals, na(w, t.cmp))
			continue
		}
		gr := goalRow{Workload: w, Goal: t.cmp, Coffer: fmt.Sprintf("%.2f s", c.Seconds), Etcd: "-", Met: yesNo(c.Seconds <= t.max)}
		if e != nil {
			gr.Etcd, gr.Ratio = fmt.Sprintf("%.2f s", e.Seconds), ratioOf(c.Seconds, e.Seconds)
		}
		goals = append(goals, gr)
	}
	snap := func(tool string) *compareRecord {
		for i := len(f.Snapshots) - 1; i >= 0; i-- {
			if s := &f.Snapshots[i]; s.Tool == tool && s.Keys == large {
				return s
			}
		}
		return nil
	}
	w := fmt.Sprintf("snapshot file size, %s keys", fmtKeys(large))
	// The goal is judged against the values alone (keys × value size);
	// coffer's ratio to every key and value its state stores shows what
	// the file adds to the data (pages, free room) apart from the
	// metadata and indexes stored beside the values.
	const snapGoal = "≤ 1.5× the live data (values only)"
	if c, e := snap("coffer"), snap("etcd"); c != nil && c.LiveBytes > 0 {
		cr := float64(c.Bytes) / float64(c.LiveBytes)
		cell := fmt.Sprintf("%s (%.2f× the values only", mib(float64(c.Bytes)), cr)
		if c.StoredBytes > 0 {
			cell += fmt.Sprintf("; %.2f× the keys and values stored", float64(c.Bytes)/float64(c.StoredBytes))
		}
		gr := goalRow{Workload: w, Goal: snapGoal, Coffer: cell + ")", Etcd: "-", Met: yesNo(cr <= 1.5)}
		if e != nil && e.LiveBytes > 0 {
			gr.Etcd = fmt.Sprintf("%s (%.2f× the values only)", mib(float64(e.Bytes)), float64(e.Bytes)/float64(e.LiveBytes))
			gr.Ratio = ratioOf(float64(c.Bytes), float64(e.Bytes))
		}
		goals = append(goals, gr)
	} else {
		goals = append(goals, na(w, snapGoal))
	}
	// maxRSS is the largest node's RSS, and that node's anonymous part.
	maxRSS := func(tool string) (m, anon float64) {
		for _, r := range f.RSS {
			if r.Tool == tool && r.Keys == large && float64(r.Bytes) > m {
				m, anon = float64(r.Bytes), float64(r.AnonBytes)
			}
		}
		return m, anon
	}
	withAnon := func(m, anon float64) string {
		if anon <= 0 {
			return mib(m)
		}
		return fmt.Sprintf("%s (anonymous %s)", mib(m), mib(anon))
	}
	w = fmt.Sprintf("RSS per node (the largest), %s keys", fmtKeys(large))
	c, ca := maxRSS("coffer")
	e, ea := maxRSS("etcd")
	if c > 0 && e > 0 {
		goals = append(goals, goalRow{Workload: w, Goal: "≤ etcd's", Coffer: withAnon(c, ca), Etcd: withAnon(e, ea), Ratio: c / e, Met: yesNo(c <= e)})
	} else {
		goals = append(goals, na(w, "≤ etcd's"))
	}
	return goals
}

// writeCompareMarkdown writes the goal table, the scale table and the
// writes' profile.
func writeCompareMarkdown(w io.Writer, f *compareFigures) {
	if len(f.Meta) > 0 {
		ks := make([]string, 0, len(f.Meta))
		for k := range f.Meta {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		parts := make([]string, 0, len(ks))
		for _, k := range ks {
			parts = append(parts, fmt.Sprintf("%s: %v", k, f.Meta[k]))
		}
		fmt.Fprintf(w, "Measured by `make compare-figures` (%s).\n\n", strings.Join(parts, "; "))
	}
	fmt.Fprintln(w, "| workload | coffer | etcd v3.7.1 | ratio | goal | met? |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, g := range f.Goals {
		ratio := "-"
		if g.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", g.Ratio)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", g.Workload, g.Coffer, g.Etcd, ratio, g.Goal, g.Met)
	}
	sizes := f.keySizes()
	if len(sizes) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| keys stored | coffer writes/s | etcd writes/s | coffer reads/s | etcd reads/s | coffer RSS (largest node) | etcd RSS (largest member) | coffer snapshot | etcd snapshot |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
		for _, k := range sizes {
			cell := func(tool, row string) string {
				if r := f.row(tool, row, k); r != nil {
					return fmt.Sprintf("%.0f", r.OpsPerSec)
				}
				return "-"
			}
			rss := func(tool string) string {
				m := 0.0
				for _, r := range f.RSS {
					if r.Tool == tool && r.Keys == k {
						m = max(m, float64(r.Bytes))
					}
				}
				if m == 0 {
					return "-"
				}
				return mib(m)
			}
			snap := func(tool string) string {
				for _, s := range f.Snapshots {
					if s.Tool == tool && s.Keys == k {
						return mib(float64(s.Bytes))
					}
				}
				return "-"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", fmtKeys(k),
				cell("coffer", scaleWriteRow), cell("etcd", scaleWriteRow), cell("coffer", scaleReadRow), cell("etcd", scaleReadRow),
				rss("coffer"), rss("etcd"), snap("coffer"), snap("etcd"))
		}
	}
	var prof []string
	for _, r := range f.Rows {
		if !strings.HasPrefix(r.Row, "w") || len(r.CPUPerOpUs) == 0 {
			continue
		}
		nodes := make([]string, 0, len(r.CPUPerOpUs))
		for n := range r.CPUPerOpUs {
			nodes = append(nodes, n)
		}
		// The leader first, then the followers by name.
		slices.SortFunc(nodes, func(a, b string) int {
			if la, lb := strings.HasPrefix(a, "leader"), strings.HasPrefix(b, "leader"); la != lb {
				if la {
					return -1
				}
				return 1
			}
			return strings.Compare(a, b)
		})
		for _, n := range nodes {
			role, node, _ := strings.Cut(n, " ")
			fs := "not measured"
			for _, x := range f.Fsyncs {
				if x.Tool == r.Tool && x.Row == r.Row && x.Keys == r.Keys && x.Node == node {
					fs = fmt.Sprintf("%.2f", x.FsyncsPerOp)
				}
			}
			prof = append(prof, fmt.Sprintf("| %s | %s, %s keys | %s (%s) | %.0f | %.0f | %s |", r.Tool, r.Label, fmtKeys(r.Keys), node, role, r.CPUPerOpUs[n], r.WriteBytesPerOp[n], fs))
		}
	}
	if len(prof) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| tool | row | node (role) | CPU µs per write | bytes written per write | fsyncs per write |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
		for _, p := range prof {
			fmt.Fprintln(w, p)
		}
	}
}

// checkPNGPath refuses an output that is not a .png file name.
func checkPNGPath(cmd, flagName, path string) error {
	if path == "" {
		return usageErrorf(cmd, "give the picture's file with -%s=FILE.png", flagName)
	}
	if !strings.EqualFold(filepath.Ext(path), ".png") {
		return usageErrorf(cmd, "-%s=%q: the picture is a PNG: name the file *.png", flagName, path)
	}
	return nil
}
