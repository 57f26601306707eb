package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/seal"
)

func u64(v uint64) *uint64 { return &v }

func TestInitUnsealLifecycle(t *testing.T) {
	n := startNode(t, "")

	st, err := n.sys.Status(ctx(t), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Seal.Initialized || !st.Seal.Sealed {
		t.Fatalf("fresh node: initialized=%v sealed=%v, want false/true", st.Seal.Initialized, st.Seal.Sealed)
	}
	if st.RaftState != "leader" || st.LeaderId != "n1" || st.LeaderAddress != n.srv.APIAddr() {
		t.Fatalf("fresh node raft: state=%q leader=%q addr=%q", st.RaftState, st.LeaderId, st.LeaderAddress)
	}

	// KV before init says so.
	_, err = n.kv.Get(ctx(t), &pb.GetRequest{Path: "secret/x"})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), "coffer operator init") {
		t.Fatalf("uninitialized error should say to run init, got %q", status.Convert(err).Message())
	}

	res, err := n.sys.Init(ctx(t), &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Keys) != 5 || !strings.HasPrefix(res.RootToken, tokenPrefix) {
		t.Fatalf("init returned %d keys, token prefix ok=%v", len(res.Keys), strings.HasPrefix(res.RootToken, tokenPrefix))
	}
	_, err = n.sys.Init(ctx(t), &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
	wantCode(t, err, codes.FailedPrecondition)

	// Sealed: KV refused with Unavailable before auth is even looked at.
	_, err = n.kv.Get(authed(t, res.RootToken), &pb.GetRequest{Path: "secret/x"})
	wantCode(t, err, codes.Unavailable)

	for i, want := range []uint32{1, 2} {
		ss, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: res.Keys[i]})
		if err != nil {
			t.Fatal(err)
		}
		if !ss.Sealed || ss.Progress != want {
			t.Fatalf("after %d shares: sealed=%v progress=%d", i+1, ss.Sealed, ss.Progress)
		}
	}
	// The same share again is refused and does not count.
	_, err = n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: res.Keys[1]})
	wantCode(t, err, codes.InvalidArgument)
	ss, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: res.Keys[4]})
	if err != nil {
		t.Fatal(err)
	}
	if ss.Sealed {
		t.Fatalf("3 distinct shares did not unseal: %+v", ss)
	}
	hc, err := healthpb.NewHealthClient(n.conn).Check(ctx(t), &healthpb.HealthCheckRequest{Service: kvHealthName})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health of %s after unseal: %v %v", kvHealthName, hc, err)
	}

	tok := authed(t, res.RootToken)
	put, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/api-key", Data: map[string]string{"value": "12345"}})
	if err != nil {
		t.Fatal(err)
	}
	if put.Version != 1 || put.Index == 0 || put.CreatedTimeUnixNano == 0 {
		t.Fatalf("put: %+v", put)
	}
	got, err := n.kv.Get(tok, &pb.GetRequest{Path: "secret/api-key"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Data["value"] != "12345" || got.Metadata.Version != 1 || got.ReadMeta.NodeId != "n1" || got.ReadMeta.AppliedIndex < put.Index {
		t.Fatalf("get: %+v", got)
	}

	// Seal again: KV refused, health not serving, status sealed.
	if _, err := n.sys.Seal(tok, &pb.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err = n.kv.Get(tok, &pb.GetRequest{Path: "secret/api-key"})
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(status.Convert(err).Message(), "unseal") {
		t.Fatalf("sealed error should say to unseal: %q", status.Convert(err).Message())
	}
	hc, _ = healthpb.NewHealthClient(n.conn).Check(ctx(t), &healthpb.HealthCheckRequest{Service: kvHealthName})
	if hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after seal: %v", hc)
	}
}

func TestKVOperations(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	tok := authed(t, token)

	for i := 1; i <= 3; i++ {
		r, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"password": "p" + string(rune('0'+i))}})
		if err != nil {
			t.Fatal(err)
		}
		if r.Version != uint64(i) {
			t.Fatalf("put %d gave version %d", i, r.Version)
		}
	}
	v1, err := n.kv.Get(tok, &pb.GetRequest{Path: "secret/app/db", Version: 1})
	if err != nil || v1.Data["password"] != "p1" {
		t.Fatalf("get version 1: %v %v", v1, err)
	}

	// CAS: mismatch refused with the current version in the message; match accepted.
	_, err = n.kv.Put(tok, &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"a": "b"}, Cas: u64(1)})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), "version 3") {
		t.Fatalf("CAS message should name the current version: %q", status.Convert(err).Message())
	}
	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"a": "b"}, Cas: u64(3)}); err != nil {
		t.Fatalf("CAS with the current version: %v", err)
	}
	_, err = n.kv.Put(tok, &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"a": "b"}, Cas: u64(0)})
	wantCode(t, err, codes.FailedPrecondition)
	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/app/new", Data: map[string]string{"a": "b"}, Cas: u64(0)}); err != nil {
		t.Fatalf("CAS 0 on a new secret: %v", err)
	}

	// Soft delete, undelete, destroy.
	if _, err := n.kv.Delete(tok, &pb.VersionsRequest{Path: "secret/app/db"}); err != nil {
		t.Fatal(err)
	}
	_, err = n.kv.Get(tok, &pb.GetRequest{Path: "secret/app/db"})
	wantCode(t, err, codes.NotFound)
	if !strings.Contains(status.Convert(err).Message(), "undelete") {
		t.Fatalf("deleted message should say how to restore: %q", status.Convert(err).Message())
	}
	if _, err := n.kv.Undelete(tok, &pb.VersionsRequest{Path: "secret/app/db", Versions: []uint64{4}}); err != nil {
		t.Fatal(err)
	}
	if g, err := n.kv.Get(tok, &pb.GetRequest{Path: "secret/app/db"}); err != nil || g.Data["a"] != "b" {
		t.Fatalf("after undelete: %v %v", g, err)
	}
	_, err = n.kv.Undelete(tok, &pb.VersionsRequest{Path: "secret/app/db"})
	wantCode(t, err, codes.InvalidArgument)
	if _, err := n.kv.Destroy(tok, &pb.VersionsRequest{Path: "secret/app/db", Versions: []uint64{2}}); err != nil {
		t.Fatal(err)
	}
	_, err = n.kv.Get(tok, &pb.GetRequest{Path: "secret/app/db", Version: 2})
	wantCode(t, err, codes.NotFound)
	_, err = n.kv.Get(tok, &pb.GetRequest{Path: "secret/app/db", Version: 99})
	wantCode(t, err, codes.NotFound)

	md, err := n.kv.ReadMetadata(tok, &pb.ReadMetadataRequest{Path: "secret/app/db"})
	if err != nil {
		t.Fatal(err)
	}
	if md.CurrentVersion != 4 || len(md.Versions) != 4 || !md.Versions[1].Destroyed || md.MaxVersions != 10 {
		t.Fatalf("metadata: %+v", md)
	}

	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/top", Data: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	l, err := n.kv.List(tok, &pb.ListRequest{Path: "secret/"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(l.Keys, ",") != "app/,top" {
		t.Fatalf("list secret/: %v", l.Keys)
	}
	l, err = n.kv.List(tok, &pb.ListRequest{Path: "secret/app"})
	if err != nil || strings.Join(l.Keys, ",") != "db,new" {
		t.Fatalf("list secret/app: %v %v", l, err)
	}

	// max_versions trims the oldest.
	if _, err := n.kv.WriteMetadata(tok, &pb.WriteMetadataRequest{Path: "secret/app/db", MaxVersions: 2}); err != nil {
		t.Fatal(err)
	}
	md, err = n.kv.ReadMetadata(tok, &pb.ReadMetadataRequest{Path: "secret/app/db"})
	if err != nil || md.OldestVersion != 3 || len(md.Versions) != 2 {
		t.Fatalf("after max_versions=2: %+v %v", md, err)
	}

	if _, err := n.kv.DeleteMetadata(tok, &pb.DeleteMetadataRequest{Path: "secret/app/db"}); err != nil {
		t.Fatal(err)
	}
	_, err = n.kv.ReadMetadata(tok, &pb.ReadMetadataRequest{Path: "secret/app/db"})
	wantCode(t, err, codes.NotFound)
}

