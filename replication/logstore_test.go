package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

// openStoreNode starts a one-node cluster in dir with the given log store
// and waits for it to lead.
func openStoreNode(t *testing.T, dir, store string, mut func(*Config)) (*Node, *fsm.FSM) {
	t.Helper()
	f, err := fsm.Open(filepath.Join(dir, "fsm.db"), fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testNodeConfig(t, dir)
	cfg.RaftLogStore = store
	if mut != nil {
		mut(&cfg)
	}
	n, err := New(cfg, f)
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitForLeader(ctx); err != nil {
		n.Shutdown()
		f.Close()
		t.Fatal(err)
	}
	return n, f
}

// storeContents is what a closed data directory holds: the log entries
// of raft.db and of raft/wal/ (nil when it is absent), and the term.
type storeContents struct {
	bolt, wal []*raft.Log
	walExists bool
	term      uint64
}

func readLogs(t *testing.T, s raft.LogStore) []*raft.Log {
	t.Helper()
	first, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	var out []*raft.Log
	for i := first; last > 0 && i <= last; i++ {
		l := new(raft.Log)
		if err := s.GetLog(i, l); err != nil {
			t.Fatalf("entry %d of [%d, %d]: %v", i, first, last, err)
		}
		out = append(out, l)
	}
	return out
}

func openBolt(t *testing.T, dataDir string) *raftboltdb.BoltStore {
	t.Helper()
	b, err := raftboltdb.NewBoltStore(filepath.Join(dataDir, "raft", "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readContents(t *testing.T, dataDir string) storeContents {
	t.Helper()
	b := openBolt(t, dataDir)
	defer b.Close()
	var c storeContents
	c.bolt = readLogs(t, b)
	var err error
	if c.term, err = b.GetUint64([]byte("CurrentTerm")); err != nil {
		t.Fatal(err)
	}
	walPath := filepath.Join(dataDir, "raft", walDir)
	if _, err := os.Stat(walPath); err == nil {
		c.walExists = true
		w, err := openWAL(walPath, 0, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		c.wal = readLogs(t, w)
	}
	return c
}

func sameLogs(a, b []*raft.Log) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d entries against %d", len(a), len(b))
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Index != y.Index || x.Term != y.Term || x.Type != y.Type || !bytes.Equal(x.Data, y.Data) ||
			!bytes.Equal(x.Extensions, y.Extensions) || !x.AppendedAt.Equal(y.AppendedAt) {
			return fmt.Errorf("entry %d differs: %+v against %+v", i, x, y)
		}
	}
	return nil
}

// TestWALStoreKeepsLogAndVote: with the WAL, the log lives in raft/wal/
// and raft.db keeps only the term and vote; a restart keeps both, replays
// nothing twice and leads in a later term.
func TestWALStoreKeepsLogAndVote(t *testing.T) {
	dir := t.TempDir()
	n, f := openStoreNode(t, dir, LogStoreWAL, nil)
	for i := 1; i <= 5; i++ {
		if r, _ := put(t, n, "secret/a", "ct"); r.Err != nil || r.Version != uint64(i) {
			t.Fatalf("put %d: %+v", i, r)
		}
	}
	term, last := n.Term(), n.LastIndex()
	n.Shutdown()
	f.Close()

	c := readContents(t, dir)
	if !c.walExists || len(c.bolt) != 0 {
		t.Fatalf("wal dir %v, raft.db holds %d entries: want the log in the WAL only", c.walExists, len(c.bolt))
	}
	if len(c.wal) == 0 || c.wal[len(c.wal)-1].Index != last {
		t.Fatalf("WAL holds %d entries, want up to %d", len(c.wal), last)
	}
	if c.term != term {
		t.Fatalf("raft.db term %d, want %d", c.term, term)
	}

	n, f = openStoreNode(t, dir, LogStoreWAL, nil)
	defer f.Close()
	defer n.Shutdown()
	if r, _ := put(t, n, "secret/a", "ct"); r.Version != 6 {
		t.Fatalf("version after restart %d, want 6", r.Version)
	}
	if n.Term() <= term {
		t.Fatalf("term after restart %d, want > %d", n.Term(), term)
	}
}

// TestWALStoreSnapshotTruncates: a snapshot truncates the WAL's head
// (raft-wal deletes only a prefix or a suffix), and the node restarts on
// the truncated log.
func TestWALStoreSnapshotTruncates(t *testing.T) {
	dir := t.TempDir()
	small := func(c *Config) { c.TrailingLogs = 4; c.SnapshotInterval = time.Hour; c.SnapshotThreshold = 1 << 20 }
	n, f := openStoreNode(t, dir, LogStoreWAL, small)
	for i := 1; i <= 40; i++ {
		put(t, n, fmt.Sprintf("secret/k%d", i), "ct")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := n.logStore.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last := n.LastIndex()
	if last < 40 || last-first+1 != 4 {
		t.Fatalf("log [%d, %d] after a snapshot with 4 trailing entries", first, last)
	}
	n.Shutdown()
	f.Close()

	n, f = openStoreNode(t, dir, LogStoreWAL, small)
	defer f.Close()
	defer n.Shutdown()
	if got, err := n.logStore.FirstIndex(); err != nil || got != first {
		t.Fatalf("first index after restart %d (%v), want %d", got, err, first)
	}
	if r, _ := put(t, n, "secret/k1", "ct"); r.Version != 2 {
		t.Fatalf("version after restart %d, want 2", r.Version)
	}
}

// TestSwitchLogStoreMovesLog: a data directory written with one store and
// opened with the other has its log moved across, entry for entry, and the
// state machine goes on where it was.
func TestSwitchLogStoreMovesLog(t *testing.T) {
	dir := t.TempDir()
	version := uint64(0)
	var term uint64
	for round, store := range []string{LogStoreBoltDB, LogStoreWAL, LogStoreBoltDB, LogStoreWAL} {
		var before storeContents
		if round > 0 {
			before = readContents(t, dir)
		}
		n, f := openStoreNode(t, dir, store, nil)
		if round > 0 && n.Term() <= term {
			t.Fatalf("round %d: term %d, want > %d (raft.db's term lost?)", round, n.Term(), term)
		}
		for range 3 {
			version++
			if r, _ := put(t, n, "secret/a", "ct"); r.Err != nil || r.Version != version {
				t.Fatalf("round %d (%s): put gave %+v, want version %d", round, store, r, version)
			}
		}
		term = n.Term()
		n.Shutdown()
		f.Close()

		after := readContents(t, dir)
		var log []*raft.Log
		switch store {
		case LogStoreWAL:
			if !after.walExists || len(after.bolt) != 0 {
				t.Fatalf("round %d: wal dir %v, raft.db holds %d entries", round, after.walExists, len(after.bolt))
			}
			log = after.wal
		default:
			if after.walExists {
				t.Fatalf("round %d: raft/wal/ left behind with boltdb", round)
			}
			log = after.bolt
		}
		if round > 0 {
			prev := before.bolt
			if before.walExists {
				prev = before.wal
			}
			// The new log starts with exactly the old one.
			if len(log) < len(prev) {
				t.Fatalf("round %d: %d entries, %d before the switch", round, len(log), len(prev))
			}
			if err := sameLogs(prev, log[:len(prev)]); err != nil {
				t.Fatalf("round %d: moved log: %v", round, err)
			}
		}
		for _, leftover := range []string{walTmpDir, walOldDir} {
			if _, err := os.Stat(filepath.Join(dir, "raft", leftover)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("round %d: %s left behind (%v)", round, leftover, err)
			}
		}
	}
}

// testEntries returns entries lo..hi of term 3.
func testEntries(lo, hi uint64) []*raft.Log {
	var out []*raft.Log
	for i := lo; i <= hi; i++ {
		out = append(out, &raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i)), AppendedAt: time.Unix(1700000000, int64(i)).UTC()})
	}
	return out
}

