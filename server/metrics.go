package server

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// nodeMetrics are the node's own Prometheus metrics, in a registry of its
// own (several nodes share a process in tests). Most are read from the
// node's state when scraped; the rest are kept by the parts that see the
// events: the request interceptor (HTTP calls pass through it too), the
// proposer, the state machine, the leader link and the read gate. A node
// serves them sealed or not, leader or not, and never forwards them.
// Every method is safe on a nil *nodeMetrics (tests build parts alone).
type nodeMetrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	leaderChanges prometheus.Counter

	applyDuration prometheus.Histogram
	fsmApply      prometheus.Histogram
	fsmLogs       prometheus.Counter
	forwarded     *prometheus.CounterVec
	reads         *prometheus.CounterVec
	readRounds    *prometheus.CounterVec
	readRoundTime prometheus.Histogram
	snapDuration  prometheus.Histogram
	snapFailures  prometheus.Counter
	snapRestores  prometheus.Counter
	// lastSnapshot is when this node last persisted a Raft snapshot
	// (Unix nanoseconds; 0: none since it started and none on disk).
	lastSnapshot atomic.Int64
	// tokens is the last count of live tokens: counting walks every token
	// record, too much for each scrape of a node holding millions.
	tokens countCache
}

// countRefresh is how long a count read by a scan is served before the
// next scrape scans again (only when the system table changed).
const countRefresh = 10 * time.Second

// countCache keeps a count that costs a scan, recounted only when the
// state it counts changed (its generation) and countRefresh has passed.
type countCache struct {
	mu      sync.Mutex
	counted bool
	gen     uint64
	at      time.Time
	n       float64
}

// get returns the cached count, or count's result when the generation
// moved and the last count is older than countRefresh; -1 when counting
// failed.
func (c *countCache) get(gen uint64, count func() (int, error)) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counted && (gen == c.gen || time.Since(c.at) < countRefresh) {
		return c.n
	}
	n, err := count()
	if err != nil {
		return -1
	}
	c.counted, c.gen, c.at, c.n = true, gen, time.Now(), float64(n)
	return c.n
}

