package server

import (
	"context"
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
