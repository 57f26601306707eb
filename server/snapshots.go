package server

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"coffer/seal"
	"coffer/server/snapshotfile"
)

// snapshotScheduler takes the scheduled snapshots (-snapshot-interval,
// -snapshot-dir, -snapshot-retain): a leader duty, run for as long as this
// node leads, so that whichever voter leads continues the schedule. Each
// snapshot is the file `snapshot save` would stream (writeSnapshot:
// ciphertext and a MAC keyed from the root key), written atomically into
// the directory under a name with its SHA-256 (package snapshotfile); then
// the directory keeps the newest Retain. A failure (disk full, directory
// gone, no permission) logs one line and counts, and removes nothing.
type snapshotScheduler struct {
	cfg    SnapshotSchedule
	nodeID string
	// write is operatorServer.writeSnapshot.
	write  func(w io.Writer, now time.Time) (snapshotfile.Header, error)
	sealed func() bool
	logger hclog.Logger
	now    func() time.Time

	lastSuccess prometheus.Gauge
	duration    prometheus.Histogram
	failures    prometheus.Counter
	skipped     prometheus.Counter
}

// snapshotBuckets are the snapshot duration histogram's bounds, in
// seconds: from a small state on a fast disk to a large one on a slow.
var snapshotBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// errLeadershipLost ends a snapshot in progress when this node stops
// leading (or stops).
var errLeadershipLost = errors.New("server: leadership lost during the snapshot")

func newSnapshotScheduler(cfg SnapshotSchedule, nodeID string, write func(io.Writer, time.Time) (snapshotfile.Header, error), sealed func() bool, logger hclog.Logger) *snapshotScheduler {
	if cfg.Retain <= 0 {
		cfg.Retain = DefaultSnapshotRetain
	}
	return &snapshotScheduler{
		cfg: cfg, nodeID: nodeID, write: write, sealed: sealed, logger: logger, now: time.Now,
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "coffer_snapshot_last_success_timestamp_seconds", Help: "Unix time of the last scheduled snapshot this node wrote (0: none since it started).",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coffer_snapshot_duration_seconds", Help: "Time this node took to write a scheduled snapshot (successful ones; the count is how many it wrote).", Buckets: snapshotBuckets,
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coffer_snapshot_failures_total", Help: "Scheduled snapshots this node failed to write (disk full, directory missing, permission).",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coffer_snapshot_skipped_total", Help: "Scheduled snapshots this node skipped because it led while sealed.",
		}),
	}
}

// collectors are the scheduler's metrics, for the node's registry.
func (s *snapshotScheduler) collectors() []prometheus.Collector {
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "coffer_snapshot_age_seconds",
		Help: "Seconds since the newest scheduled snapshot in this node's -snapshot-dir was taken (-1: none). Followers' grow: watch the minimum over the voters.",
	}, func() float64 {
		newest, ok := s.newest()
		if !ok {
			return -1
		}
		return s.now().Sub(newest).Seconds()
	})
	return []prometheus.Collector{s.lastSuccess, s.duration, s.failures, s.skipped, age}
}

// newest is the time of the newest scheduled snapshot in the directory,
// of those not dated in the future (snapshotfile.Newest): a name dated a
// year ahead would otherwise postpone the schedule by a year and keep the
// age metric negative.
func (s *snapshotScheduler) newest() (time.Time, bool) {
	entries, err := snapshotfile.List(s.cfg.Dir)
	if err != nil {
		return time.Time{}, false
	}
	e, ok := snapshotfile.Newest(entries, s.now())
	return e.Time, ok
}

// prepare runs when the node starts: it creates the directory (0700) when
// missing, and removes the temporary files a crash of this node left in
// it. It only logs what fails: the node serves all the same, and each
// snapshot then fails with its reason.
func (s *snapshotScheduler) prepare() {
	dir := s.cfg.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.logger.Error("cannot create the snapshot directory; scheduled snapshots will fail until it exists", "dir", dir, "error", err)
		return
	}
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		s.logger.Warn("the snapshot directory is open to other users: restrict it with chmod 700", "dir", dir, "mode", fi.Mode().Perm().String())
	}
	removed, err := snapshotfile.CleanTemp(dir, s.nodeID)
	if err != nil {
		s.logger.Warn("removing unfinished snapshots failed", "dir", dir, "error", err)
	}
	if len(removed) > 0 {
		s.logger.Info("removed unfinished snapshots left by a crash", "dir", dir, "files", removed)
	}
}

