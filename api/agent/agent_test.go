package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig returns an agent configuration over endpoints with the given
// own token, on a loopback port, logging to t.
func testConfig(t testing.TB, endpoints []string, token string) Config {
	cfg := DefaultConfig()
	cfg.Upstream = api.Config{Endpoints: endpoints, Token: token}
	cfg.Listen = "127.0.0.1:0"
	cfg.PersistDelay = 20 * time.Millisecond
	cfg.Logger = testcluster.Logger(t, "agent", hclog.Info)
	return cfg
}

// startAgent creates and starts an agent; it is shut down with the test.
func startAgent(t testing.TB, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	a.Start()
	t.Cleanup(func() { shutdown(t, a) })
	return a
}

// shutdown stops a within a few seconds.
func shutdown(t testing.TB, a *Agent) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Errorf("agent shutdown: %v", err)
	}
}

// agentConn is a plain gRPC connection to an agent.
type agentConn struct {
	conn *grpc.ClientConn
	kv   pb.KVClient
	sys  pb.SysClient
}

// dial connects to the agent at addr; the connection closes with the test.
func dial(t testing.TB, addr string) *agentConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &agentConn{conn: conn, kv: pb.NewKVClient(conn), sys: pb.NewSysClient(conn)}
}

// as returns a context whose calls carry token ("" for none).
func as(t testing.TB, token string) context.Context {
	ctx := tctx(t)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx
}

// got is one Get through the agent with its cache header.
type got struct {
	resp  *pb.GetResponse
	cache string
	ageMs int64
	err   error
}

func (g got) String() string {
	if g.err != nil {
		return fmt.Sprintf("error %v", g.err)
	}
	return fmt.Sprintf("data %v meta %v cache %s age %dms", g.resp.Data, g.resp.ReadMeta, g.cache, g.ageMs)
}

// get reads path through the agent with token.
func (a *agentConn) get(t testing.TB, token, path string) got {
	var hdr metadata.MD
	resp, err := a.kv.Get(as(t, token), &pb.GetRequest{Path: path}, grpc.Header(&hdr))
	g := got{resp: resp, err: err}
	if v := hdr.Get(HeaderCache); len(v) == 1 {
		g.cache = v[0]
	}
	if v := hdr.Get(HeaderCacheAge); len(v) == 1 {
		g.ageMs, _ = strconv.ParseInt(v[0], 10, 64)
	}
	return g
}

// newKey returns a random cache key.
func newKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}

