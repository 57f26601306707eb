package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"google.golang.org/grpc/metadata"

	pb "coffer/api/cofferpb"
)

// BenchmarkGetHandler measures a default read of a 256-byte secret through
// the real gRPC stack on loopback: auth, FSM read, decrypt, encode.
func BenchmarkGetHandler(b *testing.B) {
	n := startBenchNode(b)
	_, token := n.initUnseal(1, 1)
	c := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
	if _, err := n.kv.Put(c, &pb.PutRequest{Path: "secret/bench", Data: map[string]string{"v": strings.Repeat("x", 256)}}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(p *testing.PB) {
		for p.Next() {
			if _, err := n.kv.Get(c, &pb.GetRequest{Path: "secret/bench"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkTokenCheck measures the auth interceptor's token lookup.
func BenchmarkTokenCheck(b *testing.B) {
	n := startBenchNode(b)
	_, token := n.initUnseal(1, 1)
	c := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
	srv := n.srv
	gw := &gateway{raft: srv.raft, state: srv.fsm, keys: srv.keys, link: srv.link, logger: srv.logger}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := gw.authenticate(c); err != nil {
			b.Fatal(err)
		}
	}
}

// startBenchNode starts a quiet node for a benchmark.
func startBenchNode(b *testing.B) *testNode {
	b.Helper()
	dir := b.TempDir()
	cfg := testConfig(b, dir)
	cfg.Logger = nil
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	n := &testNode{t: b, dir: dir, srv: srv, conn: conn, sys: pb.NewSysClient(conn), kv: pb.NewKVClient(conn)}
	b.Cleanup(n.stop)
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.WaitLeaderReady(c); err != nil {
		b.Fatal(err)
	}
	return n
}
