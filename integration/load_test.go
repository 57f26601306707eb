package integration

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// ackedWrite is a write the cluster acknowledged.
type ackedWrite struct {
	Path, Value, RequestID string
	Version, Index         uint64
	// Attempts is how many calls it took (1: acknowledged at once).
	Attempts int
	// Start is when the first attempt began, Acked when the call that
	// succeeded returned.
	Start, Acked time.Time
}

// failedAttempt is one attempt at a write that returned an error.
type failedAttempt struct {
	Path string
	At   time.Time
	Err  error
}

// loadWriter writes distinct secrets (prefix/w<worker>-<seq>, one version
// each) through an api.Client from several goroutines. Every write has its
// own request id; with retry set, a failed write is retried with the SAME
// request id until it is acknowledged (so each path must end with exactly
// one version), otherwise the writer moves on to the next write.
type loadWriter struct {
	t       testing.TB
	cl      *api.Client
	prefix  string
	retry   bool
	timeout time.Duration // per attempt

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	acked  []ackedWrite
	failed []failedAttempt
	ackCh  chan struct{} // signalled (non-blocking) after each ack
}

// startLoad starts workers goroutines writing through cl.
func startLoad(t testing.TB, cl *api.Client, prefix string, workers int, retry bool) *loadWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &loadWriter{t: t, cl: cl, prefix: prefix, retry: retry, timeout: 8 * time.Second, cancel: cancel, ackCh: make(chan struct{}, 1)}
	for i := range workers {
		w.wg.Add(1)
		go w.run(ctx, i)
	}
	t.Cleanup(w.stop)
	return w
}

func (w *loadWriter) run(ctx context.Context, worker int) {
	defer w.wg.Done()
	for seq := 0; ctx.Err() == nil; seq++ {
		path := fmt.Sprintf("%s/w%d-%d", w.prefix, worker, seq)
		value := strconv.Itoa(seq)
		req := &pb.PutRequest{Path: path, Data: map[string]string{"v": value}, RequestId: api.NewRequestID()}
		start := time.Now()
		for attempt := 1; ctx.Err() == nil; attempt++ {
			actx, cancel := context.WithTimeout(ctx, w.timeout)
			resp, err := w.cl.Put(actx, req)
			cancel()
			now := time.Now()
			if err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, ackedWrite{Path: path, Value: value, RequestID: req.RequestId, Version: resp.Version, Index: resp.Index, Attempts: attempt, Start: start, Acked: now})
				w.mu.Unlock()
				select {
				case w.ackCh <- struct{}{}:
				default:
				}
				break
			}
			if ctx.Err() != nil {
				return // stopped mid-call: not a failure of the cluster
			}
			w.mu.Lock()
			w.failed = append(w.failed, failedAttempt{Path: path, At: now, Err: err})
			w.mu.Unlock()
			if !w.retry {
				break
			}
		}
	}
}

// stop ends the writers and waits for them. It is idempotent.
func (w *loadWriter) stop() {
	w.cancel()
	w.wg.Wait()
}

// snapshot returns the acknowledged writes and the failed attempts so far.
func (w *loadWriter) snapshot() ([]ackedWrite, []failedAttempt) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked), slices.Clone(w.failed)
}

// waitAcked waits until n writes in total have been acknowledged.
func (w *loadWriter) waitAcked(t testing.TB, n int, d time.Duration) {
	t.Helper()
	testcluster.WaitFor(t, d, fmt.Sprintf("%d acknowledged writes", n), func() error {
		acked, failed := w.snapshot()
		if len(acked) < n {
			last := "none"
			if len(failed) > 0 {
				last = failed[len(failed)-1].Err.Error()
			}
			return fmt.Errorf("%d acknowledged, %d failed attempts (last: %s)", len(acked), len(failed), last)
		}
		return nil
	})
}

// firstAckAfter returns the earliest acknowledgement after t0.
func firstAckAfter(acked []ackedWrite, t0 time.Time) (ackedWrite, bool) {
	var first ackedWrite
	found := false
	for _, a := range acked {
		if a.Acked.After(t0) && (!found || a.Acked.Before(first.Acked)) {
			first, found = a, true
		}
	}
	return first, found
}

// staleReader reads one path at stale consistency from one node in a loop,
// straight to that node (no client failover), and counts every failure.
type staleReader struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	reads      int
	leaderless int // answers given while the node knew no leader
	errs       []failedAttempt
}

// startStaleReader starts reading path from n with the cluster's token.
func startStaleReader(t testing.TB, c *Cluster, n *Node, path string) *staleReader {
	ctx, cancel := context.WithCancel(context.Background())
	r := &staleReader{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			cctx, ccancel := c.Authed(ctx, 2*time.Second)
			g, err := n.KV.Get(cctx, &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
			ccancel()
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			if err != nil {
				r.errs = append(r.errs, failedAttempt{Path: path, At: time.Now(), Err: err})
			} else {
				r.reads++
				if g.ReadMeta.GetLeaderId() == "" {
					r.leaderless++
				}
			}
			r.mu.Unlock()
		}
	}()
	t.Cleanup(r.stop)
	return r
}

// stop ends the reader and waits for it. It is idempotent.
func (r *staleReader) stop() {
	r.cancel()
	<-r.done
}

// result returns the number of successful reads, of those answered while
// leaderless, and the failures.
func (r *staleReader) result() (reads, leaderless int, errs []failedAttempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads, r.leaderless, slices.Clone(r.errs)
}

// wantCode fails unless err carries code.
func wantCode(t testing.TB, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v (code %s), want code %s", what, err, status.Code(err), code)
	}
}

// stats returns the median and the maximum of ds.
func stats(ds []time.Duration) (median, worst time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0
	}
	if len(s)%2 == 1 {
		median = s[len(s)/2]
	} else {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return median, s[len(s)-1]
}

// readAll checks that every acknowledged write is readable at default
// consistency through cl with its value, and that its path holds exactly
// one version (a retried write must not have written twice).
func readAll(t testing.TB, cl *api.Client, acked []ackedWrite) {
	t.Helper()
	for _, a := range acked {
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		g, err := cl.Get(actx, &pb.GetRequest{Path: a.Path, Read: &pb.ReadOptions{MinIndex: a.Index}})
		if err != nil {
			cancel()
			t.Fatalf("acknowledged write %s (index %d, %d attempts) is lost: %v", a.Path, a.Index, a.Attempts, err)
		}
		if g.Data["v"] != a.Value || g.Metadata.Version != a.Version {
			cancel()
			t.Fatalf("acknowledged write %s: read %v version %d, want %s version %d", a.Path, g.Data, g.Metadata.Version, a.Value, a.Version)
		}
		md, err := cl.ReadMetadata(actx, &pb.ReadMetadataRequest{Path: a.Path})
		cancel()
		if err != nil {
			t.Fatalf("metadata of %s: %v", a.Path, err)
		}
		if md.CurrentVersion != 1 || len(md.Versions) != 1 {
			t.Fatalf("%s was written once (request id %s, %d attempts) but holds current_version %d and %d versions", a.Path, a.RequestID, a.Attempts, md.CurrentVersion, len(md.Versions))
		}
	}
}
