package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
	"coffer/server/snapshotfile"
)

// scaleSecrets is how many secrets TestScale stores.
const scaleSecrets = 50_000

// scaleKey is the path of the i-th secret of TestScale.
func scaleKey(i int) string { return fmt.Sprintf("secret/scale/k%05d", i) }

// TestScale: with 50,000 secrets written through Raft, (1) two nodes
// added afterwards catch up by installing the leader's snapshot (its log
// no longer starts at 1: each counts a restore in its metrics) and then
// hold the same state as the leader, bucket by bucket; (2) a paginated
// list of the prefix returns every one of the 50,000 keys exactly once, in
// order, while writes of new keys (which sort between them) and overwrites
// of existing ones go on between every two pages.
//
// The secrets are written into a one-node cluster, which the new nodes
// then grow to three: every write still goes through Raft (the leader's
// log, its fsync, the state machine), at a third of the CPU that
// replicating each of them to two followers costs under -race, where it
// made the test take minutes.
func TestScale(t *testing.T) {
	// 1 MiB raft-wal segments: with the default 16 MiB, the leader's WAL
	// would still hold (and serve) every entry of this test, compacted or
	// not, and a new node could replay them instead of the snapshot; a
	// million secrets fill many segments.
	c := NewCluster(t, 1, ClusterOptions{Metrics: true, WALSegmentSize: 1 << 20})
	leader := c.WaitForLeader(t)
	c.Init(t, leader)
	c.UnsealAll(t)

	began := time.Now()
	last := writeScaleSecrets(t, c.Client(t, leader), scaleSecrets)
	t.Logf("wrote %d secrets in %v (last index %d)", scaleSecrets, time.Since(began).Round(time.Millisecond), last)

	// Raft snapshots once 8192 entries pile up and keeps 4096 behind the
	// snapshot: once the leader has one, its log lacks the first entries
	// and a new node can only start from the snapshot.
	waitUntil(t, 30*time.Second, "the leader to take a Raft snapshot", func() bool {
		return scrapeMetrics(t, leader.MetricsURL()).value(t, "coffer_raft_snapshot_age_seconds") >= 0
	})

	joined := time.Now()
	added := []*Node{c.AddNode(t, false), c.AddNode(t, false)}
	for _, n := range added {
		testcluster.WaitFor(t, 90*time.Second, n.ID+" to apply every write", func() error {
			if st := c.Status(t, n); st.AppliedIndex < last {
				return fmt.Errorf("%s applied %d of %d", n.ID, st.AppliedIndex, last)
			}
			return nil
		})
	}
	t.Logf("%s caught up in %v", ids(added), time.Since(joined).Round(time.Millisecond))
	for _, n := range added {
		if got := scrapeMetrics(t, n.MetricsURL()).value(t, "coffer_raft_snapshot_restores_total"); got < 1 {
			t.Fatalf("%s caught up without installing a snapshot (%v restores): it replayed the log only", n.ID, got)
		}
		c.Unseal(t, n, 0)
	}
	testcluster.WaitFor(t, 30*time.Second, "three voters", func() error {
		peers, err := peerSet(c, leader)
		if err != nil {
			return err
		}
		for _, n := range append(added, leader) {
			if p := peers[n.ID]; p == nil || !p.Voter {
				return fmt.Errorf("%s peer %v", n.ID, p)
			}
		}
		return nil
	})
	for _, n := range added {
		sameState(t, c, leader, n)
	}

	listWhileWriting(t, c.Client(t))
}