// run takes a snapshot every Interval until ctx (the leadership) ends or
// stop closes. The first is due one Interval after the newest snapshot in
// the directory (at once when that is past), so that a new leader goes on
// with the schedule rather than starting it over.
func (s *snapshotScheduler) run(ctx context.Context, stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	next := s.now()
	if newest, ok := s.newest(); ok && newest.Add(s.cfg.Interval).After(next) {
		next = newest.Add(s.cfg.Interval)
	}
	timer := time.NewTimer(next.Sub(s.now()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		s.takeOne(ctx)
		// A snapshot that took longer than the interval is not followed
		// by a burst of catching up.
		next = next.Add(s.cfg.Interval)
		if now := s.now(); !next.After(now) {
			next = now.Add(s.cfg.Interval)
		}
		timer.Reset(next.Sub(s.now()))
	}
}

// takeOne takes one snapshot and prunes the directory after it.
func (s *snapshotScheduler) takeOne(ctx context.Context) {
	dir := s.cfg.Dir
	if s.sealed() {
		s.skipSealed()
		return
	}
	start := s.now()
	e, err := snapshotfile.Save(dir, s.nodeID, start, func(w io.Writer) (snapshotfile.Header, error) {
		return s.write(ctxWriter{ctx: ctx, w: w}, start)
	})
	switch {
	case errors.Is(err, seal.ErrSealed):
		s.skipSealed()
		return
	case ctx.Err() != nil:
		s.logger.Info("scheduled snapshot abandoned: this node no longer leads (the new leader takes the next)", "dir", dir)
		return
	case err != nil:
		s.failures.Inc()
		s.logger.Error("scheduled snapshot failed; older snapshots are kept: "+snapshotFailureHint(err, dir), "dir", dir, "error", err)
		return
	}
	// Pruned as of no earlier than the snapshot's own time (a clock
	// stepped back meanwhile must not make it look future-dated).
	pruneAt := s.now()
	if pruneAt.Before(start) {
		pruneAt = start
	}
	removed, perr := snapshotfile.Prune(dir, s.cfg.Retain, pruneAt)
	if perr != nil {
		s.logger.Warn("removing snapshots beyond -snapshot-retain failed", "dir", dir, "retain", s.cfg.Retain, "error", perr)
	}
	if len(removed) > 0 {
		s.logger.Debug("removed snapshots beyond -snapshot-retain", "files", removed)
	}
	// Counted once the directory is pruned: a scrape that sees the count
	// sees the directory as retention leaves it.
	took := s.now().Sub(start)
	s.duration.Observe(took.Seconds())
	s.lastSuccess.Set(float64(start.UnixNano()) / 1e9)
	s.logger.Info("took a scheduled snapshot", "file", e.Name, "applied_index", e.AppliedIndex, "bytes", e.Size, "duration", took)
}

// snapshotFailureHint says what to do about a failed snapshot.
func snapshotFailureHint(err error, dir string) string {
	if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
		return "the directory does not exist (the node creates it only at start, so that an unmounted disk is noticed): create it with mode 0700 or fix -snapshot-dir"
	}
	switch {
	case errors.Is(err, os.ErrPermission):
		return "no permission to write in the directory: give the node's user write access to it"
	case errors.Is(err, syscall.ENOSPC):
		return "the disk is full: free space or lower -snapshot-retain"
	}
	return "check the directory and the disk"
}

// skipSealed counts and logs a snapshot a sealed leader cannot take.
func (s *snapshotScheduler) skipSealed() {
	s.skipped.Inc()
	s.logger.Warn("skipped a scheduled snapshot: this leader is sealed and a snapshot's MAC needs the keys; unseal it with `coffer operator unseal`")
}

// ctxWriter fails writes once ctx ends, abandoning a snapshot in progress.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, errLeadershipLost
	}
	return c.w.Write(p)
}
