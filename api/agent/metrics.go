package agent

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"coffer/api"
)

// agentMetrics are the agent's Prometheus metrics (Config.MetricsAddr):
// how its reads were answered, the cache's counters, and how old the
// answers it served were.
type agentMetrics struct {
	reg   *prometheus.Registry
	reads *prometheus.CounterVec
	age   prometheus.Histogram
	// oldest is the largest age of a cached answer served, over the last
	// one to two minutes.
	oldest servedAge
}

// ageBuckets are the served-age histogram's bounds, in seconds: from a
// fresh cached answer to one served an hour into an outage.
var ageBuckets = []float64{0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600}

func newAgentMetrics(cache *api.Cache) *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coffer_agent_reads_total",
			Help: "KV reads the agent answered, by source: cache (a fresh cached answer), cache_stale (a cached answer served because no node answered), upstream, upstream_stale (a stale fallback read from the cluster), error.",
		}, []string{"source"}),
		age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coffer_agent_cache_served_age_seconds", Buckets: ageBuckets,
			Help: "Age of the cached answers the agent served (time since it fetched them).",
		}),
	}
	counter := func(name, help string, f func(api.CacheStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(cache.Stats())) })
	}
	m.reg.MustRegister(m.reads, m.age,
		counter("coffer_agent_cache_hits_total", "Cache lookups that found a fresh answer.", func(s api.CacheStats) uint64 { return s.Hits }),
		counter("coffer_agent_cache_misses_total", "Cache lookups that found no fresh answer.", func(s api.CacheStats) uint64 { return s.Misses }),
		counter("coffer_agent_cache_stale_served_total", "Expired answers served because no node answered (stale-if-error).", func(s api.CacheStats) uint64 { return s.StaleServed }),
		counter("coffer_agent_cache_evictions_total", "Answers dropped to keep the cache within its size.", func(s api.CacheStats) uint64 { return s.Evictions }),
		counter("coffer_agent_cache_invalidations_total", "Answers dropped because their secret changed.", func(s api.CacheStats) uint64 { return s.Invalidations }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_agent_cache_entries", Help: "Answers in the cache."},
			func() float64 { return float64(cache.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "coffer_agent_cache_oldest_served_age_seconds",
			Help: "The oldest cached answer the agent served in the last one to two minutes: its age when served (0 when none).",
		}, func() float64 { return m.oldest.max(time.Now()).Seconds() }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// read records how one Get was answered.
func (m *agentMetrics) read(info api.ReadInfo, err error) {
	source := "upstream"
	switch {
	case err != nil:
		source = "error"
	case info.Cached && info.Fallback:
		source = "cache_stale"
	case info.Cached:
		source = "cache"
	case info.Fallback:
		source = "upstream_stale"
	}
	m.reads.WithLabelValues(source).Inc()
	if err == nil && info.Cached {
		m.age.Observe(info.Age.Seconds())
		m.oldest.note(time.Now(), info.Age)
	}
}

// servedAgeWindow is the length of one of servedAge's two windows.
const servedAgeWindow = time.Minute

// servedAge keeps the largest age served in the current window and the one
// before it, so the gauge reads the same for every scraper and falls back
// to 0 a window or two after the last stale answer.
type servedAge struct {
	mu        sync.Mutex
	start     time.Time
	cur, prev time.Duration
}

func (s *servedAge) roll(now time.Time) {
	switch {
	case now.Sub(s.start) >= 2*servedAgeWindow:
		s.start, s.cur, s.prev = now, 0, 0
	case now.Sub(s.start) >= servedAgeWindow:
		s.start, s.prev, s.cur = s.start.Add(servedAgeWindow), s.cur, 0
	}
}

func (s *servedAge) note(now time.Time, age time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roll(now)
	s.cur = max(s.cur, age)
}

func (s *servedAge) max(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roll(now)
	return max(s.cur, s.prev)
}

// serveMetrics serves /metrics on the metrics listener until the agent
// stops.
func (a *Agent) serveMetrics() {
	lis := a.metricsLis
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	a.bg.Add(2)
	go func() {
		defer a.bg.Done()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logger.Warn("metrics server stopped", "error", err)
		}
	}()
	go func() {
		defer a.bg.Done()
		<-a.stopCtx.Done()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
}

// MetricsAddr is the address /metrics is served on, or "" when it is off.
func (a *Agent) MetricsAddr() string {
	if a.metricsLis == nil {
		return ""
	}
	return a.metricsLis.Addr().String()
}
