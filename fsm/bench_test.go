package fsm

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// BenchmarkApplyBatch measures puts of 256-byte ciphertext over 1024 paths
// (so max_versions trimming is in the mix). One op is one command, so ns/op
// and allocs/op are per command. sync=true fsyncs every commit (the
// fallback where there is no boot id) and the disk's sync latency
// dominates; sync=false shows the CPU cost, as in production on Linux.
func BenchmarkApplyBatch(b *testing.B) {
	const paths = 1024
	payloads := make([][]byte, paths)
	for i := range payloads {
		data, err := EncodeCommand(&fsmpb.Command{
			Op:                 fsmpb.Op_OP_PUT,
			Path:               fmt.Sprintf("secret/bench/%04d", i),
			Ciphertext:         ctN(256),
			LeaderTimeUnixNano: baseTime.UnixNano(),
		})
		if err != nil {
			b.Fatal(err)
		}
		payloads[i] = data
	}
	for _, sync := range []bool{true, false} {
		for _, batch := range []int{1, 16, 64} {
			name := fmt.Sprintf("batch=%d/sync=%v", batch, sync)
			b.Run(name, func(b *testing.B) {
				f, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{NoSync: !sync, SyncEveryCommit: sync})
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				logs := make([]*raft.Log, batch)
				for i := range logs {
					logs[i] = &raft.Log{Type: raft.LogCommand, Term: 1}
				}
				var index uint64
				b.ReportAllocs()
				b.SetBytes(256)
				b.ResetTimer()
				for done := 0; done < b.N; done += batch {
					n := min(batch, b.N-done)
					for i := range n {
						index++
						logs[i].Index = index
						logs[i].Data = payloads[index%paths]
					}
					for _, resp := range f.ApplyBatch(logs[:n]) {
						if res := resp.(Result); res.Err != nil {
							b.Fatal(res.Err)
						}
					}
				}
			})
		}
	}
}

// BenchmarkGet reads the current version of one of 1024 secrets.
func BenchmarkGet(b *testing.B) {
	const paths = 1024
	f, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	names := make([]string, paths)
	logs := make([]*raft.Log, 0, paths*3)
	for i := range names {
		names[i] = fmt.Sprintf("secret/bench/%04d", i)
		for range 3 {
			data, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: names[i], Ciphertext: ctN(256), LeaderTimeUnixNano: baseTime.UnixNano()})
			if err != nil {
				b.Fatal(err)
			}
			logs = append(logs, &raft.Log{Index: uint64(len(logs) + 1), Type: raft.LogCommand, Data: data})
		}
	}
	f.ApplyBatch(logs)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := f.Get(names[i%paths], 0)
		if err != nil || len(v.Ciphertext) != 256 {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkApplyWrites is the state machine's share of a write load like
// `coffer bench kv-write`: puts of 256-byte ciphertext to random paths
// among 1,000, each with a request id (so the idempotency table is in the
// mix), leader time advancing 400 µs a command, in batches of 20, commits
// not fsynced (as in production on Linux). The request ids are random, or
// time-ordered as api.NewRequestID makes them.
func BenchmarkApplyWrites(b *testing.B) {
	const paths, batch = 1000, 20
	for _, ordered := range []bool{false, true} {
		b.Run(fmt.Sprintf("ordered-ids=%v", ordered), func(b *testing.B) {
			f, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			now := baseTime
			var index uint64
			logs := make([]*raft.Log, batch)
			b.ReportAllocs()
			for done := 0; done < b.N; done += batch {
				n := min(batch, b.N-done)
				for i := range n {
					index++
					now = now.Add(400 * time.Microsecond)
					rid := fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
					if ordered {
						rid = fmt.Sprintf("%016x%016x", now.UnixNano(), rng.Uint64())
					}
					data, err := EncodeCommand(&fsmpb.Command{
						Op: fsmpb.Op_OP_PUT, Path: fmt.Sprintf("secret/bench/k%d", rng.IntN(paths)),
						Ciphertext: ctN(256), LeaderTimeUnixNano: now.UnixNano(), RequestId: rid,
					})
					if err != nil {
						b.Fatal(err)
					}
					logs[i] = &raft.Log{Type: raft.LogCommand, Term: 1, Index: index, Data: data}
				}
				for _, resp := range f.ApplyBatch(logs[:n]) {
					if res := resp.(Result); res.Err != nil {
						b.Fatal(res.Err)
					}
				}
			}
		})
	}
}

// BenchmarkApplyWritesScale is BenchmarkApplyWrites over a state that
// already holds many secrets: `coffer bench kv-write -keys=N` after a
// `coffer bench preload -keys=N`, seen from one node's state machine. Each
// write puts a 300-byte ciphertext (a 256-byte value sealed) to a random
// one of the N stored paths with a time-ordered request id, in batches of
// 20 (a Raft batch under 64 clients: 23,338 writes in 972 batches on a
// follower; COFFER_BENCH_BATCH lists others), commits not fsynced. Besides ns/op it
// reports the bytes of pages each write commits (page-B/op), the page
// writes (writes/op), and the CPU time the process spent per write
// (cpu-ns/op: user and system, garbage collection included), which a
// machine busy with other work inflates less than ns/op.
//
// The stored secrets are written once into a template next to the
// system's temporary files (COFFER_BENCH_DIR to put it elsewhere), which
// each run copies: a million take about a minute to write and 900 MB.
// COFFER_BENCH_KEYS lists the sizes (default "1000 100000"), e.g.
// COFFER_BENCH_KEYS="1000 1000000" go test -run - -bench ApplyWritesScale ./fsm
// envCounts is the list of positive counts in $name (space-separated),
// or def when it is empty.
func envCounts(b *testing.B, name string, def ...int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var counts []int
	for _, f := range strings.Fields(v) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			b.Fatalf("%s: %q is not a positive count", name, f)
		}
		counts = append(counts, n)
	}
	return counts
}

