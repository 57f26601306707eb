package agent

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

const benchPath = "secret/bench/db"

// benchCluster is a one-node cluster holding benchPath.
func benchCluster(b *testing.B) *testcluster.Cluster {
	c := newTestCluster(b, 1)
	if _, err := rootClient(b, c).Put(tctx(b), &pb.PutRequest{Path: benchPath, Data: map[string]string{"password": "s3cret", "user": "app"}}); err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkAgentCachedGet measures the agent's read throughput for cached
// answers: parallel gRPC Gets of one secret through the agent, over four
// connections, each answered from the agent's cache.
func BenchmarkAgentCachedGet(b *testing.B) {
	c := benchCluster(b)
	cfg := testConfig(b, c.APIAddrs(), c.Token)
	cfg.Cache = api.CacheConfig{TTL: time.Hour}
	ag := startAgent(b, cfg)
	benchGets(b, ag.Addr(), c.Token)
	if st := ag.CacheStats(); st.Misses > 1 {
		b.Fatalf("%d reads missed the cache", st.Misses-1)
	}
}

// BenchmarkNodeGet is BenchmarkAgentCachedGet against the node itself
// (default consistency, from the leader's state), for comparison.
func BenchmarkNodeGet(b *testing.B) {
	c := benchCluster(b)
	benchGets(b, c.Nodes()[0].APIAddr(), c.Token)
}

// benchGets runs parallel gRPC Gets of benchPath at addr over four
// connections and reports reads/s.
func benchGets(b *testing.B, addr, token string) {
	const conns = 4
	clients := make([]pb.KVClient, conns)
	for i := range clients {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		clients[i] = pb.NewKVClient(conn)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
	if _, err := clients[0].Get(ctx, &pb.GetRequest{Path: benchPath}); err != nil {
		b.Fatal(err)
	}
	next := make(chan int, conns)
	for i := range conns {
		next <- i
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(p *testing.PB) {
		kv := clients[0]
		select {
		case i := <-next:
			kv = clients[i]
		default:
		}
		for p.Next() {
			resp, err := kv.Get(ctx, &pb.GetRequest{Path: benchPath})
			if err != nil {
				b.Error(err)
				return
			}
			if resp.Data["password"] != "s3cret" {
				b.Errorf("value %v", resp.Data)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "reads/s")
}
