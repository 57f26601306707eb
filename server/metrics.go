package server

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// nodeMetrics are the node's own Prometheus metrics, in a registry of its
// own (several nodes share a process in tests). Most are read from the
// node's state when scraped; the request counters and histograms are
// kept by the gRPC interceptor, which HTTP calls pass through too. A node
// serves them sealed or not, leader or not, and never forwards them.
type nodeMetrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	leaderChanges prometheus.Counter
	state         *prometheus.GaugeVec
}

// requestBuckets are the request latency histogram's bounds, in seconds:
// from a cached read (0.1 ms) to a write waiting out an election (5 s).
var requestBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// newNodeMetrics builds the node's registry over s's state.
func newNodeMetrics(s *Server) *nodeMetrics {
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
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coffer_raft_state_info", Help: "This node's Raft state: 1 on the series of its state.",
		}, []string{"state"}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m.reg.MustRegister(
		m.requests, m.duration, m.leaderChanges, m.state,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		gauge("coffer_sealed", "1 when this node is sealed (it serves no secret), 0 when unsealed.", func() float64 { return b2f(s.keys.Sealed()) }),
		gauge("coffer_raft_leader", "1 when this node is the Raft leader.", func() float64 { return b2f(s.raft.IsLeader()) }),
		gauge("coffer_raft_term", "This node's current Raft term.", func() float64 { return float64(s.raft.Term()) }),
		gauge("coffer_raft_commit_index", "The highest Raft index this node knows committed.", func() float64 { return float64(s.raft.CommitIndex()) }),
		gauge("coffer_raft_applied_index", "The highest Raft index this node's state machine applied.", func() float64 { return float64(s.fsm.AppliedIndex()) }),
		gauge("coffer_raft_last_contact_seconds", "Seconds since this node last heard from the leader (0 on the leader).", func() float64 {
			if s.raft.IsLeader() {
				return 0
			}
			lc := s.raft.LastContact()
			if lc.IsZero() {
				return -1
			}
			return time.Since(lc).Seconds()
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
	)
	return m
}

// gatherer refreshes coffer_raft_state_info before each scrape.
func (m *nodeMetrics) gatherer(s *Server) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		m.state.Reset()
		m.state.WithLabelValues(s.raft.State()).Set(1)
		return m.reg.Gather()
	})
}

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

// unary counts and times each API call (the last of the chain's
// interceptors to see it).
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
