package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

// waitBudget polls cond (under the budget's lock) until it holds, failing
// the test after 5s.
func waitBudget(t *testing.T, b *inflight, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		ok := cond()
		used, queued := b.used, b.queued
		b.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s (used %d, queued %d)", what, used, queued)
		}
		timer := time.NewTimer(time.Millisecond)
		<-timer.C
	}
}

// acquireAsync starts acquire(n) and returns where its result arrives.
func acquireAsync(ctx context.Context, b *inflight, n int64) <-chan error {
	out := make(chan error, 1)
	go func() {
		g, err := b.acquire(ctx, n)
		if err == nil {
			g.release()
		}
		out <- err
	}()
	return out
}

// wantOverloaded fails unless err is the OVERLOADED refusal as a client
// sees it.
func wantOverloaded(t *testing.T, err error) {
	t.Helper()
	st := toStatus(err)
	if status.Code(st) != codes.ResourceExhausted || reasonOf(st) != pb.ErrorReason_OVERLOADED {
		t.Fatalf("got %v, want ResourceExhausted with reason OVERLOADED", err)
	}
	if msg := status.Convert(st).Message(); !strings.Contains(msg, "-max-inflight-bytes") || !strings.Contains(msg, "retry") {
		t.Fatalf("refusal %q does not say what to do", msg)
	}
}

// TestInflightBudget: calls are admitted while their bytes fit, then wait
// in arrival order (a large call first in line is not overtaken by a small
// one behind it), are admitted as bytes come back, and are refused at once
// when the bytes waiting would exceed the budget; in use never exceeds it.
func TestInflightBudget(t *testing.T) {
	const f = callFloor
	b := newInflight(10 * f)
	b.wait = time.Minute
	ctx := context.Background()

	g1, err := b.acquire(ctx, 6*f)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := b.acquire(ctx, 1) // weighs the floor
	if err != nil {
		t.Fatal(err)
	}
	g3, err := b.acquire(ctx, 3*f)
	if err != nil {
		t.Fatal(err)
	}
	if st := b.stats(); st.InUse != 10*f || st.Peak != 10*f {
		t.Fatalf("stats %+v, want 10 floors in use", st)
	}
	big := acquireAsync(ctx, b, 8*f)
	waitBudget(t, b, "the large call waits", func() bool { return b.queued == 8*f })
	small := acquireAsync(ctx, b, f)
	waitBudget(t, b, "the small call waits behind it", func() bool { return b.queued == 9*f })
	// The queue would hold 11 floors: refused at once.
	if _, err := b.acquire(ctx, 2*f); err == nil {
		t.Fatal("a call past the queue's bound was admitted")
	} else {
		wantOverloaded(t, err)
	}
	if b.full() {
		t.Fatal("the tap would refuse calls while the queue has room for one")
	}

	// 4 floors come back: the small call would fit, but stays behind the
	// large one.
	g3.release()
	g2.release()
	select {
	case err := <-small:
		t.Fatalf("the small call overtook the large one: %v", err)
	default:
	}
	g1.release()
	for name, ch := range map[string]<-chan error{"large": big, "small": small} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("%s call: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s call not admitted after the budget emptied", name)
		}
	}
	st := b.stats()
	if st.InUse != 0 || st.Peak > st.Limit || st.Refused != 1 {
		t.Fatalf("stats %+v, want nothing in use, a peak within the limit, one refusal", st)
	}
}

// TestInflightWaitEnds: a call that waits longer than the budget's wait is
// refused with OVERLOADED and counted; one whose caller gives up gets its
// context's error, uncounted; either leaves the queue, so calls behind it
// move on.
func TestInflightWaitEnds(t *testing.T) {
	b := newInflight(4 * callFloor)
	b.wait = 20 * time.Millisecond
	hold, err := b.acquire(context.Background(), 4*callFloor)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = b.acquire(context.Background(), callFloor)
	wantOverloaded(t, err)
	if waited := time.Since(start); waited < b.wait {
		t.Fatalf("refused after %s, before its wait of %s", waited, b.wait)
	}

	b.mu.Lock()
	b.wait = time.Minute
	b.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := acquireAsync(ctx, b, 3*callFloor)
	waitBudget(t, b, "the call waits", func() bool { return b.queued == 3*callFloor })
	behind := acquireAsync(context.Background(), b, callFloor)
	waitBudget(t, b, "a second call waits", func() bool { return b.queued == 4*callFloor })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("a call whose caller gave up: %v", err)
	}
	hold.release()
	if err := <-behind; err != nil {
		t.Fatalf("the call behind it: %v", err)
	}
	if st := b.stats(); st.Refused != 1 || st.InUse != 0 {
		t.Fatalf("stats %+v, want one refusal and nothing in use", st)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queued != 0 || b.waiters.Len() != 0 {
		t.Fatalf("queue holds %d bytes in %d calls after every call ended", b.queued, b.waiters.Len())
	}
}

// TestInflightTap: while the queue is full a new call is refused before
// gRPC reads its message, except a health check.
func TestInflightTap(t *testing.T) {
	b := newInflight(4 * callFloor)
	b.wait = time.Minute
	put := &tap.Info{FullMethodName: pb.KV_Put_FullMethodName}
	health := &tap.Info{FullMethodName: healthpb.Health_Check_FullMethodName}
	if _, err := b.tap(context.Background(), put); err != nil {
		t.Fatalf("tap with an empty budget: %v", err)
	}
	hold, err := b.acquire(context.Background(), 4*callFloor)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	waiting := acquireAsync(ctx, b, 4*callFloor)
	waitBudget(t, b, "the queue fills", func() bool { return b.queued == 4*callFloor })
	_, err = b.tap(context.Background(), put)
	wantOverloaded(t, err)
	if _, err := b.tap(context.Background(), health); err != nil {
		t.Fatalf("a health check under load: %v", err)
	}
	cancel()
	<-waiting
	hold.release()
	if st := b.stats(); st.Refused != 1 || st.InUse != 0 {
		t.Fatalf("stats %+v, want the tap's refusal counted", st)
	}
}