// requestBuckets are the request latency histogram's bounds, in seconds:
// from a cached read (0.1 ms) to a write waiting out an election (5 s).
var requestBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// newNodeMetrics makes the node's instruments and registers them; the
// metrics read from the node's state are added by observeNode once the
// node is wired.
func newNodeMetrics() *nodeMetrics {
	m := &nodeMetrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coffer_requests_total", Help: "API calls this node answered (gRPC and HTTP), by method and gRPC code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "coffer_request_duration_seconds", Help: "Time this node took to answer an API call, by method.", Buckets: requestBuckets,
		}, []string{"method"}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coffer_raft_leader_changes_total", Help: "Times the leader this node knows changed (to another node or to none).",
		}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coffer_raft_apply_duration_seconds", Buckets: requestBuckets,
			Help: "On the leader: time from proposing a command to its result, i.e. Raft commit (a quorum's fsync) plus the state machine's apply.",
		}),
		fsmApply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coffer_fsm_apply_duration_seconds", Buckets: requestBuckets,
			Help: "Time this node's state machine took to apply one batch of committed entries (one bbolt transaction).",
		}),
		fsmLogs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coffer_fsm_applied_entries_total", Help: "Raft entries this node's state machine applied.",
		}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coffer_forwarded_calls_total", Help: "Calls this node forwarded to the leader, by method and result (ok or error).",
		}, []string{"method", "result"}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coffer_reads_total", Help: "Reads this node admitted, by the consistency asked for and whether the answer was marked stale.",
		}, []string{"consistency", "stale"}),
		readRounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coffer_read_index_rounds_total", Help: "Read-index rounds this follower ran with the leader (each serves every read waiting for it), by result.",
		}, []string{"result"}),
		readRoundTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coffer_read_index_round_duration_seconds", Buckets: requestBuckets,
			Help: "Time one read-index round with the leader took on this follower.",
		}),
		snapDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coffer_raft_snapshot_duration_seconds", Buckets: snapshotBuckets,
			Help: "Time this node took to persist a Raft snapshot of its state.",
		}),
		snapFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coffer_raft_snapshot_failures_total", Help: "Raft snapshots this node failed to persist.",
		}),
		snapRestores: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coffer_raft_snapshot_restores_total", Help: "Snapshots this node's state machine installed: the leader's, sent to a follower too far behind for the log, or an operator's restore.",
		}),
	}
	m.reg.MustRegister(
		m.requests, m.duration, m.leaderChanges,
		m.applyDuration, m.fsmApply, m.fsmLogs, m.forwarded, m.reads, m.readRounds, m.readRoundTime, m.snapDuration, m.snapFailures, m.snapRestores,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// observeNode registers the metrics read from s's state when scraped.
func (m *nodeMetrics) observeNode(s *Server) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m.lastSnapshot.Store(newestSnapshotOnDisk(filepath.Join(s.cfg.DataDir, "raft", "snapshots")))
	m.reg.MustRegister(
		gauge("coffer_sealed", "1 when this node is sealed (it serves no secret), 0 when unsealed.", func() float64 { return b2f(s.keys.Sealed()) }),
		gauge("coffer_raft_leader", "1 when this node is the Raft leader.", func() float64 { return b2f(s.raft.IsLeader()) }),
		gauge("coffer_raft_term", "This node's current Raft term.", func() float64 { return float64(s.raft.Term()) }),
		gauge("coffer_raft_commit_index", "The highest Raft index this node knows committed.", func() float64 { return float64(s.raft.CommitIndex()) }),
		gauge("coffer_raft_applied_index", "The highest Raft index this node's state machine applied.", func() float64 { return float64(s.fsm.AppliedIndex()) }),
		gauge("coffer_raft_apply_lag_entries", "Committed entries this node has not applied yet (its commit index, learnt from the leader, minus its applied index).", func() float64 {
			commit, applied := s.raft.CommitIndex(), s.fsm.AppliedIndex()
			if commit <= applied {
				return 0
			}
			return float64(commit - applied)
		}),
		gauge("coffer_raft_last_contact_seconds", "Seconds since this node last heard from the leader (0 on the leader, -1 never).", func() float64 {
			if s.raft.IsLeader() {
				return 0
			}
			lc := s.raft.LastContact()
			if lc.IsZero() {
				return -1
			}
			return time.Since(lc).Seconds()
		}),
		gauge("coffer_raft_snapshot_age_seconds", "Seconds since this node last persisted a Raft snapshot (-1: none on disk).", func() float64 {
			last := m.lastSnapshot.Load()
			if last == 0 {
				return -1
			}
			return time.Since(time.Unix(0, last)).Seconds()
		}),
		gauge("coffer_tokens_live", "Service tokens in this node's state (batch tokens are not stored); recounted at most every 10 s.", func() float64 {
			return m.tokens.get(s.fsm.SysGeneration(), func() (int, error) { return s.fsm.SysCount(sysTokenPref) })
		}),
		gauge("coffer_leases_live", "Live leases of dynamic credentials in this node's state.", func() float64 {
			_, total, err := s.fsm.LeaseCount("")
			if err != nil {
				return -1
			}
			return float64(total)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "coffer_lease_revocations_total", Help: "Leases this node revoked while it led."},
			func() float64 { return float64(s.leaseWorker.Stats().Revoked) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "coffer_lease_revocation_failures_total", Help: "Failed revocations this node's expiry worker retries."},
			func() float64 { return float64(s.leaseWorker.Stats().Failures) }),
		gauge("coffer_fsm_db_size_bytes", "Size of this node's state machine file (fsm.db).", func() float64 {
			fi, err := os.Stat(filepath.Join(s.cfg.DataDir, "fsm.db"))
			if err != nil {
				return -1
			}
			return float64(fi.Size())
		}),
		gauge("coffer_fsm_db_free_pages", "Pages of fsm.db bbolt can reuse (free and pending): space a snapshot or compaction would not need.", func() float64 {
			st := s.fsm.DBStats()
			return float64(st.FreePages + st.PendingPages)
		}),
		gauge("coffer_fsm_db_free_bytes", "Bytes of fsm.db in free and pending pages.", func() float64 { return float64(s.fsm.DBStats().FreeBytes) }),
		// Made at each scrape from the state read then (not a gauge vector
		// reset and set by each scrape: a concurrent one saw it empty).
		collectorFunc(func(ch chan<- prometheus.Metric) {
			ch <- prometheus.MustNewConstMetric(raftStateDesc, prometheus.GaugeValue, 1, s.raft.State())
		}),
		collectorFunc(func(ch chan<- prometheus.Metric) { collectGossip(ch, s.raft.Members()) }),
		collectorFunc(func(ch chan<- prometheus.Metric) { collectAudit(ch, s.audit) }),
		collectorFunc(func(ch chan<- prometheus.Metric) {
			if s.tls == nil {
				return
			}
			if leaf := s.tls.Leaf(); leaf != nil {
				ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue, float64(leaf.NotAfter.Unix()), "node")
			}
		}),
	)
}