func BenchmarkApplyWritesScale(b *testing.B) {
	sizes := envCounts(b, "COFFER_BENCH_KEYS", 1000, 100000)
	batches := envCounts(b, "COFFER_BENCH_BATCH", 20)
	value := ctN(300)
	for _, keys := range sizes {
		for _, batch := range batches {
			b.Run(fmt.Sprintf("keys=%d/batch=%d", keys, batch), func(b *testing.B) {
				template := scaleTemplate(b, keys, value)
				b.StopTimer()
				path := filepath.Join(b.TempDir(), "fsm.db")
				if err := copyFile(template, path); err != nil {
					b.Fatal(err)
				}
				f, err := Open(path, Options{NoSync: true})
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				// Touch every page once, as a node's mapping is after it
				// has served a while: the run then measures the writes,
				// not the first fault of each page (a copy's mapping
				// starts empty).
				if err := f.db.View(func(tx *bolt.Tx) error {
					return tx.ForEach(func(_ []byte, bk *bolt.Bucket) error {
						return bk.ForEach(func(_, _ []byte) error { return nil })
					})
				}); err != nil {
					b.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(3, 4))
				// The leader clock goes on from the template's last write.
				now := scaleTemplateEnd(keys)
				index := f.AppliedIndex()
				logs := make([]*raft.Log, batch)
				before := f.db.Stats().TxStats
				cpu0 := processCPU(b)
				b.ReportAllocs()
				b.StartTimer()
				for done := 0; done < b.N; done += batch {
					n := min(batch, b.N-done)
					for i := range n {
						index++
						now = now.Add(300 * time.Microsecond)
						data, err := EncodeCommand(&fsmpb.Command{
							Op: fsmpb.Op_OP_PUT, Path: "secret/bench/k" + strconv.Itoa(rng.IntN(keys)),
							Ciphertext: value, LeaderTimeUnixNano: now.UnixNano(),
							RequestId: fmt.Sprintf("%016x%016x", now.UnixNano(), rng.Uint64()),
						})
						if err != nil {
							b.Fatal(err)
						}
						logs[i] = &raft.Log{Type: raft.LogCommand, Term: 1, Index: index, Data: data}
					}
					for _, resp := range f.ApplyBatch(logs[:n]) {
						if res := resp.(Result); res.Err != nil {
							b.Fatal(res.Err)
						}
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
				after := f.db.Stats().TxStats
				b.ReportMetric(float64(after.GetPageAlloc()-before.GetPageAlloc())/float64(b.N), "page-B/op")
				b.ReportMetric(float64(after.GetWrite()-before.GetWrite())/float64(b.N), "writes/op")
			})
		}
	}
}

// BenchmarkPruneAfterIdle is the first write after the cluster was idle
// for longer than the idempotency window while the table was full: that
// one command prunes all DefaultMaxIdempotencyRecords records in its
// transaction (on every node). One op is that command.
func BenchmarkPruneAfterIdle(b *testing.B) {
	const keys = DefaultMaxIdempotencyRecords
	value := ctN(300)
	template := scaleTemplate(b, keys, value)
	last := scaleTemplateEnd(keys)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		path := filepath.Join(b.TempDir(), "fsm.db")
		if err := copyFile(template, path); err != nil {
			b.Fatal(err)
		}
		f, err := Open(path, Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		now := last.Add(DefaultIdempotencyWindow + time.Minute)
		data, err := EncodeCommand(&fsmpb.Command{
			Op: fsmpb.Op_OP_PUT, Path: "secret/bench/k1", Ciphertext: value,
			LeaderTimeUnixNano: now.UnixNano(), RequestId: fmt.Sprintf("%016x%016x", now.UnixNano(), 1),
		})
		if err != nil {
			b.Fatal(err)
		}
		l := &raft.Log{Type: raft.LogCommand, Term: 1, Index: f.AppliedIndex() + 1, Data: data}
		b.StartTimer()
		if res := f.Apply(l).(Result); res.Err != nil {
			b.Fatal(res.Err)
		}
		b.StopTimer()
		if err := f.db.View(func(tx *bolt.Tx) error {
			if n := tx.Bucket(bucketIdemTime).Stats().KeyN; n != 1 {
				return fmt.Errorf("%d idempotency records left, want 1", n)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// processCPU is the user and system CPU time the process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// scaleTemplateStep is the leader time between two writes of a template.
const scaleTemplateStep = 100 * time.Microsecond

// scaleTemplateWrites is how many puts write the template of keys secrets.
func scaleTemplateWrites(keys int) int { return max(keys, DefaultMaxIdempotencyRecords) }

// scaleTemplateEnd is the leader time of the template's last put.
func scaleTemplateEnd(keys int) time.Time {
	return baseTime.Add(time.Duration(scaleTemplateWrites(keys)) * scaleTemplateStep)
}

// scaleTemplate returns the path of a state holding keys secrets
// (secret/bench/k0 … k<keys-1>, written in the order of a preload) after
// at least DefaultMaxIdempotencyRecords puts, cycling over the paths, so
// that its idempotency table is full as a node's is after a while (each
// write then prunes a record), writing it first when missing.
func scaleTemplate(b *testing.B, keys int, value []byte) string {
	b.Helper()
	dir := os.Getenv("COFFER_BENCH_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	writes := scaleTemplateWrites(keys)
	path := filepath.Join(dir, fmt.Sprintf("coffer-fsm-bench-v%d-%d-%d.db", formatVersion, keys, writes))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	b.Logf("writing %d secrets into %s (once)", keys, path)
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := Open(tmp, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 1000
	logs := make([]*raft.Log, 0, chunk)
	now := baseTime
	for i := 0; i < writes; i++ {
		now = now.Add(scaleTemplateStep)
		data, err := EncodeCommand(&fsmpb.Command{
			Op: fsmpb.Op_OP_PUT, Path: "secret/bench/k" + strconv.Itoa(i%keys),
			Ciphertext: value, LeaderTimeUnixNano: now.UnixNano(),
			RequestId: fmt.Sprintf("%016x%016x", now.UnixNano(), uint64(i)),
		})
		if err != nil {
			b.Fatal(err)
		}
		logs = append(logs, &raft.Log{Type: raft.LogCommand, Term: 1, Index: uint64(i + 1), Data: data})
		if len(logs) == chunk || i == writes-1 {
			for _, resp := range f.ApplyBatch(logs) {
				if res := resp.(Result); res.Err != nil {
					b.Fatal(res.Err)
				}
			}
			logs = logs[:0]
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		b.Fatal(err)
	}
	return path
}

// copyFile copies src to a new file dst, a page (4 KiB) per write, as
// bbolt writes: a larger write (io.Copy's, or copy_file_range) leaves the
// copy in large page-cache folios, into which ext4 (Linux 6.x) takes a
// 4 KiB write at a cost that grows with the folio (25 µs instead of 4 for a
// page of a 540 MB file copied by 1 MiB writes), which no node of a cluster
// sees: its fsm.db comes into the cache by bbolt's page writes or by page
// faults.
func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += 4096 {
		if _, err := out.Write(data[off:min(off+4096, len(data))]); err != nil {
			_ = out.Close()
			return err
		}
	}
	return out.Close()
}
