package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeOperator is an Operator server whose behaviour a test scripts.
type fakeOperator struct {
	pb.UnimplementedOperatorServer
	calls atomic.Int32

	// save, when set, serves SnapshotSave.
	save func(stream pb.Operator_SnapshotSaveServer) error
	// leader makes SnapshotRestore accept the upload; otherwise it
	// answers Unavailable before reading anything, as a follower does.
	leader bool
	// restoreErr, when set, is the leader's answer after reading it all.
	restoreErr error

	mu       sync.Mutex
	restored []byte
	forces   []bool // the force flag of every chunk received
	tokens   []string
}

// got returns what the fake received, under its lock: the server runs in
// other goroutines, and a TCP round trip is no happens-before edge for the
// race detector.
func (f *fakeOperator) got() (restored []byte, forces []bool, tokens []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restored, append([]bool(nil), f.forces...), append([]string(nil), f.tokens...)
}

func (f *fakeOperator) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restored, f.forces, f.tokens = nil, nil, nil
}

func (f *fakeOperator) token(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.tokens = append(f.tokens, strings.Join(md.Get("authorization"), ","))
	f.mu.Unlock()
}

func (f *fakeOperator) Members(ctx context.Context, _ *pb.MembersRequest) (*pb.MembersResponse, error) {
	f.calls.Add(1)
	f.token(ctx)
	if !f.leader {
		return nil, status.Error(codes.Unavailable, "node is sealed")
	}
	return &pb.MembersResponse{Members: []*pb.Member{{Id: "n1", Status: "alive"}}}, nil
}

func (f *fakeOperator) SnapshotSave(_ *pb.SnapshotSaveRequest, stream pb.Operator_SnapshotSaveServer) error {
	f.calls.Add(1)
	f.token(stream.Context())
	return f.save(stream)
}

func (f *fakeOperator) SnapshotRestore(stream pb.Operator_SnapshotRestoreServer) error {
	f.calls.Add(1)
	f.token(stream.Context())
	if !f.leader {
		return status.Error(codes.Unavailable, "node n2 is not the leader (n1 is): send the request to the leader")
	}
	var buf bytes.Buffer
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		buf.Write(chunk.GetData())
		f.mu.Lock()
		f.forces = append(f.forces, chunk.GetForce())
		f.mu.Unlock()
	}
	if f.restoreErr != nil {
		return f.restoreErr
	}
	f.mu.Lock()
	f.restored = buf.Bytes()
	f.mu.Unlock()
	return stream.SendAndClose(&pb.SnapshotRestoreResponse{Index: 42})
}

// serveFakes starts one gRPC server per fake on loopback and returns a
// client over their endpoints, in order.
func serveFakes(t *testing.T, fakes ...*fakeOperator) *Client {
	t.Helper()
	return serveFakesWith(t, Config{}, fakes...)
}

