package replication

import "github.com/hashicorp/raft"

// DefaultSnapshotBytesPerEntry sizes the snapshot threshold to the state:
// Raft snapshots after max(SnapshotThreshold, last snapshot's bytes / this)
// new entries. A snapshot is the whole state machine (fsm.db compacted),
// so with a fixed threshold of 8,192 entries a node holding a million
// secrets (a snapshot of several hundred MB) would write it every few
// seconds under load and spend its CPU and disk on that. With 2 KiB, the
// snapshot's cost per write stays about 2 KiB of disk (four times a put's
// log entry) and a few µs of CPU, whatever the size of the state; the log
// grows to at most MaxAdaptiveThreshold entries between snapshots.
const DefaultSnapshotBytesPerEntry = 2048

// MaxAdaptiveThreshold bounds the grown threshold, so the log between two
// snapshots stays under about 256 MB for 512-byte entries.
const MaxAdaptiveThreshold = 1 << 19

// adaptiveThreshold is the snapshot threshold for a state whose last
// snapshot took size bytes: base at least, size/perEntry, at most
// MaxAdaptiveThreshold (or base, when base is larger).
func adaptiveThreshold(base uint64, size int64, perEntry int) uint64 {
	if perEntry <= 0 || size <= 0 {
		return base
	}
	t := min(uint64(size)/uint64(perEntry), MaxAdaptiveThreshold)
	return max(t, base)
}

// sizingSnapshotStore is a raft.SnapshotStore that reports the size of
// each snapshot it completes — the node's own and ones installed from the
// leader — so that the node can resize its snapshot threshold.
type sizingSnapshotStore struct {
	raft.SnapshotStore
	done func(size int64)
}

func (s *sizingSnapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	return &sizingSink{SnapshotSink: sink, done: s.done}, nil
}

// sizingSink counts the bytes of a snapshot (written by one goroutine, as
// Raft does) and reports them when it is closed whole.
type sizingSink struct {
	raft.SnapshotSink
	n    int64
	done func(size int64)
}

func (s *sizingSink) Write(p []byte) (int, error) {
	n, err := s.SnapshotSink.Write(p)
	s.n += int64(n)
	return n, err
}

func (s *sizingSink) Close() error {
	if err := s.SnapshotSink.Close(); err != nil {
		return err
	}
	s.done(s.n)
	return nil
}

// newestSnapshotSize is the size of the newest snapshot in store (0: none).
func newestSnapshotSize(store raft.SnapshotStore) int64 {
	metas, err := store.List()
	if err != nil || len(metas) == 0 {
		return 0
	}
	return metas[0].Size
}

// resizeSnapshots sets Raft's snapshot threshold for a state whose last
// snapshot took size bytes. It is called after each snapshot completes
// (never from Raft's main loop) and at start with the newest snapshot on
// disk.
func (n *Node) resizeSnapshots(size int64) {
	want := adaptiveThreshold(n.cfg.SnapshotThreshold, size, n.cfg.SnapshotBytesPerEntry)
	r := n.raftPtr.Load()
	if r == nil {
		return // New sizes it from the newest snapshot once Raft runs
	}
	rc := r.ReloadableConfig()
	if rc.SnapshotThreshold == want {
		return
	}
	rc.SnapshotThreshold = want
	if err := r.ReloadConfig(rc); err != nil {
		n.logger.Warn("could not resize the snapshot threshold", "entries", want, "error", err)
		return
	}
	n.logger.Debug("snapshot threshold resized to the state", "snapshot_bytes", size, "entries", want)
}