// TestOpenLogStoreFinishesInterruptedMoves lays out every state a crash can
// leave a move between the stores in, and checks that the next start finds
// the whole log in the store it asks for, whichever that is.
func TestOpenLogStoreFinishesInterruptedMoves(t *testing.T) {
	want := testEntries(11, 60) // a log truncated by a snapshot at 10
	type layout struct {
		bolt    []*raft.Log
		wal     []*raft.Log // written to dirName when set
		dirName string
	}
	cases := map[string]layout{
		// boltdb → wal cut short before the rename: wal.tmp holds part.
		"copy to wal.tmp cut short": {bolt: want, wal: want[:20], dirName: walTmpDir},
		// boltdb → wal after the rename, before raft.db was emptied.
		"raft.db not yet emptied": {bolt: want, wal: want, dirName: walDir},
		// wal → boltdb cut short while copying: raft.db holds part.
		"copy to raft.db cut short": {bolt: want[:7], wal: want, dirName: walDir},
		// wal → boltdb after the rename, before wal.old was deleted.
		"wal.old not yet deleted": {bolt: want, wal: want, dirName: walOldDir},
		"log in raft.db":          {bolt: want},
		"log in the WAL":          {wal: want, dirName: walDir},
	}
	for name, l := range cases {
		for _, kind := range []string{LogStoreWAL, LogStoreBoltDB} {
			t.Run(name+"/"+kind, func(t *testing.T) {
				dataDir := t.TempDir()
				dir := filepath.Join(dataDir, "raft")
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				b := openBolt(t, dataDir)
				if err := b.StoreLogs(l.bolt); err != nil {
					t.Fatal(err)
				}
				if err := b.SetUint64([]byte("CurrentTerm"), 3); err != nil {
					t.Fatal(err)
				}
				if l.dirName != "" {
					w, err := openWAL(filepath.Join(dir, l.dirName), 0, hclog.NewNullLogger())
					if err != nil {
						t.Fatal(err)
					}
					if err := w.StoreLogs(l.wal); err != nil {
						t.Fatal(err)
					}
					w.Close()
				}
				logs, closer, err := openLogStore(dir, kind, 0, b, hclog.NewNullLogger())
				if err != nil {
					t.Fatal(err)
				}
				got := readLogs(t, logs)
				if closer != nil {
					closer.Close()
				}
				b.Close()
				if err := sameLogs(want, got); err != nil {
					t.Fatalf("log after start: %v", err)
				}
				c := readContents(t, dataDir)
				if c.term != 3 {
					t.Fatalf("term %d, want 3", c.term)
				}
				if kind == LogStoreWAL && len(c.bolt) != 0 {
					t.Fatalf("raft.db still holds %d entries", len(c.bolt))
				}
				if kind == LogStoreBoltDB && c.walExists {
					t.Fatal("raft/wal/ still there with boltdb")
				}
				for _, leftover := range []string{walTmpDir, walOldDir} {
					if _, err := os.Stat(filepath.Join(dir, leftover)); !errors.Is(err, os.ErrNotExist) {
						t.Fatalf("%s left behind (%v)", leftover, err)
					}
				}
			})
		}
	}
}