// serveFakesWith is serveFakes with a client configuration (its endpoints
// and token are filled in).
func serveFakesWith(t *testing.T, cfg Config, fakes ...*fakeOperator) *Client {
	t.Helper()
	var eps []string
	for _, f := range fakes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		pb.RegisterOperatorServer(s, f)
		serveUntilCleanup(t, s, lis)
		eps = append(eps, lis.Addr().String())
	}
	cfg.Endpoints, cfg.Token = eps, "root-token"
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendAll streams data in chunks of size n.
func sendAll(stream pb.Operator_SnapshotSaveServer, data []byte, n int) error {
	for len(data) > 0 {
		k := min(n, len(data))
		if err := stream.Send(&pb.SnapshotChunk{Data: data[:k]}); err != nil {
			return err
		}
		data = data[k:]
	}
	return nil
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

func TestMembersMovesOnWhileUnavailable(t *testing.T) {
	sealed, ok := &fakeOperator{}, &fakeOperator{leader: true}
	c := serveFakes(t, sealed, ok)
	resp, err := c.Members(context.Background())
	if err != nil || len(resp.GetMembers()) != 1 {
		t.Fatalf("Members = %v, %v", resp, err)
	}
	if sealed.calls.Load() > 1 || ok.calls.Load() != 1 {
		t.Fatalf("calls: sealed %d, ok %d", sealed.calls.Load(), ok.calls.Load())
	}
	if _, _, tokens := ok.got(); tokens[0] != "Bearer root-token" {
		t.Fatalf("token = %q", tokens[0])
	}
}

func TestSnapshotSaveMovesOnBeforeData(t *testing.T) {
	data := payload(700 << 10)
	down := &fakeOperator{save: func(pb.Operator_SnapshotSaveServer) error {
		return status.Error(codes.Unavailable, "node is sealed")
	}}
	up := &fakeOperator{save: func(s pb.Operator_SnapshotSaveServer) error { return sendAll(s, data, 256<<10) }}
	c := serveFakes(t, down, up)
	var out bytes.Buffer
	if err := c.SnapshotSave(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("saved %d bytes, want %d identical ones", out.Len(), len(data))
	}
	if down.calls.Load() > 1 || up.calls.Load() != 1 {
		t.Fatalf("calls: down %d, up %d", down.calls.Load(), up.calls.Load())
	}
}

func TestSnapshotSaveNoRetryAfterData(t *testing.T) {
	partial := func(s pb.Operator_SnapshotSaveServer) error {
		if err := s.Send(&pb.SnapshotChunk{Data: []byte("partial")}); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "leadership lost")
	}
	a, b := &fakeOperator{save: partial}, &fakeOperator{save: partial}
	c := serveFakes(t, a, b)
	var out bytes.Buffer
	err := c.SnapshotSave(context.Background(), &out)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	if n := a.calls.Load() + b.calls.Load(); n != 1 {
		t.Fatalf("%d calls: retried on another endpoint after writing part of the snapshot", n)
	}
	if out.String() != "partial" {
		t.Fatalf("out = %q", out.String())
	}
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestSnapshotSaveWriterError(t *testing.T) {
	a := &fakeOperator{save: func(s pb.Operator_SnapshotSaveServer) error { return sendAll(s, []byte("data"), 4) }}
	b := &fakeOperator{save: func(s pb.Operator_SnapshotSaveServer) error { return sendAll(s, []byte("data"), 4) }}
	c := serveFakes(t, a, b)
	err := c.SnapshotSave(context.Background(), failWriter{})
	if err == nil || err.Error() != "disk full" {
		t.Fatalf("err = %v, want the writer's error", err)
	}
	if a.calls.Load()+b.calls.Load() != 1 {
		t.Fatalf("a writer failure was retried: %d calls", a.calls.Load()+b.calls.Load())
	}
}

// countingOpener opens data as a fresh reader each time and counts opens
// and closes.
type countingOpener struct {
	data           []byte
	opens, closes  atomic.Int32
	failOpen       bool
	failReadAfterN int // >0: fail reading after this many bytes
}

type trackedReader struct {
	r io.Reader
	o *countingOpener
}

func (t *trackedReader) Read(p []byte) (int, error) { return t.r.Read(p) }
func (t *trackedReader) Close() error               { t.o.closes.Add(1); return nil }

func (o *countingOpener) open() (io.ReadCloser, error) {
	o.opens.Add(1)
	if o.failOpen {
		return nil, errors.New("open snap: permission denied")
	}
	var r io.Reader = bytes.NewReader(o.data)
	if o.failReadAfterN > 0 {
		r = io.MultiReader(io.LimitReader(r, int64(o.failReadAfterN)), errReader{})
	}
	return &trackedReader{r: r, o: o}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("read snap: input/output error") }

func TestSnapshotRestoreFindsTheLeader(t *testing.T) {
	data := payload(600 << 10) // three chunks
	f1, f2, leader := &fakeOperator{}, &fakeOperator{}, &fakeOperator{leader: true}
	c := serveFakes(t, f1, f2, leader)
	o := &countingOpener{data: data}
	if err := c.SnapshotRestore(context.Background(), o.open, true); err != nil {
		t.Fatal(err)
	}
	restored, forces, tokens := leader.got()
	if !bytes.Equal(restored, data) {
		t.Fatalf("leader got %d bytes, want %d identical ones", len(restored), len(data))
	}
	calls := f1.calls.Load() + f2.calls.Load() + leader.calls.Load()
	if f1.calls.Load() > 1 || f2.calls.Load() > 1 || leader.calls.Load() != 1 {
		t.Fatalf("calls: %d %d %d", f1.calls.Load(), f2.calls.Load(), leader.calls.Load())
	}
	if o.opens.Load() != calls || o.closes.Load() != calls {
		t.Fatalf("opened %d times, closed %d times; want once per try (%d)", o.opens.Load(), o.closes.Load(), calls)
	}
	if len(forces) != 3 || !forces[0] || forces[1] || forces[2] {
		t.Fatalf("force flags per chunk = %v, want only the first", forces)
	}
	if tokens[0] != "Bearer root-token" {
		t.Fatalf("token = %q", tokens[0])
	}

	// Without force no chunk carries it.
	leader.reset()
	if err := c.SnapshotRestore(context.Background(), o.open, false); err != nil {
		t.Fatal(err)
	}
	if _, forces, _ := leader.got(); len(forces) != 3 || forces[0] || forces[1] || forces[2] {
		t.Fatalf("force flags without force: %v", forces)
	}
}

func TestSnapshotRestoreEmptyFile(t *testing.T) {
	leader := &fakeOperator{leader: true}
	c := serveFakes(t, leader)
	o := &countingOpener{}
	if err := c.SnapshotRestore(context.Background(), o.open, true); err != nil {
		t.Fatal(err)
	}
	if restored, forces, _ := leader.got(); len(forces) != 1 || !forces[0] || len(restored) != 0 {
		t.Fatalf("empty upload: forces %v, %d bytes", forces, len(restored))
	}
}

func TestSnapshotRestoreStops(t *testing.T) {
	t.Run("on a refusal", func(t *testing.T) {
		refuse := &fakeOperator{leader: true, restoreErr: status.Error(codes.FailedPrecondition, "made under other keys: pass -force")}
		other := &fakeOperator{leader: true}
		c := serveFakes(t, refuse, other)
		o := &countingOpener{data: []byte("snap")}
		err := c.SnapshotRestore(context.Background(), o.open, false)
		if status.Code(err) != codes.FailedPrecondition || other.calls.Load() != 0 {
			t.Fatalf("err = %v, other called %d times", err, other.calls.Load())
		}
	})
	t.Run("when the input cannot be opened", func(t *testing.T) {
		a, b := &fakeOperator{}, &fakeOperator{leader: true}
		c := serveFakes(t, a, b)
		o := &countingOpener{failOpen: true}
		err := c.SnapshotRestore(context.Background(), o.open, false)
		if err == nil || !strings.Contains(err.Error(), "permission denied") || o.opens.Load() != 1 {
			t.Fatalf("err = %v after %d opens", err, o.opens.Load())
		}
		if a.calls.Load()+b.calls.Load() != 0 {
			t.Fatal("called a server without input")
		}
	})
	t.Run("when the input fails half-way", func(t *testing.T) {
		leader := &fakeOperator{leader: true}
		c := serveFakes(t, &fakeOperator{}, leader)
		o := &countingOpener{data: payload(600 << 10), failReadAfterN: 300 << 10}
		err := c.SnapshotRestore(context.Background(), o.open, false)
		if err == nil || !strings.Contains(err.Error(), "input/output error") {
			t.Fatalf("err = %v", err)
		}
		if restored, _, _ := leader.got(); restored != nil {
			t.Fatal("a partial upload was restored")
		}
		if o.opens.Load() != o.closes.Load() {
			t.Fatalf("opened %d, closed %d", o.opens.Load(), o.closes.Load())
		}
	})
	t.Run("when no node leads", func(t *testing.T) {
		a, b := &fakeOperator{}, &fakeOperator{}
		c := serveFakesWith(t, Config{RetryBudget: 200 * time.Millisecond}, a, b)
		o := &countingOpener{data: []byte("snap")}
		err := c.SnapshotRestore(context.Background(), o.open, false)
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "not the leader") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestSnapshotStreamsOutliveAttemptTimeout checks that a snapshot stream is
// bounded by the caller's context, not by AttemptTimeout (which bounds
// unary calls), and that a stream failing after that timeout is not
// started over on another endpoint.
func TestSnapshotStreamsOutliveAttemptTimeout(t *testing.T) {
	const attempt = 100 * time.Millisecond
	slow := func(data []byte, end error) func(pb.Operator_SnapshotSaveServer) error {
		return func(s pb.Operator_SnapshotSaveServer) error {
			for _, b := range data {
				// The server is slow: the whole stream takes 3×attempt.
				select {
				case <-time.After(attempt):
				case <-s.Context().Done():
					return s.Context().Err()
				}
				if err := s.Send(&pb.SnapshotChunk{Data: []byte{b}}); err != nil {
					return err
				}
			}
			return end
		}
	}
	cfg := Config{AttemptTimeout: attempt}

	t.Run("a slow save completes", func(t *testing.T) {
		a := &fakeOperator{save: slow([]byte("abc"), nil)}
		c := serveFakesWith(t, cfg, a)
		var out bytes.Buffer
		if err := c.SnapshotSave(context.Background(), &out); err != nil || out.String() != "abc" {
			t.Fatalf("SnapshotSave = %q, %v", out.String(), err)
		}
	})
	t.Run("a slow save that fails is not started over", func(t *testing.T) {
		lost := status.Error(codes.Unavailable, "leadership lost")
		a, b := &fakeOperator{save: slow([]byte("abc"), lost)}, &fakeOperator{save: slow([]byte("abc"), lost)}
		c := serveFakesWith(t, cfg, a, b)
		var out bytes.Buffer
		err := c.SnapshotSave(context.Background(), &out)
		if status.Code(err) != codes.Unavailable || out.String() != "abc" {
			t.Fatalf("SnapshotSave = %q, %v", out.String(), err)
		}
		if n := a.calls.Load() + b.calls.Load(); n != 1 {
			t.Fatalf("%d calls, want 1", n)
		}
	})
	t.Run("the caller's deadline still ends it", func(t *testing.T) {
		a := &fakeOperator{save: slow([]byte("abcdefghij"), nil)}
		c := serveFakesWith(t, cfg, a)
		ctx, cancel := context.WithTimeout(context.Background(), 2*attempt)
		defer cancel()
		var out bytes.Buffer
		err := c.SnapshotSave(ctx, &out)
		if code := status.Code(err); code != codes.Canceled && code != codes.DeadlineExceeded {
			t.Fatalf("err = %v, want the caller's deadline", err)
		}
	})
}