var (
	raftStateDesc = prometheus.NewDesc("coffer_raft_state_info", "This node's Raft state: 1 on the series of its state.", []string{"state"}, nil)
	gossipDesc    = prometheus.NewDesc("coffer_gossip_members", "Cluster members this node's gossip knows, by state (alive, suspect, dead, left).", []string{"state"}, nil)
	auditDesc     = prometheus.NewDesc("coffer_audit_records_total", "Audit records of this node, by result: audited (at least one device recorded it) or refused (none did, and the call failed).", []string{"result"}, nil)
	auditDev      = prometheus.NewDesc("coffer_audit_device_failures_total", "Records an audit device did not confirm in time.", []string{"device"}, nil)
	auditStall    = prometheus.NewDesc("coffer_audit_device_stalled", "1 while an audit device has been stuck in one write for longer than its timeout.", []string{"device"}, nil)
	// certExpiryDesc is the node certificate's end of validity.
	certExpiryDesc = prometheus.NewDesc("coffer_tls_cert_expiry_timestamp_seconds", "When this node's TLS certificate expires (Unix seconds).", []string{"cert"}, nil)
)

// collectGossip reports the members by state, every state present (0 when
// none) so an alert can watch a series that always exists.
func collectGossip(ch chan<- prometheus.Metric, members []replication.Member) {
	counts := map[string]int{replication.StatusAlive: 0, replication.StatusSuspect: 0, replication.StatusDead: 0, replication.StatusLeft: 0}
	for _, mb := range members {
		counts[mb.Status]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(gossipDesc, prometheus.GaugeValue, float64(n), st)
	}
}

// collectAudit reports the audit broker's counters (nothing without audit
// devices).
func collectAudit(ch chan<- prometheus.Metric, a *auditor) {
	if !a.on() {
		return
	}
	st := a.broker.Stats()
	ch <- prometheus.MustNewConstMetric(auditDesc, prometheus.CounterValue, float64(st.Audited), "audited")
	ch <- prometheus.MustNewConstMetric(auditDesc, prometheus.CounterValue, float64(st.Refused), "refused")
	for _, d := range st.Devices {
		ch <- prometheus.MustNewConstMetric(auditDev, prometheus.CounterValue, float64(d.Failed), d.Name)
		stalled := 0.0
		if d.Stalled {
			stalled = 1
		}
		ch <- prometheus.MustNewConstMetric(auditStall, prometheus.GaugeValue, stalled, d.Name)
	}
}

// collectorFunc is a collector whose metrics vary (labels from the node's
// state); it describes nothing, so the registry does not check them
// ahead ("unchecked").
type collectorFunc func(chan<- prometheus.Metric)

