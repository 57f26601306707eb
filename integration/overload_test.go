package integration

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
	"coffer/replication"
)

// heapSampler records the high-water mark of the Go heap in use while it
// runs.
type heapSampler struct {
	stop chan struct{}
	done chan struct{}
	peak atomic.Uint64
}

func startHeapSampler(every time.Duration) *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > h.peak.Load() {
				h.peak.Store(ms.HeapInuse)
			}
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return h
}

// finish stops the sampler and returns the peak.
func (h *heapSampler) finish() uint64 {
	close(h.stop)
	<-h.done
	return h.peak.Load()
}

// heapInuse returns the heap in use after a collection.
func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestWriteStormStaysWithinTheBudget performs the attack of the security
// review (a storm of 256 KiB writes took a leader to 4.4 GB) on three
// nodes with a small request-byte budget: writers put 256 KiB values as
// fast as they can, half through the leader and half through a follower
// (which forwards them). The budget acts (nodes refuse calls as
// OVERLOADED), no node ever holds more than its budget, the client's
// retries still complete every write, every acknowledged write reads
// back, and the process's heap stays within a bound derived from the
// budget.
func TestWriteStormStaysWithinTheBudget(t *testing.T) {
	// The review's storm, scaled to a budget at its least (a little over
	// the largest request) so that a few dozen writes press on it: 32
	// writers want 8 MiB in flight against two budgets (admitted and
	// waiting) of 2 MiB per node.
	const (
		budget     = 2 << 20
		valueSize  = 256 << 10
		writers    = 16 // per client: 32 in all
		writesEach = 2
	)
	c := NewCluster(t, 3, ClusterOptions{MaxInflightBytes: budget})
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	leader := c.WaitForLeader(t)
	follower := c.Followers(leader)[0]
	newClient := func(n *Node) *api.Client {
		cl, err := api.New(api.Config{
			Endpoints: []string{n.APIAddr()}, Token: c.Token, TLS: c.ClientTLS(),
			// Every write must complete through the client's own retries.
			RetryBudget: 2 * time.Minute, Timeout: 2 * time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	clients := map[string]*api.Client{"leader": newClient(leader), "follower": newClient(follower)}
	// One value shared by every request (the client holds no copy of its
	// own per writer); each write's path tells the writes apart.
	value := strings.Repeat("v", valueSize)

	// The bound on the heap below assumes the collector's default pace.
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	baseline := heapInuse()
	heap := startHeapSampler(5 * time.Millisecond)
	start := time.Now()
	type write struct {
		path    string
		version uint64
		index   uint64
	}
	var (
		mu     sync.Mutex
		acked  []write
		failed []error
		wg     sync.WaitGroup
	)
	for via, cl := range clients {
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range writesEach {
					path := fmt.Sprintf("secret/storm/%s-%d-%d", via, w, i)
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					resp, err := cl.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": value}})
					cancel()
					mu.Lock()
					if err != nil {
						failed = append(failed, fmt.Errorf("%s: %w", path, err))
					} else {
						acked = append(acked, write{path, resp.Version, resp.Index})
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	peakHeap := heap.finish()

	var refused uint64
	var busiest int64
	for _, n := range c.Nodes() {
		st := n.Srv.Inflight()
		t.Logf("%s: budget %d, peak in flight %d (%.0f%%), %d calls refused", n.ID, st.Limit, st.Peak, 100*float64(st.Peak)/float64(st.Limit), st.Refused)
		// (b) No node ever admitted more than its budget.
		if st.Limit != budget || st.Peak > st.Limit {
			t.Errorf("%s: peak %d bytes in flight, over its budget of %d", n.ID, st.Peak, st.Limit)
		}
		refused += st.Refused
		busiest = max(busiest, st.Peak)
	}
	if busiest < budget/2 {
		t.Errorf("the busiest node's peak in flight is %d bytes, not half its budget: the storm did not press on the budget", busiest)
	}
	// (c) The budget acted, and the client's retries completed every write.
	if refused == 0 {
		t.Error("no call was refused as OVERLOADED: the storm never met the budget")
	}
	for _, err := range failed {
		t.Errorf("a write the client gave up on: %v", err)
	}
	if want := 2 * writers * writesEach; len(acked) != want {
		t.Fatalf("%d writes acknowledged, want %d", len(acked), want)
	}
	t.Logf("%d writes of %d KiB in %s (%.0f/s), %d refusals retried", len(acked), valueSize>>10, elapsed.Round(time.Millisecond), float64(len(acked))/elapsed.Seconds(), refused)

	// (d) The heap stayed within what the budget allows. Each node holds
	// at most a budget of admitted requests and a budget of requests
	// waiting for admission: 6 budgets. A request the leader admitted
	// lives on there as up to 7 more copies until Raft lets go of it
	// (plaintext, ciphertext, encoded command, the log store's msgpack
	// buffer (up to twice its size, it grows by doubling), the log's bbolt
	// page, the state machine's bbolt page), and as up to 5 on each
	// follower (the replicated entry, the msgpack buffer, the two pages):
	// 17 budgets. Every node keeps up to replication.LogCacheBytes of
	// recent entries after Raft let go of them. gRPC holds up to a
	// connection window (4 MiB) of unread messages on each connection
	// that carries writes (the two clients', the follower's to the
	// leader), and the clients one encoded request per call in flight.
	// The collector lets garbage grow as large as the live heap (GOGC=100,
	// set above) before it runs.
	live := 23*uint64(budget) + 3*replication.LogCacheBytes + 3*(4<<20) + uint64(2*writers*(valueSize+1<<10))
	bound := baseline + 2*live
	t.Logf("heap in use: %d MiB before the storm, peak %d MiB, bound %d MiB", baseline>>20, peakHeap>>20, bound>>20)
	if peakHeap > bound {
		t.Errorf("heap in use peaked at %d MiB, over the bound of %d MiB derived from the budget", peakHeap>>20, bound>>20)
	}

	// (a) Every acknowledged write reads back, whole.
	reader := clients["leader"]
	for _, w := range acked {
		resp, err := reader.Get(ctx(t), &pb.GetRequest{Path: w.path, Read: &pb.ReadOptions{MinIndex: w.index}})
		if err != nil {
			t.Fatalf("read back %s: %v", w.path, err)
		}
		if got := resp.Data["v"]; got != value || resp.Metadata.GetVersion() != w.version {
			t.Fatalf("read back %s: %d bytes at version %d, want %d at %d", w.path, len(got), resp.Metadata.GetVersion(), len(value), w.version)
		}
	}
	// Every byte taken comes back once Raft has let go of the commands.
	testcluster.WaitFor(t, 10*time.Second, "budgets empty after the storm", func() error {
		for _, n := range c.Nodes() {
			if st := n.Srv.Inflight(); st.InUse != 0 {
				return fmt.Errorf("%s holds %d bytes", n.ID, st.InUse)
			}
		}
		return nil
	})
}
