package fsm

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// TestPagesFillWithTheLoadOrder: secrets written in key order (an
// import, a preload, names with a counter) leave the secrets buckets'
// pages nearly full instead of bbolt's half-full splits, and secrets
// written in random order still leave them about two thirds full (a fill
// percent meant for appends would leave them far emptier). Each load is
// 20,000 secrets in batches of 16 commands, as Raft hands them over.
func TestPagesFillWithTheLoadOrder(t *testing.T) {
	const n = 20000
	for _, tc := range []struct {
		order   string
		minUsed float64
	}{
		{"key order", 0.80},
		{"random order", 0.60},
	} {
		t.Run(tc.order, func(t *testing.T) {
			f, err := Open(filepath.Join(t.TempDir(), "fsm.db"), Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			keys := make([]int, n)
			for i := range keys {
				keys[i] = i
			}
			if tc.order == "random order" {
				rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
			}
			var logs []*raft.Log
			for j, i := range keys {
				data, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: fmt.Sprintf("app/key-%08d", i),
					Ciphertext: ctN(284), LeaderTimeUnixNano: baseTime.UnixNano()})
				if err != nil {
					t.Fatal(err)
				}
				logs = append(logs, &raft.Log{Index: uint64(j + 1), Term: 1, Type: raft.LogCommand, Data: data})
				if len(logs) == 16 || j == n-1 {
					for _, r := range f.ApplyBatch(logs) {
						if res := r.(Result); res.Err != nil {
							t.Fatal(res.Err)
						}
					}
					logs = logs[:0]
				}
			}
			if err := f.view(func(tx *bolt.Tx) error {
				for _, name := range [][]byte{bucketSecretValues, bucketSecretMeta} {
					st := tx.Bucket(name).Stats()
					if st.KeyN != n {
						t.Fatalf("%s holds %d keys, want %d", name, st.KeyN, n)
					}
					alloc, inuse := st.LeafAlloc+st.BranchAlloc, st.LeafInuse+st.BranchInuse
					used := float64(inuse) / float64(alloc)
					t.Logf("%s: %d pages, %.0f %% used", name, st.LeafPageN+st.BranchPageN, 100*used)
					if used < tc.minUsed {
						t.Errorf("%s: pages %.0f %% used, want at least %.0f %%", name, 100*used, 100*tc.minUsed)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