// writeScaleSecrets writes secrets 0..n-1 (one small value each) from
// many goroutines, which Raft groups into large batches, and returns the
// highest index acknowledged.
func writeScaleSecrets(t *testing.T, cl *api.Client, n int) uint64 {
	t.Helper()
	const workers = 128
	var (
		next  atomic.Int64
		high  atomic.Uint64
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || wctx.Err() != nil {
					return
				}
				resp, err := putRetrying(wctx, cl, &pb.PutRequest{Path: scaleKey(i), Data: map[string]string{"v": fmt.Sprint(i)}, RequestId: api.NewRequestID()})
				if err != nil {
					errMu.Lock()
					if first == nil {
						first = fmt.Errorf("put %s: %w", scaleKey(i), err)
					}
					errMu.Unlock()
					cancel()
					return
				}
				for {
					h := high.Load()
					if resp.Index <= h || high.CompareAndSwap(h, resp.Index) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
	return high.Load()
}

// putRetrying puts req, retrying with its request id (so at most once)
// while attempts fail, for up to three attempts of ten seconds.
func putRetrying(ctx context.Context, cl *api.Client, req *pb.PutRequest) (*pb.PutResponse, error) {
	var err error
	for range 3 {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var resp *pb.PutResponse
		resp, err = cl.Put(actx, req)
		cancel()
		if err == nil || ctx.Err() != nil {
			return resp, err
		}
	}
	return nil, err
}

// sameState waits until snapshots saved through a and b hold the state at
// the same applied index, then fails unless every bucket, key and value is
// the same in both.
func sameState(t *testing.T, c *Cluster, a, b *Node) {
	t.Helper()
	var ia, ib uint64
	var da, db []byte
	testcluster.WaitFor(t, 20*time.Second, "snapshots of "+a.ID+" and "+b.ID+" at the same applied index", func() error {
		ia, da = snapshotState(t, c, a)
		ib, db = snapshotState(t, c, b)
		if ia != ib {
			return fmt.Errorf("%s at %d, %s at %d", a.ID, ia, b.ID, ib)
		}
		return nil
	})
	if !bytes.Equal(da, db) {
		t.Fatalf("%s and %s hold different states at applied index %d (%d and %d bytes of dump)", a.ID, b.ID, ia, len(da), len(db))
	}
	t.Logf("%s and %s hold the same state at applied index %d", a.ID, b.ID, ia)
}

// snapshotState saves a snapshot through n and returns the applied index
// its state holds and a byte-exact dump of every bucket of it.
func snapshotState(t *testing.T, c *Cluster, n *Node) (uint64, []byte) {
	t.Helper()
	// Compacting and sending the state takes seconds under -race on a
	// loaded machine: longer than ctx's.
	var buf bytes.Buffer
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Client(t, n).SnapshotSave(sctx, &buf); err != nil {
		t.Fatalf("snapshot save through %s: %v", n.ID, err)
	}
	snap := buf.Bytes()
	_, hdrLen, err := snapshotfile.ReadHeader(bytes.NewReader(snap))
	if err != nil {
		t.Fatalf("snapshot of %s: %v", n.ID, err)
	}
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, snap[hdrLen:len(snap)-snapshotfile.MACSize], 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("the state in %s's snapshot: %v", n.ID, err)
	}
	defer db.Close()
	var index uint64
	var dump bytes.Buffer
	put := func(b []byte) {
		dump.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		dump.Write(b)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte("meta"))
		if meta == nil {
			return errors.New("no meta bucket")
		}
		if v := meta.Get([]byte("applied_index")); len(v) == 8 {
			index = binary.BigEndian.Uint64(v)
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			put(name)
			return b.ForEach(func(k, v []byte) error {
				put(k)
				put(v)
				return nil
			})
		})
	}); err != nil {
		t.Fatalf("the state in %s's snapshot: %v", n.ID, err)
	}
	return index, dump.Bytes()
}

// listWhileWriting lists secret/scale/ page by page while writers put new
// keys (between the existing ones: k00042-n7 sorts after k00042) and
// overwrite existing ones, and waits for at least one of each between
// every two pages. Every original key must come exactly once, no key
// twice, in increasing order.
func listWhileWriting(t *testing.T, cl *api.Client) {
	t.Helper()
	var newKeys, overwrites, failed atomic.Int64
	acked := make(chan struct{}, 1)
	wctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; wctx.Err() == nil; seq++ {
				i := (seq*7919 + w*6151) % scaleSecrets
				path, counter := scaleKey(i), &overwrites
				if seq%2 == 0 {
					path, counter = fmt.Sprintf("%s-n%d", scaleKey(i), w), &newKeys
				}
				actx, cancel := context.WithTimeout(wctx, 10*time.Second)
				_, err := cl.Put(actx, &pb.PutRequest{Path: path, Data: map[string]string{"v": fmt.Sprint(seq)}, RequestId: api.NewRequestID()})
				cancel()
				if err != nil {
					// A write refused in an election on a loaded machine
					// is not what this checks: the next one is tried,
					// and waitWrites fails if none gets through.
					failed.Add(1)
					continue
				}
				counter.Add(1)
				select {
				case acked <- struct{}{}:
				default:
				}
			}
		}()
	}
	defer func() {
		stop()
		wg.Wait()
	}()
	// waitWrites waits until both kinds of write have moved past n and o.
	waitWrites := func(n, o int64) {
		deadline := time.After(10 * time.Second)
		for newKeys.Load() <= n || overwrites.Load() <= o {
			select {
			case <-acked:
			case <-deadline:
				t.Fatalf("no writes went on while listing (%d new keys, %d overwrites, %d failed)", newKeys.Load(), overwrites.Load(), failed.Load())
			}
		}
	}
	waitWrites(0, 0)

	seen := make(map[string]int, scaleSecrets*2)
	var prev, after string
	pages := 0
	began := time.Now()
	for {
		n, o := newKeys.Load(), overwrites.Load()
		resp, err := cl.List(ctx(t), &pb.ListRequest{Path: "secret/scale/", Limit: 1000, After: after})
		if err != nil {
			t.Fatalf("list page %d after %q: %v", pages, after, err)
		}
		pages++
		for _, k := range resp.Keys {
			if k <= prev {
				t.Fatalf("page %d: key %q after %q: out of order", pages, k, prev)
			}
			prev = k
			seen[k]++
		}
		after = resp.NextAfter
		if after == "" {
			break
		}
		waitWrites(n, o)
	}
	listed := time.Since(began)
	var missing []string
	for i := range scaleSecrets {
		if seen[fmt.Sprintf("k%05d", i)] != 1 {
			missing = append(missing, fmt.Sprintf("k%05d×%d", i, seen[fmt.Sprintf("k%05d", i)]))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of the %d keys not listed exactly once: %v", len(missing), scaleSecrets, head(missing))
	}
	t.Logf("listed %d keys (%d new) in %d pages in %v while %d new keys and %d overwrites were written (%d writes failed)",
		len(seen), len(seen)-scaleSecrets, pages, listed.Round(time.Millisecond), newKeys.Load(), overwrites.Load(), failed.Load())
}
