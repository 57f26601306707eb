package integration

import (
	"bufio"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
)

// scrape is one /metrics answer: each family's type, and each sample's
// value by its line's name and labels ("name{a=\"b\"}").
type scrape struct {
	types   map[string]string
	samples map[string]float64
}

func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	if url == "" {
		t.Fatal("the node serves no metrics")
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	s := scrape{types: map[string]string{}, samples: map[string]float64{}}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			s.types[name] = typ
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		s.samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

// value is a sample that must be there.
func (s scrape) value(t *testing.T, key string) float64 {
	t.Helper()
	v, ok := s.samples[key]
	if !ok {
		t.Fatalf("no sample %s", key)
	}
	return v
}

// TestMetricsOnEveryNode: the leader, a follower and a sealed node each
// serve their own metrics, unauthenticated, with Prometheus' types; the
// request counters count calls by method and code; the leader-change
// counter moves after a step-down.
func TestMetricsOnEveryNode(t *testing.T) {
	c, leader, cl := unsealedCluster(t, ClusterOptions{Metrics: true, HTTP: true, TLS: true, AuditFiles: true, SnapshotInterval: time.Hour})
	if _, err := cl.Put(ctx(t), &pb.PutRequest{Path: "secret/metrics/a", Data: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(ctx(t), &pb.GetRequest{Path: "secret/metrics/a"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"coffer_sealed": "gauge", "coffer_raft_leader": "gauge", "coffer_raft_state_info": "gauge", "coffer_raft_term": "gauge",
		"coffer_raft_commit_index": "gauge", "coffer_raft_applied_index": "gauge", "coffer_raft_last_contact_seconds": "gauge",
		"coffer_raft_leader_changes_total": "counter", "coffer_requests_total": "counter", "coffer_request_duration_seconds": "histogram",
		"coffer_leases_live": "gauge", "coffer_lease_revocations_total": "counter", "coffer_lease_revocation_failures_total": "counter",
		"coffer_fsm_db_size_bytes": "gauge", "go_goroutines": "gauge", "process_resident_memory_bytes": "gauge",
		"coffer_raft_apply_duration_seconds": "histogram", "coffer_fsm_apply_duration_seconds": "histogram",
		"coffer_fsm_applied_entries_total": "counter", "coffer_raft_apply_lag_entries": "gauge",
		"coffer_reads_total": "counter", "coffer_tokens_live": "gauge", "coffer_fsm_db_free_pages": "gauge",
		"coffer_fsm_db_free_bytes": "gauge", "coffer_gossip_members": "gauge", "coffer_raft_snapshot_age_seconds": "gauge",
		"coffer_raft_snapshot_duration_seconds": "histogram", "coffer_raft_snapshot_failures_total": "counter",
		"coffer_raft_snapshot_restores_total": "counter",
	}
	ls := scrapeMetrics(t, leader.MetricsURL())
	for name, typ := range want {
		if ls.types[name] != typ {
			t.Errorf("leader: %s has type %q, want %q", name, ls.types[name], typ)
		}
	}
	if ls.value(t, "coffer_sealed") != 0 || ls.value(t, "coffer_raft_leader") != 1 || ls.value(t, `coffer_raft_state_info{state="leader"}`) != 1 {
		t.Fatalf("leader: sealed %v, leader %v", ls.samples["coffer_sealed"], ls.samples["coffer_raft_leader"])
	}
	if ls.value(t, `coffer_requests_total{code="OK",method="/coffer.v1.KV/Put"}`) < 1 {
		t.Fatal("the leader counted no KV put")
	}
	if ls.value(t, `coffer_request_duration_seconds_count{method="/coffer.v1.KV/Put"}`) < 1 || ls.value(t, "coffer_raft_applied_index") < 1 {
		t.Fatal("the leader timed no KV put, or applied nothing")
	}
	if ls.value(t, "coffer_raft_apply_duration_seconds_count") < 1 || ls.value(t, "coffer_fsm_applied_entries_total") < 1 {
		t.Fatal("the leader timed no Raft apply")
	}
	waitUntil(t, 10*time.Second, "the leader's gossip counts three alive members and no dead one", func() bool {
		g := scrapeMetrics(t, leader.MetricsURL())
		return g.value(t, `coffer_gossip_members{state="alive"}`) == 3 && g.value(t, `coffer_gossip_members{state="dead"}`) == 0
	})
	if exp := ls.value(t, `coffer_tls_cert_expiry_timestamp_seconds{cert="node"}`); exp < float64(time.Now().Add(24*time.Hour).Unix()) {
		t.Fatalf("node certificate expiry %v: want a day or more ahead", exp)
	}
	if ls.value(t, `coffer_audit_records_total{result="audited"}`) < 2 || ls.value(t, `coffer_audit_records_total{result="refused"}`) != 0 {
		t.Fatalf("audit records: %v", ls.samples)
	}
	if ls.value(t, "coffer_tokens_live") < 1 {
		t.Fatal("no live token counted: the root token is one")
	}
	fol := c.Followers(leader)[0]
	// Through a follower: a write is forwarded, a default read runs a
	// read-index round, a stale read is marked stale.
	fc := c.Client(t, fol)
	if _, err := fc.Put(ctx(t), &pb.PutRequest{Path: "secret/metrics/b", Data: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.Get(ctx(t), &pb.GetRequest{Path: "secret/metrics/b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.Get(ctx(t), &pb.GetRequest{Path: "secret/metrics/b", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}}); err != nil {
		t.Fatal(err)
	}
	fs := scrapeMetrics(t, fol.MetricsURL())
	all := map[string]string{}
	maps.Copy(all, ls.types)
	maps.Copy(all, fs.types)
	checkMetricDocs(t, all)
	if fs.value(t, `coffer_forwarded_calls_total{method="/coffer.v1.KV/Put",result="ok"}`) != 1 {
		t.Fatalf("the follower counted no forwarded put: %v", fs.samples)
	}
	if fs.value(t, `coffer_read_index_rounds_total{result="ok"}`) < 1 || fs.value(t, `coffer_reads_total{consistency="default",stale="false"}`) < 1 ||
		fs.value(t, `coffer_reads_total{consistency="stale",stale="true"}`) != 1 {
		t.Fatalf("the follower's reads: %v", fs.samples)
	}
	if fs.value(t, "coffer_raft_leader") != 0 || fs.value(t, `coffer_raft_state_info{state="follower"}`) != 1 || fs.value(t, "coffer_raft_term") != ls.value(t, "coffer_raft_term") {
		t.Fatalf("follower: %v", fs.samples)
	}
	// Vault's sys/metrics: the node's own, for a token with read on it.
	get := func(n *Node, query, token string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, n.HTTPURL()+"/v1/sys/metrics"+query, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("X-Vault-Token", token)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.ClientTLS()}}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(fol, "?format=prometheus", c.Token); code != 200 || !strings.Contains(body, "coffer_raft_leader 0") {
		t.Fatalf("sys/metrics on a follower: %d %.200s", code, body)
	}
	if code, _ := get(fol, "?format=prometheus", ""); code != 403 {
		t.Fatalf("sys/metrics without a token: %d, want 403", code)
	}
	if code, body := get(fol, "", c.Token); code != 400 || !strings.Contains(body, "format=prometheus") {
		t.Fatalf("sys/metrics without format: %d %s", code, body)
	}

	// A step-down: every node's leader-change counter moves.
	before := fs.value(t, "coffer_raft_leader_changes_total")
	if _, err := cl.StepDown(ctx(t)); err != nil {
		t.Fatalf("step-down: %v", err)
	}
	c.WaitForNewLeader(t, leader)
	waitUntil(t, 10*time.Second, "the follower's leader-change counter moved", func() bool {
		return scrapeMetrics(t, fol.MetricsURL()).value(t, "coffer_raft_leader_changes_total") > before
	})
	// A restarted node is sealed, and says so in its own metrics.
	c.Kill(fol)
	c.Restart(t, fol)
	ss := scrapeMetrics(t, fol.MetricsURL())
	if ss.value(t, "coffer_sealed") != 1 {
		t.Fatalf("a restarted node: coffer_sealed = %v, want 1", ss.samples["coffer_sealed"])
	}
	t.Logf("%d samples on the sealed node", len(ss.samples))
}

// checkMetricDocs keeps docs/OPERATIONS.md and the Grafana dashboard true:
// every coffer_ metric a node exports is documented, and every coffer_
// metric either of them names is exported by a node (or, coffer_agent_,
// by the agent, whose test checks its own).
func checkMetricDocs(t *testing.T, exported map[string]string) {
	t.Helper()
	ops, err := os.ReadFile("../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	dash, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := json.Unmarshal(dash, &parsed); err != nil {
		t.Fatalf("docs/grafana-dashboard.json: %v", err)
	}
	for name := range exported {
		if strings.HasPrefix(name, "coffer_") && !strings.Contains(string(ops), name) {
			t.Errorf("docs/OPERATIONS.md does not list %s", name)
		}
	}
	name := regexp.MustCompile(`coffer_[a-z_]+`)
	for _, doc := range []struct {
		file string
		text []byte
	}{{"docs/OPERATIONS.md", ops}, {"docs/grafana-dashboard.json", dash}} {
		for _, m := range name.FindAllString(string(doc.text), -1) {
			base := m
			for _, suf := range []string{"_bucket", "_count", "_sum"} {
				base = strings.TrimSuffix(base, suf)
			}
			if strings.HasPrefix(base, "coffer_agent_") || strings.HasSuffix(base, "_") {
				continue // the agent's; a prefix in prose ("coffer_…_total")
			}
			if _, ok := exported[base]; !ok {
				t.Errorf("%s names %s, which no node exports", doc.file, m)
			}
		}
	}
}