// rootClient returns an api.Client over the cluster with the root token.
func rootClient(t testing.TB, c *testcluster.Cluster) *api.Client {
	t.Helper()
	cl, err := api.New(api.Config{Endpoints: c.APIAddrs(), Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// grepDir fails when any file under dir contains marker; it returns the
// number of files read.
func grepDir(t testing.TB, dir, marker string) int {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("plaintext marker found in %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestAgentOutage is the failure story of the agent over a real 3-node
// cluster: cached reads per token, a full outage served from the cache
// (marked stale, with its age) until max-stale and then a clear error, a
// restarted agent serving from its encrypted cache file during the
// outage, and fresh reads once the cluster is back, without a restart.
func TestAgentOutage(t *testing.T) {
	c := newTestCluster(t, 3)
	root := rootClient(t, c)
	marker := "agent-marker-" + rand.Text()
	const path = "secret/app/db"
	if _, err := root.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"password": marker}}); err != nil {
		t.Fatal(err)
	}

	const ttl, maxStale = time.Second, 8 * time.Second
	dir := filepath.Join(t.TempDir(), "cache")
	key := newKey()
	cfg := testConfig(t, c.APIAddrs(), c.Token)
	cfg.Cache = api.CacheConfig{TTL: ttl, MaxStale: maxStale, Jitter: -1}
	cfg.CacheDir, cfg.CacheKey, cfg.CacheKeySource = dir, key, "the test key"
	cfg.MetricsAddr = "127.0.0.1:0"
	ag := startAgent(t, cfg)
	ac := dial(t, ag.Addr())

	// Through the agent: a miss, then a hit, for the root token.
	begin := time.Now() // no answer the agent caches is older
	// On a loaded machine a fresh cluster's first default read can fall
	// back to a stale one (a pass over every node timed out); that answer
	// is not cached for hits, so ask until the cluster answers fresh.
	var g got
	testcluster.WaitFor(t, 10*time.Second, "a fresh first answer through the agent", func() error {
		if g = ac.get(t, c.Token, path); g.err != nil || g.resp.ReadMeta.GetStale() {
			return fmt.Errorf("%s", g)
		}
		return nil
	})
	if g.resp.Data["password"] != marker || g.cache != "miss" {
		t.Fatalf("first get through the agent: %s", g)
	}
	if g = ac.get(t, c.Token, path); g.err != nil || g.resp.Data["password"] != marker || g.cache != "hit" {
		t.Fatalf("second get through the agent: %s", g)
	}
	// Another (invalid) token is not served the cached value.
	const bogus = "not-a-token-4242"
	if g := ac.get(t, bogus, path); status.Code(g.err) != codes.Unauthenticated || g.resp != nil {
		t.Fatalf("get with another token: %s", g)
	}
	// No token: nothing. The agent does not lend its own token on a TCP
	// port (whoever reaches the port would get its rights).
	if g := ac.get(t, "", path); status.Code(g.err) != codes.Unauthenticated || g.resp != nil || !strings.Contains(status.Convert(g.err).Message(), "-use-agent-token") {
		t.Fatalf("get without a token: %s", g)
	}
	// The cache file follows the cache (debounced) and holds no plaintext.
	testcluster.WaitFor(t, 10*time.Second, "the cache file", func() error {
		c, _, err := ag.file.load()
		if err != nil || len(c.Records) != 1 { // one token (the agent's is the root token too), one path
			return fmt.Errorf("%d records, %v", len(c.Records), err)
		}
		return nil
	})
	grepDir(t, dir, marker)

	// The whole cluster goes down.
	c.KillAll()
	testcluster.WaitFor(t, 10*time.Second, "a stale answer from the cache", func() error {
		g = ac.get(t, c.Token, path)
		if g.err != nil {
			return g.err
		}
		if !g.resp.ReadMeta.GetStale() {
			return fmt.Errorf("not stale yet: %s", g)
		}
		return nil
	})
	if g.resp.Data["password"] != marker || g.cache != "stale" {
		t.Fatalf("stale answer: %s", g)
	}
	if g.ageMs < ttl.Milliseconds() || g.resp.ReadMeta.LastContactMs < g.ageMs {
		t.Fatalf("stale answer's age %dms, last_contact_ms %d: want at least the TTL and the age", g.ageMs, g.resp.ReadMeta.LastContactMs)
	}
	if age := time.Duration(g.ageMs) * time.Millisecond; age > time.Since(begin) {
		t.Fatalf("age %s is older than the test's first read (%s ago)", age, time.Since(begin))
	}
	// The agent's metrics saw it: a hit, a miss, a stale serve, and the
	// age of the oldest answer served.
	m := scrapeAgent(t, ag)
	if m[`coffer_agent_reads_total{source="upstream"}`] < 1 || m[`coffer_agent_reads_total{source="cache"}`] < 1 ||
		m[`coffer_agent_reads_total{source="cache_stale"}`] < 1 || m["coffer_agent_cache_stale_served_total"] < 1 || m["coffer_agent_cache_hits_total"] < 1 {
		t.Fatalf("agent metrics: %v", m)
	}
	if oldest := m["coffer_agent_cache_oldest_served_age_seconds"]; oldest < ttl.Seconds() || oldest > time.Since(begin).Seconds() {
		t.Fatalf("oldest served age %vs: want at least the TTL and at most the test's age", oldest)
	}
	// Another token gets no cached value during the outage either.
	if g := ac.get(t, bogus, path); status.Code(g.err) != codes.Unavailable || g.resp != nil {
		t.Fatalf("outage, another token: %s", g)
	}
	// The agent's status: still serving.
	st, err := ac.sys.Status(tctx(t), &pb.StatusRequest{})
	if err != nil || st.Seal.Sealed || st.RaftState != RaftState || st.LastContactMs <= 0 {
		t.Fatalf("status during the outage: %v %v", st, err)
	}

	// Restart the agent during the outage: it serves from its cache file.
	shutdown(t, ag)
	if n := grepDir(t, dir, marker); n != 1 {
		t.Fatalf("%d files in the cache dir, want 1", n)
	}
	if info, err := os.Stat(filepath.Join(dir, CacheFileName)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", info, err)
	}
	if info, err := os.Stat(dir); err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir: %v %v", info, err)
	}
	wrong := cfg
	wrong.CacheKey = newKey()
	if _, err := New(wrong); !errors.Is(err, ErrWrongCacheKey) || !strings.Contains(err.Error(), "the test key") || !strings.Contains(err.Error(), CacheFileName) {
		t.Fatalf("agent with a wrong key: %v", err)
	}
	ag2 := startAgent(t, cfg)
	ac2 := dial(t, ag2.Addr())
	if g := ac2.get(t, c.Token, path); g.err != nil || g.resp.Data["password"] != marker || !g.resp.ReadMeta.GetStale() || g.cache != "stale" {
		t.Fatalf("restarted agent during the outage: %s", g)
	}
	if g := ac2.get(t, bogus, path); g.err == nil {
		t.Fatalf("restarted agent served another token: %s", g)
	}

	// Past max-stale: a clear error.
	testcluster.WaitFor(t, ttl+maxStale+10*time.Second, "the max-stale error", func() error {
		g := ac2.get(t, c.Token, path)
		if g.err == nil {
			return fmt.Errorf("still served: %s", g)
		}
		return nil
	})
	g = ac2.get(t, c.Token, path)
	msg := status.Convert(g.err).Message()
	if status.Code(g.err) != codes.Unavailable || !strings.Contains(msg, "past -max-stale") || !strings.Contains(msg, "cluster is unreachable") {
		t.Fatalf("past max-stale: %v", g.err)
	}
	t.Logf("past max-stale: %v", g.err)

	// The cluster comes back: fresh answers, without restarting the agent.
	c.RestartAll(t)
	c.UnsealAll(t)
	c.WaitForLeader(t)
	testcluster.WaitFor(t, 20*time.Second, "a fresh answer after the outage", func() error {
		g := ac2.get(t, c.Token, path)
		if g.err != nil {
			return g.err
		}
		if g.resp.ReadMeta.GetStale() || g.resp.Data["password"] != marker {
			return fmt.Errorf("not fresh: %s", g)
		}
		return nil
	})
	if _, err := root.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"password": "rotated"}}); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 20*time.Second, "the new value through the agent", func() error {
		g := ac2.get(t, c.Token, path)
		if g.err != nil {
			return g.err
		}
		if g.resp.Data["password"] != "rotated" || g.resp.ReadMeta.GetStale() {
			return fmt.Errorf("old answer: %s", g)
		}
		return nil
	})
}