func TestIdempotentPut(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	tok := authed(t, token)
	req := &pb.PutRequest{Path: "secret/once", Data: map[string]string{"v": "1"}, RequestId: "req-1"}
	a, err := n.kv.Put(tok, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.kv.Put(tok, req)
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != 1 || b.Version != 1 || a.Index != b.Index {
		t.Fatalf("retried put: first %+v, retry %+v; want one version at one index", a, b)
	}
	if a.CreatedTimeUnixNano == 0 || b.CreatedTimeUnixNano != a.CreatedTimeUnixNano {
		t.Fatalf("retried put: created %d then %d, want the first write's time twice", a.CreatedTimeUnixNano, b.CreatedTimeUnixNano)
	}
	md, err := n.kv.ReadMetadata(tok, &pb.ReadMetadataRequest{Path: "secret/once"})
	if err != nil || md.CurrentVersion != 1 {
		t.Fatalf("metadata after retry: %+v %v", md, err)
	}
}

func TestBadInput(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	tok := authed(t, token)
	big := strings.Repeat("x", MaxSecretSize+1)
	cases := []struct {
		name string
		req  *pb.PutRequest
		code codes.Code
		msg  string
	}{
		{"empty path", &pb.PutRequest{Path: "", Data: map[string]string{"a": "b"}}, codes.InvalidArgument, "path is empty"},
		{"dot dot", &pb.PutRequest{Path: "secret/../x", Data: map[string]string{"a": "b"}}, codes.InvalidArgument, ".."},
		{"empty segment", &pb.PutRequest{Path: "secret//x", Data: map[string]string{"a": "b"}}, codes.InvalidArgument, "empty segment"},
		{"NUL", &pb.PutRequest{Path: "secret/a\x00b", Data: map[string]string{"a": "b"}}, codes.InvalidArgument, "control"},
		{"too long", &pb.PutRequest{Path: "secret/" + strings.Repeat("a", 600), Data: map[string]string{"a": "b"}}, codes.InvalidArgument, "512"},
		{"no mount", &pb.PutRequest{Path: "other/x", Data: map[string]string{"a": "b"}}, codes.InvalidArgument, "secret/"},
		{"mount only", &pb.PutRequest{Path: "secret/", Data: map[string]string{"a": "b"}}, codes.InvalidArgument, "must not end"},
		{"no data", &pb.PutRequest{Path: "secret/x"}, codes.InvalidArgument, "data is empty"},
		{"empty key", &pb.PutRequest{Path: "secret/x", Data: map[string]string{"": "b"}}, codes.InvalidArgument, "empty key"},
		{"too big", &pb.PutRequest{Path: "secret/x", Data: map[string]string{"a": big}}, codes.ResourceExhausted, "1 MiB"},
		{"long request id", &pb.PutRequest{Path: "secret/x", Data: map[string]string{"a": "b"}, RequestId: strings.Repeat("r", 129)}, codes.InvalidArgument, "request_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := n.kv.Put(tok, c.req)
			wantCode(t, err, c.code)
			msg := status.Convert(err).Message()
			if !strings.Contains(msg, c.msg) || strings.Contains(msg, "\n") {
				t.Fatalf("message %q should be one line containing %q", msg, c.msg)
			}
		})
	}
	// Auth.
	_, err := n.kv.Get(ctx(t), &pb.GetRequest{Path: "secret/x"})
	wantCode(t, err, codes.Unauthenticated)
	_, err = n.kv.Get(authed(t, "cof.wrong"), &pb.GetRequest{Path: "secret/x"})
	wantCode(t, err, codes.Unauthenticated)
	_, err = n.sys.Rotate(ctx(t), &pb.RotateRequest{})
	wantCode(t, err, codes.Unauthenticated)

	// The node still serves.
	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/ok", Data: map[string]string{"a": "b"}}); err != nil {
		t.Fatalf("node stopped serving after bad input: %v", err)
	}
}

