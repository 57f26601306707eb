package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/server/httpapi"
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

// BenchmarkMetricsPerRead is all the metrics work a follower does for one
// read (docs/BENCHMARKS.md): the interceptor around the call and the read
// counter; the read-index round's counter and histogram are shared by
// every read waiting for the round.
func BenchmarkMetricsPerRead(b *testing.B) {
	m := newNodeMetrics()
	info := &grpc.UnaryServerInfo{FullMethod: pb.KV_Get_FullMethodName}
	handler := func(context.Context, any) (any, error) {
		m.readAdmitted(pb.Consistency_CONSISTENCY_LINEARIZABLE, false)
		return nil, nil
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.unary(ctx, nil, info, handler); err != nil {
				b.Error(err)
			}
		}
	})
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

// TestPanickingCallIsCounted: a call whose handler panics is answered
// Internal by the recovery interceptor, and must be counted as such in
// coffer_requests_total: with the metrics inside the recovery, the panic
// unwound past them and the one failure worth an alert was never counted.
func TestPanickingCallIsCounted(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	method := pb.KV_Get_FullMethodName
	internal := func() float64 {
		return counterValue(n.srv.metrics.requests.WithLabelValues(method, codes.Internal.String()))
	}
	before := internal()
	ctx := callContext(context.Background(), httpapi.Caller{Token: token, RemoteAddr: "127.0.0.1:1"})
	_, err := n.srv.inproc.chain(ctx, &pb.GetRequest{Path: "secret/x"}, &grpc.UnaryServerInfo{FullMethod: method}, func(context.Context, any) (any, error) {
		panic("boom")
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("a panicking handler answered %v, want Internal", err)
	}
	if got := internal(); got != before+1 {
		t.Fatalf("coffer_requests_total{code=Internal} went from %v to %v, want one more", before, got)
	}
}

// TestCountCacheRecountsOnlyWhenChangedAndDue: a scan-backed gauge scans
// once per change of the state it counts, and no more than once per
// countRefresh however often it is scraped.
func TestCountCacheRecountsOnlyWhenChangedAndDue(t *testing.T) {
	var c countCache
	scans := 0
	count := func(n int) func() (int, error) {
		return func() (int, error) { scans++; return n, nil }
	}
	if got := c.get(1, count(5)); got != 5 || scans != 1 {
		t.Fatalf("first scrape = %v after %d scans, want 5 after 1", got, scans)
	}
	for range 100 {
		if got := c.get(1, count(9)); got != 5 {
			t.Fatalf("unchanged state answered %v, want the cached 5", got)
		}
	}
	if got := c.get(2, count(6)); got != 5 || scans != 1 {
		t.Fatalf("a change within countRefresh = %v after %d scans, want the cached 5 after 1", got, scans)
	}
	c.at = c.at.Add(-countRefresh) // the last count is now due
	if got := c.get(2, count(6)); got != 6 || scans != 2 {
		t.Fatalf("a due change = %v after %d scans, want 6 after 2", got, scans)
	}
	c.at = c.at.Add(-countRefresh)
	if got := c.get(2, func() (int, error) { scans++; return 0, errors.New("disk") }); got != 6 || scans != 2 {
		t.Fatalf("unchanged generation rescanned: %v after %d scans", got, scans)
	}
	if got := c.get(3, func() (int, error) { return 0, errors.New("disk") }); got != -1 {
		t.Fatalf("a failed count = %v, want -1", got)
	}
}