// TestAgentPassThrough: writes go upstream with the caller's token and
// request id and drop the agent's cached answer; List and ReadMetadata are
// answered by the cluster; a change made elsewhere reaches the agent's
// cache by its watch; Watch is proxied; a malformed authorization header
// is refused.
func TestAgentPassThrough(t *testing.T) {
	c := newTestCluster(t, 1)
	root := rootClient(t, c)
	cfg := testConfig(t, c.APIAddrs(), "") // no token of its own
	cfg.Cache.TTL = time.Hour
	cfg.CacheDir, cfg.CacheKey = t.TempDir(), newKey()
	ag := startAgent(t, cfg)
	ac := dial(t, ag.Addr())
	ctx := as(t, c.Token)

	// A watch through the agent, from now.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	stream, err := ac.kv.Watch(wctx, &pb.WatchRequest{Prefix: "secret/"})
	if err != nil {
		t.Fatal(err)
	}
	// The agent's upstream watch starts asynchronously, "from now" as the
	// node sees it: wait for the node's first progress event, or a write
	// made before the upstream stream exists is (rightly) not reported.
	if ev, err := stream.Recv(); err != nil || ev.Type != pb.WatchEvent_PROGRESS {
		t.Fatalf("first event of the watch: %v %v, want the node's progress event", ev, err)
	}

	const path = "secret/pass/through"
	put := &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}, RequestId: "agent-test-request-1"}
	p1, err := ac.kv.Put(ctx, put)
	if err != nil {
		t.Fatal(err)
	}
	// The same request id: the first result, not a second version.
	p2, err := ac.kv.Put(ctx, put)
	if err != nil || p2.Version != p1.Version || p2.Index != p1.Index {
		t.Fatalf("retried put: %v %v, first %v", p2, err, p1)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch through the agent: %v", err)
		}
		if ev.Type == pb.WatchEvent_CHANGE {
			if ev.Path != path || ev.Op != "put" || ev.Version != 1 || ev.Index != p1.Index {
				t.Fatalf("watch event: %v", ev)
			}
			break
		}
	}
	wcancel()

	if g := ac.get(t, c.Token, path); g.err != nil || g.resp.Data["v"] != "1" || g.cache != "miss" {
		t.Fatalf("get: %s", g)
	}
	if g := ac.get(t, c.Token, path); g.cache != "hit" {
		t.Fatalf("second get: %s", g)
	}
	// A write through the agent drops the cached answer at once.
	if _, err := ac.kv.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": "2"}}); err != nil {
		t.Fatal(err)
	}
	if g := ac.get(t, c.Token, path); g.err != nil || g.resp.Data["v"] != "2" || g.cache != "miss" {
		t.Fatalf("get after a write through the agent: %s", g)
	}
	// A write made elsewhere reaches an agent's cache through its watch
	// (TTL is 1h). The watch runs with the agent's own token, which this
	// agent lacks: a second agent with one shows it.
	cfg2 := testConfig(t, c.APIAddrs(), c.Token)
	cfg2.Cache.TTL = time.Hour
	ag2 := startAgent(t, cfg2)
	ac2 := dial(t, ag2.Addr())
	if g := ac2.get(t, c.Token, path); g.err != nil || g.resp.Data["v"] != "2" {
		t.Fatalf("get through the second agent: %s", g)
	}
	if _, err := root.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "3"}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testcluster.WaitFor(t, 10*time.Second, "the change to reach the agent's cache", func() error {
		if g := ac2.get(t, c.Token, path); g.err != nil || g.resp.Data["v"] != "3" {
			return fmt.Errorf("%s", g)
		}
		return nil
	})
	t.Logf("a change made elsewhere reached the agent's cache in %s", time.Since(start).Round(time.Millisecond))

	// Deletes, metadata and lists.
	if _, err := ac.kv.Delete(ctx, &pb.VersionsRequest{Path: path}); err != nil {
		t.Fatal(err)
	}
	if g := ac.get(t, c.Token, path); status.Code(g.err) != codes.NotFound {
		t.Fatalf("get after delete: %s", g)
	}
	if _, err := ac.kv.Undelete(ctx, &pb.VersionsRequest{Path: path, Versions: []uint64{3}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.kv.WriteMetadata(ctx, &pb.WriteMetadataRequest{Path: path, MaxVersions: 7}); err != nil {
		t.Fatal(err)
	}
	md, err := ac.kv.ReadMetadata(ctx, &pb.ReadMetadataRequest{Path: path})
	if err != nil || md.CurrentVersion != 3 || md.MaxVersions != 7 || md.ReadMeta.GetNodeId() != "n1" {
		t.Fatalf("metadata: %v %v", md, err)
	}
	if _, err := ac.kv.Destroy(ctx, &pb.VersionsRequest{Path: path, Versions: []uint64{1}}); err != nil {
		t.Fatal(err)
	}
	list, err := ac.kv.List(ctx, &pb.ListRequest{Path: "secret/pass/"})
	if err != nil || len(list.Keys) != 1 || list.Keys[0] != "through" {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := ac.kv.DeleteMetadata(ctx, &pb.DeleteMetadataRequest{Path: path}); err != nil {
		t.Fatal(err)
	}
	if g := ac.get(t, c.Token, path); status.Code(g.err) != codes.NotFound {
		t.Fatalf("get after delete metadata: %s", g)
	}

	// Errors of the cluster pass through with their code.
	if _, err := ac.kv.Put(as(t, "bogus"), &pb.PutRequest{Path: path, Data: map[string]string{"v": "x"}}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("put with a bad token: %v", err)
	}
	if _, err := ac.kv.Put(ctx, &pb.PutRequest{Path: "secret/../x", Data: map[string]string{"v": "x"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("put to a bad path: %v", err)
	}
	// No token: the agent refuses.
	if g := ac.get(t, "", path); status.Code(g.err) != codes.Unauthenticated {
		t.Fatalf("get without any token: %s", g)
	}
	// A malformed authorization header is refused, not replaced.
	bad := metadata.AppendToOutgoingContext(tctx(t), "authorization", "Basic "+c.Token)
	if _, err := ac2.kv.Get(bad, &pb.GetRequest{Path: path}); status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "Bearer") {
		t.Fatalf("malformed authorization: %v", err)
	}
}

// TestAgentSys: Status reports the agent, the seal calls are refused with
// FailedPrecondition, health and reflection answer.
func TestAgentSys(t *testing.T) {
	c := newTestCluster(t, 1)
	cfg := testConfig(t, c.APIAddrs(), c.Token)
	cfg.Version = "9.9.9-test"
	ag := startAgent(t, cfg)
	ac := dial(t, ag.Addr())

	if _, err := rootClient(t, c).Put(tctx(t), &pb.PutRequest{Path: "secret/s", Data: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	if g := ac.get(t, c.Token, "secret/s"); g.err != nil {
		t.Fatal(g)
	}
	var st *pb.StatusResponse
	testcluster.WaitFor(t, 10*time.Second, "the agent to know the leader", func() error {
		var err error
		st, err = ac.sys.Status(tctx(t), &pb.StatusRequest{})
		if err != nil {
			return err
		}
		if st.LeaderId == "" {
			return fmt.Errorf("no leader in %v", st)
		}
		return nil
	})
	if st.NodeId != DefaultNodeID || st.RaftState != RaftState || !st.Seal.Initialized || st.Seal.Sealed ||
		st.LeaderId != "n1" || st.LeaderAddress != c.Nodes()[0].APIAddr() || st.AppliedIndex == 0 || st.Version != "9.9.9-test" {
		t.Fatalf("status: %v", st)
	}
	if st.LastContactMs > 10_000 {
		t.Fatalf("last contact %dms after a read", st.LastContactMs)
	}

	ctx := as(t, c.Token)
	for name, call := range map[string]func() error{
		"init":   func() error { _, err := ac.sys.Init(ctx, &pb.InitRequest{}); return err },
		"unseal": func() error { _, err := ac.sys.Unseal(ctx, &pb.UnsealRequest{Key: []byte("x")}); return err },
		"seal":   func() error { _, err := ac.sys.Seal(ctx, &pb.SealRequest{}); return err },
		"rotate": func() error { _, err := ac.sys.Rotate(ctx, &pb.RotateRequest{}); return err },
	} {
		err := call()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "this is a coffer agent: send it to a node") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The cluster was not sealed by the agent.
	if g := ac.get(t, c.Token, "secret/s"); g.err != nil {
		t.Fatal(g)
	}

	health := healthpb.NewHealthClient(ac.conn)
	for _, svc := range []string{"", "coffer.v1.KV"} {
		resp, err := health.Check(tctx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q: %v %v", svc, resp, err)
		}
	}

	refl, err := reflectionpb.NewServerReflectionClient(ac.conn).ServerReflectionInfo(tctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := refl.Recv()
	if err != nil {
		t.Fatal(err)
	}
	refl.CloseSend()
	services := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		services[s.Name] = true
	}
	for _, want := range []string{"coffer.v1.KV", "coffer.v1.Sys", "grpc.health.v1.Health"} {
		if !services[want] {
			t.Errorf("reflection does not list %s: %v", want, services)
		}
	}
}

// TestAgentNoUpstream: with no node reachable and nothing cached, a read
// fails with Unavailable that says it comes from upstream; Shutdown before
// Start releases the port.
func TestAgentNoUpstream(t *testing.T) {
	cfg := testConfig(t, []string{testcluster.FreeAddr(t)}, "t")
	ag := startAgent(t, cfg)
	ac := dial(t, ag.Addr())
	g := ac.get(t, "caller", "secret/x")
	if status.Code(g.err) != codes.Unavailable || !strings.HasPrefix(status.Convert(g.err).Message(), "coffer agent: no upstream node could answer, and the agent holds no cached answer of secret/x for this token: ") {
		t.Fatalf("get with no upstream: %s", g)
	}
	// The caller reached the agent: the reason says the agent reached no
	// node, which is worth a retry but is no failure to reach the agent.
	if api.Reason(g.err) != pb.ErrorReason_UPSTREAM_UNREACHABLE || !api.Retryable(g.err) || api.IsUnreachable(g.err) {
		t.Fatalf("get with no upstream: reason %s", api.Reason(g.err))
	}
	st, err := ac.sys.Status(tctx(t), &pb.StatusRequest{})
	if err != nil || st.LeaderId != "" || st.Seal.Sealed {
		t.Fatalf("status: %v %v", st, err)
	}
	// Other calls say the answer is from upstream.
	if _, err := ac.kv.List(as(t, "caller"), &pb.ListRequest{Path: "secret/"}); status.Code(err) != codes.Unavailable ||
		!strings.HasPrefix(status.Convert(err).Message(), upstreamPrefix) || api.Reason(err) != pb.ErrorReason_UPSTREAM_UNREACHABLE {
		t.Fatalf("list with no upstream: %v (reason %s)", err, api.Reason(err))
	}

	idle, err := New(testConfig(t, []string{testcluster.FreeAddr(t)}, ""))
	if err != nil {
		t.Fatal(err)
	}
	addr := idle.Addr()
	shutdown(t, idle)
	shutdown(t, idle) // idempotent
	again := testConfig(t, []string{testcluster.FreeAddr(t)}, "")
	again.Listen = addr
	startAgent(t, again)
}

// TestAgentLendsItsTokenOnlyOnAUnixSocket: with -use-agent-token on a unix
// socket (mode 0600), a caller without a token is served with the agent's
// own; the same setting on a TCP port is refused at start.
func TestAgentLendsItsTokenOnlyOnAUnixSocket(t *testing.T) {
	c := newTestCluster(t, 1)
	root := rootClient(t, c)
	const path = "secret/lent"
	if _, err := root.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	tcp := testConfig(t, c.APIAddrs(), c.Token)
	tcp.UseAgentToken = true
	if _, err := New(tcp); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "unix://") {
		t.Fatalf("-use-agent-token on TCP: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cfg := testConfig(t, c.APIAddrs(), c.Token)
	cfg.Listen, cfg.UseAgentToken = "unix://"+sock, true
	ag := startAgent(t, cfg)
	if ag.Addr() != "unix://"+sock {
		t.Fatalf("Addr = %q", ag.Addr())
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %s: %v %v, want a socket of mode 0600", sock, fi.Mode(), err)
	}
	ac := dial(t, ag.Addr())
	if g := ac.get(t, "", path); g.err != nil || g.resp.Data["v"] != "1" {
		t.Fatalf("get without a token over the socket: %s", g)
	}
}

// scrapeAgent reads the agent's /metrics: sample (name with labels) →
// value.
func scrapeAgent(t testing.TB, a *Agent) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if resp.StatusCode != http.StatusOK || sc.Err() != nil {
		t.Fatalf("GET /metrics: %s %v", resp.Status, sc.Err())
	}
	return out
}