// Describe implements prometheus.Collector.
func (collectorFunc) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// newestSnapshotOnDisk is when the newest Raft snapshot in dir was written
// (Unix nanoseconds), 0 when there is none.
func newestSnapshotOnDisk(dir string) int64 {
	metas, _ := filepath.Glob(filepath.Join(dir, "*", "meta.json"))
	var newest int64
	for _, p := range metas {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().UnixNano() > newest {
			newest = fi.ModTime().UnixNano()
		}
	}
	return newest
}

// applied records a proposal's time to its result on the leader.
func (m *nodeMetrics) applied(took time.Duration) {
	if m != nil {
		m.applyDuration.Observe(took.Seconds())
	}
}

// fsmApplied records one batch the state machine applied.
func (m *nodeMetrics) fsmApplied(logs int, took time.Duration) {
	if m != nil {
		m.fsmApply.Observe(took.Seconds())
		m.fsmLogs.Add(float64(logs))
	}
}

// snapshotPersisted records one Raft snapshot of the state.
func (m *nodeMetrics) snapshotPersisted(took time.Duration, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.snapFailures.Inc()
		return
	}
	m.snapDuration.Observe(took.Seconds())
	m.lastSnapshot.Store(time.Now().UnixNano())
}

// snapshotRestored records one snapshot installed in the state machine.
func (m *nodeMetrics) snapshotRestored() {
	if m != nil {
		m.snapRestores.Inc()
	}
}

// forwardedCall records a call forwarded to the leader.
func (m *nodeMetrics) forwardedCall(method string, err error) {
	if m != nil {
		m.forwarded.WithLabelValues(method, resultLabel(err)).Inc()
	}
}

// readAdmitted records a read the read gate let through.
func (m *nodeMetrics) readAdmitted(c pb.Consistency, stale bool) {
	if m == nil {
		return
	}
	name := "default"
	switch c {
	case pb.Consistency_CONSISTENCY_STALE:
		name = "stale"
	case pb.Consistency_CONSISTENCY_LINEARIZABLE:
		name = "linearizable"
	}
	st := "false"
	if stale {
		st = "true"
	}
	m.reads.WithLabelValues(name, st).Inc()
}

// readRound records one read-index round with the leader.
func (m *nodeMetrics) readRound(took time.Duration, err error) {
	if m != nil {
		m.readRounds.WithLabelValues(resultLabel(err)).Inc()
		m.readRoundTime.Observe(took.Seconds())
	}
}

// resultLabel is "ok" or "error".
func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// gatherer is what a scrape of the node gathers.
func (m *nodeMetrics) gatherer(*Server) prometheus.Gatherer { return m.reg }

// text is the node's metrics in Prometheus' text exposition format.
func (m *nodeMetrics) text(s *Server) ([]byte, error) {
	families, err := m.gatherer(s).Gather()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// unary counts and times each API call (the first of the chain's
// interceptors: it sees the code the caller gets, Internal for a panic).
func (m *nodeMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	return resp, err
}

// watchLeader counts the changes of the leader this node follows until
// stop closes.
func (m *nodeMetrics) watchLeader(s *Server) {
	leader, changed := s.raft.Following()
	for {
		select {
		case <-s.life.stop:
			return
		case <-changed:
		}
		var now string
		now, changed = s.raft.Following()
		if now != leader {
			m.leaderChanges.Inc()
			leader = now
		}
	}
}

// startMetrics serves /metrics on cfg.MetricsAddr, unauthenticated (an
// operator's listener: keep it on a private address), until the node
// stops.
func (s *Server) startMetrics() error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.gatherer(s), promhttp.HandlerOpts{}))
	addr, err := s.serveOps("metrics", s.cfg.MetricsAddr, mux)
	if err != nil {
		return fmt.Errorf("server: -metrics-addr %s: %w (pick another address, or -metrics-addr= to turn it off)", s.cfg.MetricsAddr, err)
	}
	s.metricsAddr = addr
	return nil
}

// MetricsAddr is the address /metrics is served on, or "" when it is off.
func (s *Server) MetricsAddr() string { return s.metricsAddr }
