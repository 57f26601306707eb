package replication

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"coffer/fsm"
)

func TestAdaptiveThreshold(t *testing.T) {
	for _, c := range []struct {
		base     uint64
		size     int64
		perEntry int
		want     uint64
	}{
		{8192, 0, 2048, 8192},                       // no snapshot yet
		{8192, 1 << 20, 2048, 8192},                 // a small state keeps the base
		{8192, 450 << 20, 2048, 230400},             // a million secrets' snapshot
		{8192, 4 << 30, 2048, MaxAdaptiveThreshold}, // capped
		{8192, 450 << 20, -1, 8192},                 // fixed on purpose
		{1 << 20, 4 << 30, 2048, 1 << 20},           // a base above the cap wins
	} {
		if got := adaptiveThreshold(c.base, c.size, c.perEntry); got != c.want {
			t.Errorf("adaptiveThreshold(%d, %d, %d) = %d, want %d", c.base, c.size, c.perEntry, got, c.want)
		}
	}
}

// TestSnapshotThresholdGrowsWithTheState: after a snapshot of a larger
// state, Raft waits for proportionally more entries before the next one,
// and a restarted node starts from the newest snapshot's size.
func TestSnapshotThresholdGrowsWithTheState(t *testing.T) {
	dir := t.TempDir()
	open := func() (*Node, *fsm.FSM) {
		return openStoreNode(t, dir, testLogStore(), func(c *Config) {
			c.SnapshotBytesPerEntry = 64 // so that a test-sized state moves it
		})
	}
	n, f := open()
	base := n.Raft().ReloadableConfig().SnapshotThreshold
	if base != DefaultConfig().SnapshotThreshold {
		t.Fatalf("threshold before any snapshot = %d, want the default %d", base, DefaultConfig().SnapshotThreshold)
	}
	for i := range 3000 {
		put(t, n, fmt.Sprintf("secret/p%05d", i), strings.Repeat("x", 200))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	size := newestSnapshotSize(n.snapshots)
	grown := n.Raft().ReloadableConfig().SnapshotThreshold
	if want := adaptiveThreshold(base, size, 64); grown != want || grown <= base {
		t.Fatalf("after a snapshot of %d bytes the threshold is %d, want %d (> %d)", size, grown, want, base)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	n, f = open()
	defer f.Close()
	defer n.Shutdown()
	if got := n.Raft().ReloadableConfig().SnapshotThreshold; got != grown {
		t.Fatalf("after a restart the threshold is %d, want %d from the snapshot on disk", got, grown)
	}
}

// TestFixedSnapshotThreshold: a threshold set on purpose does not grow.
func TestFixedSnapshotThreshold(t *testing.T) {
	c := Config{SnapshotThreshold: 64}.withDefaults()
	if c.SnapshotBytesPerEntry >= 0 || c.SnapshotThreshold != 64 {
		t.Fatalf("explicit threshold: %d, bytes per entry %d; want 64 fixed", c.SnapshotThreshold, c.SnapshotBytesPerEntry)
	}
	d := Config{}.withDefaults()
	if d.SnapshotBytesPerEntry != DefaultSnapshotBytesPerEntry {
		t.Fatalf("default bytes per entry %d, want %d", d.SnapshotBytesPerEntry, DefaultSnapshotBytesPerEntry)
	}
}