// TestOverloadedNodeRefusesThenServes: a node whose budget is spent
// refuses a write with OVERLOADED (the reason reaches the client, also
// from a refusal before the message is read), still answers health
// checks, and takes the write once bytes come back; a served write gives
// all its bytes back, including those held until Raft let go of it.
func TestOverloadedNodeRefusesThenServes(t *testing.T) {
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	b := n.srv.inflight
	b.mu.Lock()
	b.wait = 20 * time.Millisecond
	b.mu.Unlock()
	put := &pb.PutRequest{Path: "secret/overload", Data: map[string]string{"k": "v"}}

	hold, err := b.acquire(context.Background(), b.limit)
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.kv.Put(authed(t, token), put)
	wantOverloaded(t, err)
	health, err := healthpb.NewHealthClient(n.conn).Check(ctx(t), &healthpb.HealthCheckRequest{})
	if err != nil || health.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check of an overloaded node: %v, %v", health, err)
	}

	// The queue full too: the tap refuses.
	b.mu.Lock()
	b.wait = time.Minute
	b.mu.Unlock()
	qctx, cancel := context.WithCancel(context.Background())
	waiting := acquireAsync(qctx, b, b.limit)
	waitBudget(t, b, "the queue fills", func() bool { return b.queued == b.limit })
	refusedBefore := b.stats().Refused
	_, err = n.kv.Put(authed(t, token), put)
	wantOverloaded(t, err)
	if got := b.stats().Refused; got != refusedBefore+1 {
		t.Fatalf("refusals went from %d to %d", refusedBefore, got)
	}
	cancel()
	<-waiting
	hold.release()

	if _, err := n.kv.Put(authed(t, token), put); err != nil {
		t.Fatalf("a write once the budget has room: %v", err)
	}
	if st := n.srv.Inflight(); st.InUse != 0 || st.Peak > st.Limit || st.Limit != DefaultMaxInflightBytes {
		t.Fatalf("after the write: %+v, want nothing in use and the default limit", st)
	}
}

// TestLargestRequestFits: the largest request validation allows (a secret
// of MaxSecretSize bytes in MaxKeys keys, the longest path and request id)
// is within gRPC's MaxRecvMsgSize and is stored; a message past
// MaxRequestSize is refused before it is decoded.
func TestLargestRequestFits(t *testing.T) {
	path := "secret/" + strings.Repeat("p", MaxPathLen-len("secret/"))
	id := strings.Repeat("i", 128)
	manyKeys := map[string]string{}
	perValue := (MaxSecretSize - MaxKeys*MaxKeyLen) / MaxKeys
	for i := range MaxKeys {
		manyKeys[fmt.Sprintf("%0*d", MaxKeyLen, i)] = strings.Repeat("v", perValue)
	}
	oneKey := map[string]string{"k": strings.Repeat("v", MaxSecretSize-1)}
	n := startNode(t, "")
	_, token := n.initUnseal(1, 1)
	for name, data := range map[string]map[string]string{"many keys": manyKeys, "one key": oneKey} {
		if err := validateData(data); err != nil {
			t.Fatalf("%s: not a legal secret: %v", name, err)
		}
		req := &pb.PutRequest{Path: path, Data: data, Cas: u64(0), RequestId: id}
		if size := proto.Size(req); size > MaxRequestSize {
			t.Fatalf("%s: a legal put is %d bytes, over MaxRequestSize %d", name, size, MaxRequestSize)
		}
		req.Cas = nil
		if _, err := n.kv.Put(authed(t, token), req); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	over := &pb.PutRequest{Path: "secret/over", Data: map[string]string{"k": strings.Repeat("v", MaxRequestSize)}}
	_, err := n.kv.Put(authed(t, token), over)
	wantCode(t, err, codes.ResourceExhausted)
	if st := n.srv.Inflight(); st.InUse != 0 {
		t.Fatalf("%d bytes in use after every call returned", st.InUse)
	}
}

// TestReplicationBatch checks that a replication batch holds at most the
// request budget's worth of the largest entries, no fewer than
// minReplicationBatch, and never more than the configured bound.
func TestReplicationBatch(t *testing.T) {
	def := replication.DefaultConfig().MaxAppendEntries
	for _, c := range []struct {
		limit  int
		budget int64
		want   int
	}{
		{0, DefaultMaxInflightBytes, int(DefaultMaxInflightBytes / MaxRequestSize)},
		{256, 16 << 20, minReplicationBatch},
		{256, MaxRequestSize, minReplicationBatch},
		{256, 100 * MaxRequestSize, 100},
		{0, 1 << 40, def},
		{8, DefaultMaxInflightBytes, 8},
	} {
		got := replicationBatch(c.limit, c.budget)
		if got != c.want {
			t.Errorf("replicationBatch(%d, %d MiB) = %d, want %d", c.limit, c.budget>>20, got, c.want)
		}
		if got > minReplicationBatch && int64(got)*MaxRequestSize > c.budget {
			t.Errorf("replicationBatch(%d, %d MiB) = %d batches more than the budget", c.limit, c.budget>>20, got)
		}
	}
}
