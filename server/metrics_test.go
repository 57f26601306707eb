package server

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// BenchmarkMetricsInterceptor is what counting and timing costs each API
// call (docs/OPERATIONS.md): the interceptor around a handler that does
// nothing.
func BenchmarkMetricsInterceptor(b *testing.B) {
	m := &nodeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "d", Buckets: requestBuckets}, []string{"method"}),
	}
	info := &grpc.UnaryServerInfo{FullMethod: pb.KV_Get_FullMethodName}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.unary(ctx, nil, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRaftStateMetricConcurrentScrapes: scrapes at once (Prometheus on
// /metrics and a client on /v1/sys/metrics) each see exactly one
// coffer_raft_state_info series: the gauge was reset and set by each
// scrape in turn, so one scrape could gather it empty between another's
// reset and set (an "absent" alert firing on a healthy node).
func TestRaftStateMetricConcurrentScrapes(t *testing.T) {
	n := startNode(t, "")
	g := n.srv.metrics.gatherer(n.srv)
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 8 {
		wg.Go(func() {
			for range 200 {
				fams, err := g.Gather()
				if err != nil {
					t.Error(err)
					return
				}
				series := 0
				for _, f := range fams {
					if f.GetName() == "coffer_raft_state_info" {
						for _, m := range f.GetMetric() {
							if m.GetGauge().GetValue() == 1 {
								series++
							}
						}
					}
				}
				if series != 1 {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if b := bad.Load(); b > 0 {
		t.Fatalf("%d of 1600 concurrent scrapes did not hold exactly one coffer_raft_state_info series", b)
	}
}
