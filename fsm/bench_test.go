package fsm

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

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