func TestConfigValidateLogStore(t *testing.T) {
	c := testNodeConfig(t, t.TempDir())
	for _, ok := range []string{"", LogStoreWAL, LogStoreBoltDB} {
		c.RaftLogStore = ok
		if err := c.Validate(); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	c.RaftLogStore = "rocksdb"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "wal, boltdb") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Validate(rocksdb) = %v, want one line naming wal, boltdb", err)
	}
}

// BenchmarkLogStoreAppend: one StoreLogs of one 512-byte entry, the
// append a lightly loaded leader makes per write, on each store.
func BenchmarkLogStoreAppend(b *testing.B) {
	for _, kind := range []string{LogStoreBoltDB, LogStoreWAL} {
		b.Run(kind, func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "raft")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				b.Fatal(err)
			}
			bolt, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer bolt.Close()
			logs, closer, err := openLogStore(dir, kind, 0, bolt, hclog.NewNullLogger())
			if err != nil {
				b.Fatal(err)
			}
			if closer != nil {
				defer closer.Close()
			}
			data := bytes.Repeat([]byte("x"), 512)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := logs.StoreLogs([]*raft.Log{{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: data}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestWALFollowerInstallsSnapshot: a follower on the WAL that was down while
// the others snapshotted and truncated their logs past it catches up from a
// snapshot: Raft empties its WAL (a head truncation past the end, since the
// WAL is monotonic) and appends after the snapshot's index, and it goes on
// applying new entries, also after another restart.
func TestWALFollowerInstallsSnapshot(t *testing.T) {
	logs := newLogSink(t)
	nodes := startExpectCluster(t, logs, 3, func(c *Config) {
		c.RaftLogStore = LogStoreWAL
		c.TrailingLogs = 2
		c.SnapshotInterval, c.SnapshotThreshold = time.Hour, 1<<20
		c.Gossip.DeadServerTimeout = time.Minute // nobody is removed meanwhile
		// Segments of a few entries: raft-wal frees (and stops serving)
		// compacted entries only once their segment is no longer the tail.
		c.WALSegmentSize = 2 << 10
	})
	f := nodes[0]
	if f == waitForLeader(t, nodes) {
		f = nodes[1]
	}
	var live []*tnode
	for _, n := range nodes {
		if n != f {
			live = append(live, n)
		}
	}
	write := func(path string) uint64 {
		t.Helper()
		var idx uint64
		waitUntil(t, testWait, "write "+path, func() error {
			for _, n := range live {
				if n.IsLeader() {
					data, err := fsm.EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: path, Ciphertext: sealedLike("ct"), LeaderTimeUnixNano: time.Now().UnixNano()})
					if err != nil {
						t.Fatal(err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_, idx, err = n.Apply(ctx, data)
					return err // a leadership lost meanwhile: again
				}
			}
			return errors.New("no leader among the live nodes")
		})
		return idx
	}
	catchUp := func(what string, idx uint64) {
		t.Helper()
		waitUntil(t, testWait, what, func() error {
			if got := f.fsm.AppliedIndex(); got < idx {
				return fmt.Errorf("applied %d of %d", got, idx)
			}
			return nil
		})
	}
	catchUp("follower applies the first write", write("secret/a"))
	applied := f.fsm.AppliedIndex()
	cfg := f.cfg
	cfg.BindAddr, cfg.Gossip = f.Addr(), &GossipConfig{}
	*cfg.Gossip = *f.cfg.Gossip
	cfg.Gossip.BindAddr, cfg.Gossip.Join = f.GossipAddr(), []string{live[0].GossipAddr()}
	f.crash()

	var idx uint64
	for i := range 30 {
		idx = write(fmt.Sprintf("secret/k%d", i))
	}
	// Whichever node leads next must lack the entries the follower misses.
	for _, n := range live {
		waitUntil(t, testWait, "snapshot on "+n.ID(), func() error {
			if got := n.fsm.AppliedIndex(); got < idx {
				return fmt.Errorf("applied %d of %d", got, idx)
			}
			return n.Snapshot(ctxWait(t))
		})
		if first, err := n.logStore.FirstIndex(); err != nil || first <= applied+1 {
			t.Fatalf("%s's log starts at %d (%v): the follower, at %d, could catch up from it", n.ID(), first, err, applied)
		}
	}

	f = startNode(t, cfg)
	catchUp("follower catches up from a snapshot", idx)
	// The FSM is restored before Raft empties the log: wait for both.
	waitUntil(t, testWait, "follower drops its log from before the snapshot", func() error {
		if first, err := f.logStore.FirstIndex(); err != nil || (first != 0 && first <= applied+1) {
			return fmt.Errorf("follower's log starts at %d (%v)", first, err)
		}
		return nil
	})
	idx = write("secret/after")
	catchUp("follower applies a write after the snapshot", idx)
	var l raft.Log
	if err := f.logStore.GetLog(idx, &l); err != nil || l.Index != idx {
		t.Fatalf("follower's WAL has no entry %d: %v", idx, err)
	}
	last := f.LastIndex()
	f.stop()
	f = startNode(t, cfg)
	if got := f.LastIndex(); got < last {
		t.Fatalf("follower's last index after a restart %d, want %d", got, last)
	}
	catchUp("follower applies after a restart", write("secret/after2"))
}

// TestWALSuffixTruncationSurvivesRestart: Raft deletes a conflicting
// suffix of a follower's log (DeleteRange up to the last index). raft-wal
// v0.4.0 then marks the tail segment sealed without writing its index
// block (raft-wal issue 31), and before the fix every read of that
// segment after a restart failed, which panicked raft.NewRaft. The log
// must reopen with every entry before the cut, none after it, and take
// new entries at the cut, across more than one restart.
func TestWALSuffixTruncationSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal")
	logger := hclog.NewNullLogger()
	entry := func(i, term uint64) *raft.Log {
		return &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d term %d", i, term))}
	}
	store := func(w raft.LogStore, from, to, term uint64) {
		t.Helper()
		var logs []*raft.Log
		for i := from; i <= to; i++ {
			logs = append(logs, entry(i, term))
		}
		if err := w.StoreLogs(logs); err != nil {
			t.Fatalf("store %d-%d: %v", from, to, err)
		}
	}
	// check reads every index in [1, last] and wants the term terms(i),
	// and nothing after last.
	check := func(w raft.LogStore, last uint64, terms func(uint64) uint64) {
		t.Helper()
		if got, err := w.LastIndex(); err != nil || got != last {
			t.Fatalf("LastIndex = %d, %v; want %d", got, err, last)
		}
		for i := uint64(1); i <= last; i++ {
			var l raft.Log
			if err := w.GetLog(i, &l); err != nil {
				t.Fatalf("GetLog(%d): %v", i, err)
			}
			if want := entry(i, terms(i)); l.Term != want.Term || !bytes.Equal(l.Data, want.Data) {
				t.Fatalf("GetLog(%d) = term %d %q, want term %d %q", i, l.Term, l.Data, want.Term, want.Data)
			}
		}
		var l raft.Log
		if err := w.GetLog(last+1, &l); !errors.Is(err, raft.ErrLogNotFound) {
			t.Fatalf("GetLog(%d) after the last index: %v, want not found", last+1, err)
		}
	}

	w, err := openWAL(path, defaultWALSegmentSize, logger)
	if err != nil {
		t.Fatal(err)
	}
	store(w, 1, 10, 1)
	if err := w.DeleteRange(8, 10); err != nil { // a conflicting suffix
		t.Fatal(err)
	}
	term1 := func(uint64) uint64 { return 1 }
	check(w, 7, term1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w, err = openWAL(path, defaultWALSegmentSize, logger)
	if err != nil {
		t.Fatalf("reopen after a suffix truncation: %v", err)
	}
	check(w, 7, term1)
	store(w, 8, 12, 2) // the new leader's entries
	if err := w.DeleteRange(11, 12); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w, err = openWAL(path, defaultWALSegmentSize, logger)
	if err != nil {
		t.Fatalf("reopen after a second suffix truncation: %v", err)
	}
	defer w.Close()
	terms := func(i uint64) uint64 {
		if i <= 7 {
			return 1
		}
		return 2
	}
	check(w, 10, terms)
	// A snapshot's head truncation drops the segments the cuts sealed.
	if err := w.DeleteRange(1, 9); err != nil {
		t.Fatal(err)
	}
	if first, err := w.FirstIndex(); err != nil || first != 10 {
		t.Fatalf("FirstIndex after a head truncation = %d, %v; want 10", first, err)
	}
}

// TestWALSealedSegmentsReleaseTheirBuffers: a storm of 1 MiB entries
// rotates a segment every two; raft-wal kept each sealed segment's writer,
// with a commit buffer of at least 2 MiB, for as long as the segment
// lived (48 MiB here, 360 MB on a node of a storm in the chaos suite).
// Sealed segments are now read through a reader of the file: the heap
// stays flat, and every entry still reads back, before and after a
// reopen.
func TestWALSealedSegmentsReleaseTheirBuffers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal")
	logger := hclog.NewNullLogger()
	const n, size = 48, 1 << 20
	data := func(i uint64) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	w, err := openWAL(path, 2<<20, logger)
	if err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	before := heap()
	for i := uint64(1); i <= n; i++ {
		l := &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data(i)}
		if err := w.StoreLogs([]*raft.Log{l}); err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
	}
	if grew := int64(heap()) - int64(before); grew > 16<<20 {
		t.Errorf("the heap grew by %d MiB over %d appends of 1 MiB: sealed segments keep their buffers", grew>>20, n)
	}
	check := func(w raft.LogStore) {
		t.Helper()
		for i := uint64(1); i <= n; i++ {
			var l raft.Log
			if err := w.GetLog(i, &l); err != nil || !bytes.Equal(l.Data, data(i)) {
				t.Fatalf("GetLog(%d): %v (%d bytes)", i, err, len(l.Data))
			}
		}
	}
	check(w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w, err = openWAL(path, 2<<20, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	check(w)
}
