package server

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// testNode is one real server on loopback with its data in a temp dir.
type testNode struct {
	t    testing.TB
	dir  string
	srv  *Server
	conn *grpc.ClientConn
	sys  pb.SysClient
	kv   pb.KVClient
}

// testConfig returns a one-node config with fast Raft timings and logs
// routed to t.Log.
func testConfig(t testing.TB, dir string) Config {
	cfg := DefaultConfig()
	cfg.NodeID = "n1"
	cfg.DataDir = dir
	cfg.APIAddr = "127.0.0.1:0"
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Insecure = true
	cfg.HeartbeatTimeout = 100 * time.Millisecond
	cfg.ElectionTimeout = 100 * time.Millisecond
	cfg.LeaderLeaseTimeout = 50 * time.Millisecond
	cfg.CommitTimeout = 5 * time.Millisecond
	cfg.Logger = hclog.New(&hclog.LoggerOptions{
		Name:   "coffer",
		Level:  hclog.Debug,
		Output: testWriter{t},
	})
	return cfg
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// startNode starts a node on dir (a fresh temp dir when empty) and waits
// until it leads.
func startNode(t testing.TB, dir string) *testNode {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	return startNodeConfig(t, testConfig(t, dir))
}

// startNodeConfig starts a node of cfg and waits until it leads.
func startNodeConfig(t testing.TB, cfg Config) *testNode {
	t.Helper()
	dir := cfg.DataDir
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	conn, err := grpc.NewClient(srv.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	n := &testNode{t: t, dir: dir, srv: srv, conn: conn, sys: pb.NewSysClient(conn), kv: pb.NewKVClient(conn)}
	t.Cleanup(n.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.WaitLeaderReady(ctx); err != nil {
		t.Fatalf("node did not become a ready leader: %v", err)
	}
	return n
}

// stop shuts the node down; safe to call twice.
func (n *testNode) stop() {
	n.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		n.t.Errorf("shutdown: %v", err)
	}
}

// initUnseal initializes with shares/threshold and unseals with the first
// threshold shares; it returns the shares and the root token.
func (n *testNode) initUnseal(shares, threshold uint32) ([][]byte, string) {
	n.t.Helper()
	res, err := n.sys.Init(ctx(n.t), &pb.InitRequest{SecretShares: shares, SecretThreshold: threshold})
	if err != nil {
		n.t.Fatalf("init: %v", err)
	}
	for i := 0; i < int(threshold); i++ {
		if _, err := n.sys.Unseal(ctx(n.t), &pb.UnsealRequest{Key: res.Keys[i]}); err != nil {
			n.t.Fatalf("unseal share %d: %v", i, err)
		}
	}
	return res.Keys, res.RootToken
}

// ctx returns a context with a deadline that ends with the test.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// authed adds a bearer token to a context.
func authed(t testing.TB, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx(t), "authorization", "Bearer "+token)
}

// wantCode fails unless err has the given gRPC code.
func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v (code %s), want code %s", err, status.Code(err), code)
	}
}