func TestWrongSharesNeverUnseal(t *testing.T) {
	other := startNode(t, "")
	otherShares, _ := other.initUnseal(5, 3)

	n := startNode(t, "")
	res, err := n.sys.Init(ctx(t), &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
	if err != nil {
		t.Fatal(err)
	}
	// Shares of another cluster: refused once the threshold is reached, progress reset.
	for i := 0; i < 3; i++ {
		_, err = n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: otherShares[i]})
	}
	wantCode(t, err, codes.InvalidArgument)
	st, _ := n.sys.Status(ctx(t), &pb.StatusRequest{})
	if !st.Seal.Sealed || st.Seal.Progress != 0 {
		t.Fatalf("after foreign shares: %+v", st.Seal)
	}
	// A corrupted share of ours mixed with two good ones.
	bad := bytes.Clone(res.Keys[0])
	bad[3] ^= 0x40
	for _, k := range [][]byte{bad, res.Keys[1], res.Keys[2]} {
		_, err = n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: k})
	}
	wantCode(t, err, codes.InvalidArgument)
	// Garbage of the wrong length.
	_, err = n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: []byte("short")})
	wantCode(t, err, codes.InvalidArgument)
	// Reset, then the right shares still work.
	if _, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: res.Keys[0]}); err != nil {
		t.Fatal(err)
	}
	if ss, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Reset_: true}); err != nil || ss.Progress != 0 {
		t.Fatalf("reset: %v %v", ss, err)
	}
	for _, i := range []int{2, 3, 4} {
		if _, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: res.Keys[i]}); err != nil {
			t.Fatal(err)
		}
	}
	st, _ = n.sys.Status(ctx(t), &pb.StatusRequest{})
	if st.Seal.Sealed {
		t.Fatal("correct shares after wrong ones did not unseal")
	}
}

