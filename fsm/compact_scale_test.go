package fsm

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// TestCompactionScale measures, on a state of COFFER_COMPACT_SECRETS
// secrets (unset: skipped; 1000000 for the figures of the report), how
// long a snapshot's compacted copy takes, its size against the file's, and
// the most heap in use while it runs (bounded: the copy commits every
// compactCommitBytes); then, after three in four secrets are deleted, the
// same for the mostly free file. Run it without -race for figures:
//
//	COFFER_COMPACT_SECRETS=1000000 go test -run TestCompactionScale -v ./fsm
func TestCompactionScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("COFFER_COMPACT_SECRETS"))
	if n <= 0 {
		t.Skip("set COFFER_COMPACT_SECRETS=N to measure compaction of N secrets")
	}
	path := filepath.Join(t.TempDir(), "fsm.db")
	f, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var index uint64
	const batch = 2000
	apply := func(cmds func(i int) *fsmpb.Command) {
		logs := make([]*raft.Log, 0, batch)
		for i := 0; i < n; i++ {
			c := cmds(i)
			if c == nil {
				continue
			}
			c.LeaderTimeUnixNano = baseTime.UnixNano()
			data, err := EncodeCommand(c)
			if err != nil {
				t.Fatal(err)
			}
			index++
			logs = append(logs, &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data})
			if len(logs) == batch || i == n-1 {
				for _, resp := range f.ApplyBatch(logs) {
					if res := resp.(Result); res.Err != nil {
						t.Fatal(res.Err)
					}
				}
				logs = logs[:0]
			}
		}
	}
	began := time.Now()
	apply(func(i int) *fsmpb.Command {
		return &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: fmt.Sprintf("secret/scale/%08d", i), Ciphertext: ctN(120)}
	})
	t.Logf("wrote %d secrets in %v", n, time.Since(began).Round(time.Millisecond))
	measure := func(label string) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		whole := 0
		_ = f.view(func(tx *bolt.Tx) error { whole = int(tx.Size()); return nil })
		live := liveBytes(t, f)
		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		peak := sampleHeap()
		snap, err := f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		size, err := snap.(io.WriterTo).WriteTo(io.Discard)
		took := time.Since(began)
		snap.Release()
		high := peak()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: file %d MB (data %d MB, live keys+values %d MB); compacted snapshot %d MB in %v (%.0f MB/s of output); heap in use %d MB before, at most %d MB during",
			label, fi.Size()>>20, whole>>20, live>>20, size>>20, took.Round(time.Millisecond),
			float64(size)/(1<<20)/took.Seconds(), base.HeapInuse>>20, high>>20)

		// What compacting at Open would cost: the copy, fsynced.
		began = time.Now()
		err = f.view(func(tx *bolt.Tx) error {
			return withCompacted(tx, path, func(db *bolt.DB) error { return db.Sync() })
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: compaction into a file, fsynced: %v", label, time.Since(began).Round(time.Millisecond))
	}
	measure("full")
	apply(func(i int) *fsmpb.Command {
		if i%4 == 0 {
			return nil
		}
		return &fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: fmt.Sprintf("secret/scale/%08d", i)}
	})
	measure("after deleting three in four")

	// Open compacts the file, now mostly free pages.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	began = time.Now()
	if f, err = Open(path, Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(path)
	t.Logf("Open of the %d MB file took %v (compacted: %v, now %d MB)", before.Size()>>20, time.Since(began).Round(time.Millisecond), !os.SameFile(before, after), after.Size()>>20)
}

// sampleHeap samples the heap in use every few milliseconds until the
// returned function is called, which returns the highest sample.
func sampleHeap() func() uint64 {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var high uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			high = max(high, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		wg.Wait()
		return high
	}
}
