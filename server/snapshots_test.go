package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	pb "coffer/api/cofferpb"
	"coffer/server/snapshotfile"
)

// snapshotsTaken is how many scheduled snapshots the node wrote (the
// count of coffer_snapshot_duration_seconds).
func snapshotsTaken(s *snapshotScheduler) uint64 {
	var m dto.Metric
	if err := s.duration.(prometheus.Metric).Write(&m); err != nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}

// counterValue is a counter's value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestScheduledSnapshotsOneNode: a one-node cluster with a 1s schedule
// and retain 2 removes the temporary file a crash left, takes snapshots
// that keep two files, hold no plaintext and verify; a missing directory
// fails a snapshot with a count and removes nothing; a sealed leader
// skips with a count.
func TestScheduledSnapshotsOneNode(t *testing.T) {
	dir := t.TempDir()
	snapDir := filepath.Join(dir, "snapshots")
	if err := os.Mkdir(snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(snapDir, ".coffer-snapshot-n1-12345.tmp")
	if err := os.WriteFile(crashed, []byte("half a snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.Snapshots = SnapshotSchedule{Interval: time.Second, Dir: snapDir, Retain: 2}
	n := startNodeConfig(t, cfg)
	srv := n.srv
	if _, err := os.Stat(crashed); !os.IsNotExist(err) {
		t.Fatalf("the crash's temporary file is still there: %v", err)
	}
	_, token := n.initUnseal(1, 1)
	marker := "snapshot-marker-" + rand.Text()
	if _, err := n.kv.Put(authed(t, token), &pb.PutRequest{Path: "secret/a", Data: map[string]string{"v": marker}}); err != nil {
		t.Fatal(err)
	}
	sched := srv.snapshots
	waitFor(t, 20*time.Second, "three scheduled snapshots", func() bool { return snapshotsTaken(sched) >= 3 })
	list, err := snapshotfile.List(snapDir)
	if err != nil || len(list) != 2 {
		t.Fatalf("snapshot dir: %d files, %v; want 2 (retain)", len(list), err)
	}
	for _, e := range list {
		if _, err := snapshotfile.Verify(e); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
		b, err := os.ReadFile(e.Path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(marker)) {
			t.Fatalf("%s holds the plaintext marker", e.Name)
		}
		if fi, _ := os.Stat(e.Path); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", e.Name, fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(snapDir); fi.Mode().Perm() != 0o700 {
		t.Errorf("snapshot dir mode %v", fi.Mode().Perm())
	}

	// The directory goes away (an unmounted disk): snapshots fail, are
	// counted, and the node does not recreate it.
	moved := filepath.Join(dir, "moved")
	if err := os.Rename(snapDir, moved); err != nil {
		t.Fatal(err)
	}
	failed := counterValue(sched.failures)
	waitFor(t, 10*time.Second, "a failed snapshot", func() bool { return counterValue(sched.failures) > failed })
	if _, err := os.Stat(snapDir); !os.IsNotExist(err) {
		t.Fatalf("the node recreated the missing snapshot directory: %v", err)
	}
	if err := os.Rename(moved, snapDir); err != nil {
		t.Fatal(err)
	}
	if after, _ := snapshotfile.List(snapDir); len(after) != 2 || after[0].Name != list[0].Name {
		t.Fatalf("the failures touched the older snapshots: %v", after)
	}

	// Sealed, the leader skips them.
	if _, err := n.sys.Seal(authed(t, token), &pb.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	skipped := counterValue(sched.skipped)
	waitFor(t, 10*time.Second, "a skipped snapshot", func() bool { return counterValue(sched.skipped) > skipped })
	text, err := srv.metrics.text(srv)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"coffer_snapshot_last_success_timestamp_seconds", "coffer_snapshot_duration_seconds_count", "coffer_snapshot_failures_total", "coffer_snapshot_skipped_total", "coffer_snapshot_age_seconds"} {
		if !strings.Contains(string(text), "\n"+name+" ") {
			t.Errorf("metrics lack %s", name)
		}
	}
}

// TestSnapshotScheduleValidate: the settings name their flags.
func TestSnapshotScheduleValidate(t *testing.T) {
	for _, tc := range []struct {
		s    SnapshotSchedule
		want string
	}{
		{SnapshotSchedule{Interval: time.Hour}, "-snapshot-dir"},
		{SnapshotSchedule{Dir: "x"}, "-snapshot-interval"},
		{SnapshotSchedule{Interval: time.Millisecond, Dir: "x"}, "below"},
		{SnapshotSchedule{Interval: time.Hour, Dir: "x", Retain: -1}, "-snapshot-retain"},
	} {
		if err := tc.s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.s, err, tc.want)
		}
	}
	if err := (SnapshotSchedule{Interval: time.Hour, Dir: "x"}).Validate(); err != nil {
		t.Errorf("valid schedule: %v", err)
	}
}

// TestSnapshotScheduleFutureDatedNames: snapshot names dated a year ahead
// in the directory (a leader whose clock was ahead, or planted files) must
// neither postpone the schedule until then, nor make retention remove the
// snapshots this node takes, nor hold the age metric below zero.
func TestSnapshotScheduleFutureDatedNames(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	fake := func(w io.Writer, at time.Time) (snapshotfile.Header, error) {
		h := snapshotfile.Header{Format: snapshotfile.Format, NodeID: "n1", AppliedIndex: uint64(at.UnixNano()), CreatedUnix: at.Unix()}
		return h, snapshotfile.Write(w, h, hmac.New(sha256.New, nil), func(io.Writer) error { return nil })
	}
	for i := range 3 {
		at := now.AddDate(1, 0, i)
		if _, err := snapshotfile.Save(dir, "ahead", at, func(w io.Writer) (snapshotfile.Header, error) { return fake(w, at) }); err != nil {
			t.Fatal(err)
		}
	}
	s := newSnapshotScheduler(SnapshotSchedule{Interval: time.Hour, Dir: dir, Retain: 3}, "n1", fake, func() bool { return false }, hclog.NewNullLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx, nil) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "the first snapshot (due at once: no snapshot dated up to now)", func() bool { return snapshotsTaken(s) >= 1 })
	cancel()
	<-done
	list, err := snapshotfile.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	var own int
	for _, e := range list {
		if e.Time.Before(now.AddDate(0, 1, 0)) {
			own++
		}
	}
	if own != 1 || len(list) != 3 {
		t.Fatalf("the snapshot this node took was pruned (%d of its own left): %v", own, list)
	}
	var m dto.Metric
	if err := s.collectors()[4].(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	if age := m.GetGauge().GetValue(); age < 0 || age > 60 {
		t.Fatalf("coffer_snapshot_age_seconds = %v, want the age of the snapshot just taken", age)
	}
}

// TestSnapshotFilesAreNotRaftSnapshots: writing snapshot files (scheduled
// or `snapshot save`) is not Raft persisting a snapshot of its own, so it
// must not move coffer_raft_snapshot_*: a node whose Raft log is never
// compacted would otherwise look healthy as long as backups run.
func TestSnapshotFilesAreNotRaftSnapshots(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.Snapshots = SnapshotSchedule{Interval: time.Hour, Dir: filepath.Join(dir, "snapshots"), Retain: 2}
	n := startNodeConfig(t, cfg)
	srv := n.srv
	n.initUnseal(1, 1)
	raftSnaps := func() uint64 {
		var m dto.Metric
		if err := srv.metrics.snapDuration.(prometheus.Metric).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	before, lastBefore := raftSnaps(), srv.metrics.lastSnapshot.Load()
	for range 3 {
		if _, err := srv.snapshots.write(io.Discard, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if after := raftSnaps(); after != before {
		t.Errorf("coffer_raft_snapshot_duration_seconds counted %d snapshot files as Raft snapshots", after-before)
	}
	if last := srv.metrics.lastSnapshot.Load(); last != lastBefore {
		t.Errorf("coffer_raft_snapshot_age_seconds was reset by a snapshot file")
	}
}