func TestRotateKeepsOldTermsReadable(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	tok := authed(t, token)
	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/r", Data: map[string]string{"v": "old"}}); err != nil {
		t.Fatal(err)
	}
	rot, err := n.sys.Rotate(tok, &pb.RotateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rot.Term != 2 {
		t.Fatalf("rotate gave term %d, want 2", rot.Term)
	}
	if _, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/r", Data: map[string]string{"v": "new"}}); err != nil {
		t.Fatal(err)
	}
	for ver, want := range map[uint64]string{1: "old", 2: "new"} {
		g, err := n.kv.Get(tok, &pb.GetRequest{Path: "secret/r", Version: ver})
		if err != nil || g.Data["v"] != want {
			t.Fatalf("version %d: %v %v", ver, g, err)
		}
	}
	v2, err := n.srv.fsm.Get("secret/r", 2)
	if err != nil {
		t.Fatal(err)
	}
	if term, ok := seal.TermOf(v2.Ciphertext); !ok || term != 2 {
		t.Fatalf("write after rotate used term %d", term)
	}
	st, _ := n.sys.Status(ctx(t), &pb.StatusRequest{})
	if st.KeyTerm != 2 {
		t.Fatalf("status key_term %d, want 2", st.KeyTerm)
	}
}

// TestRestartComesBackSealed covers the foundation's recovery story: a
// node stopped without care comes back sealed, any other threshold subset
// unseals it, every version is back, and nothing under the data directory
// holds the plaintext.
func TestRestartComesBackSealed(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	shares, token := n.initUnseal(5, 3)
	marker := "plaintext-marker-" + newToken()
	for i := 0; i < 3; i++ {
		if _, err := n.kv.Put(authed(t, token), &pb.PutRequest{Path: "secret/m", Data: map[string]string{"v": marker + string(rune('a'+i))}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.srv.raft.Snapshot(ctx(t)); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	n.stop()

	n = startNode(t, dir)
	st, err := n.sys.Status(ctx(t), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Seal.Initialized || !st.Seal.Sealed {
		t.Fatalf("after restart: %+v", st.Seal)
	}
	_, err = n.kv.Get(authed(t, token), &pb.GetRequest{Path: "secret/m"})
	wantCode(t, err, codes.Unavailable)
	for _, i := range []int{4, 2, 1} {
		if _, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: shares[i]}); err != nil {
			t.Fatal(err)
		}
	}
	for v := uint64(1); v <= 3; v++ {
		g, err := n.kv.Get(authed(t, token), &pb.GetRequest{Path: "secret/m", Version: v})
		if err != nil || g.Data["v"] != marker+string(rune('a'+v-1)) {
			t.Fatalf("version %d after restart: %v %v", v, g, err)
		}
	}
	assertNoPlaintext(t, dir, marker)
}

// assertNoPlaintext fails if marker appears in any file under dir.
func assertNoPlaintext(t *testing.T, dir, marker string) {
	t.Helper()
	files := 0
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
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
	if files < 3 {
		t.Fatalf("only %d files under the data dir: expected the raft log, a snapshot and the state db", files)
	}
}

func TestConcurrentWritesAndReads(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := authed(t, token)
			for i := 0; i < 20; i++ {
				p := "secret/c/" + string(rune('a'+w))
				if _, err := n.kv.Put(c, &pb.PutRequest{Path: p, Data: map[string]string{"i": "x"}}); err != nil {
					errs <- err
					return
				}
				if _, err := n.kv.Get(c, &pb.GetRequest{Path: p}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	md, err := n.kv.ReadMetadata(authed(t, token), &pb.ReadMetadataRequest{Path: "secret/c/a"})
	if err != nil || md.CurrentVersion != 20 {
		t.Fatalf("after 20 writes: %+v %v", md, err)
	}
}

func TestStaleAndLinearizableReads(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	tok := authed(t, token)
	put, err := n.kv.Put(tok, &pb.PutRequest{Path: "secret/s", Data: map[string]string{"a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []pb.Consistency{pb.Consistency_CONSISTENCY_STALE, pb.Consistency_CONSISTENCY_DEFAULT, pb.Consistency_CONSISTENCY_LINEARIZABLE} {
		g, err := n.kv.Get(tok, &pb.GetRequest{Path: "secret/s", Read: &pb.ReadOptions{Consistency: c, MinIndex: put.Index}})
		if err != nil || g.Data["a"] != "1" || g.ReadMeta.Stale {
			t.Fatalf("%s read on the leader: %+v %v", c, g, err)
		}
	}
	// A min_index beyond anything applied times out with a retryable error.
	short, cancel := context.WithTimeout(tok, 100*1e6)
	defer cancel()
	_, err = n.kv.Get(short, &pb.GetRequest{Path: "secret/s", Read: &pb.ReadOptions{MinIndex: put.Index + 1000}})
	if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
		t.Fatalf("unreachable min_index: %v", err)
	}
}

func TestReflectionAndHealth(t *testing.T) {
	n := startNode(t, "")
	hc, err := healthpb.NewHealthClient(n.conn).Check(ctx(t), &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("overall health: %v %v", hc, err)
	}
}

func TestPprof(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.PprofAddr = "127.0.0.1:0"
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	resp, err := http.Get("http://" + srv.PprofAddr() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("goroutine profile")) {
		t.Fatalf("pprof answered %d: %.200s", resp.StatusCode, body)
	}
}

// TestRebuildAfterMachineRestart: the state database skips fsync and
// relies on the Raft log (fsm/durability.go). When the machine went down
// with unsynced commits (simulated by a marker from another boot), the node
// sets the database aside and rebuilds it from Raft's snapshot and the log
// after it: every version is back, nothing is lost.
func TestRebuildAfterMachineRestart(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err != nil {
		t.Skip("no boot id on this system: every state commit is fsynced, nothing to rebuild")
	}
	dir := t.TempDir()
	n := startNode(t, dir)
	shares, token := n.initUnseal(5, 3)
	put := func(i int) uint64 {
		r, err := n.kv.Put(authed(t, token), &pb.PutRequest{Path: "secret/r", Data: map[string]string{"v": strconv.Itoa(i)}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Index
	}
	for i := 1; i <= 3; i++ {
		put(i)
	}
	if err := n.srv.raft.Snapshot(ctx(t)); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	// Two more versions live only in the log after the snapshot.
	put(4)
	last := put(5)
	n.stop()

	dbPath := filepath.Join(dir, "fsm.db")
	if _, err := os.Stat(dbPath + ".unsynced"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a clean stop left the unsynced marker: %v", err)
	}
	if err := os.WriteFile(dbPath+".unsynced", []byte("a-boot-before-the-crash\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	n = startNode(t, dir)
	if _, err := os.Stat(dbPath + ".discarded"); err != nil {
		t.Fatalf("the possibly torn database was not set aside: %v", err)
	}
	for _, i := range []int{0, 2, 4} {
		if _, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: shares[i]}); err != nil {
			t.Fatal(err)
		}
	}
	for v := uint64(1); v <= 5; v++ {
		g, err := n.kv.Get(authed(t, token), &pb.GetRequest{Path: "secret/r", Version: v, Read: &pb.ReadOptions{MinIndex: last}})
		if err != nil || g.Data["v"] != strconv.Itoa(int(v)) {
			t.Fatalf("version %d after the rebuild: %v %v", v, g, err)
		}
	}
	if got := n.srv.fsm.AppliedIndex(); got < last {
		t.Fatalf("applied index after the rebuild = %d, below the last write's %d", got, last)
	}
}

// TestUnsealIsRateLimited: a flood of unseal attempts from one address is
// refused with RATE_LIMITED once past its burst, and the node takes a real
// share again a moment later.
func TestUnsealIsRateLimited(t *testing.T) {
	n := startNode(t, "")
	res, err := n.sys.Init(ctx(t), &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
	if err != nil {
		t.Fatal(err)
	}
	limited := 0
	for range unsealPerAddrBurst + 30 {
		_, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: []byte("garbage")})
		if status.Code(err) == codes.ResourceExhausted {
			limited++
		} else if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("a garbage share: %v", err)
		}
	}
	if limited == 0 {
		t.Fatalf("%d unseal attempts in a burst, none limited", unsealPerAddrBurst+30)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := n.sys.Unseal(ctx(t), &pb.UnsealRequest{Key: res.Keys[0]})
		if err == nil {
			if st.Progress != 1 {
				t.Fatalf("progress %d after a real share", st.Progress)
			}
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("a real share after the flood: %v", err)
		}
		timer := time.NewTimer(50 * time.Millisecond)
		<-timer.C
	}
	t.Logf("%d of %d attempts limited", limited, unsealPerAddrBurst+30)
}
