package chaos

import (
	"fmt"
	"image/png"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"coffer/internal/testcluster"
	"coffer/internal/timeline"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(withResults{m}, testcluster.LeakOptions()...)
}

// withResults runs the tests, then writes the figures of every scenario
// that ran to $COFFER_CHAOS_OUT (when set) as JSON.
type withResults struct{ m *testing.M }

func (w withResults) Run() int {
	loadStart := LoadAvg()
	code := w.m.Run()
	if path := OutPath(); path != "" && len(results.list) > 0 {
		var figs []Figures
		for _, r := range results.list {
			figs = append(figs, r.Faults...)
		}
		out := Output{Date: time.Now().UTC(), Host: HostInfo(runtime.NumCPU(), runtime.Version(), loadStart), Results: results.list, Summaries: Summarize(figs)}
		if err := WriteJSON(path, out); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: writing %s: %v\n", path, err)
			return max(code, 1)
		}
	}
	return code
}

// results collects the results of the scenarios run by this test binary.
var results struct {
	mu   sync.Mutex
	list []Result
}

// checkGroups are the subtests every scenario reports, each with the
// violations (Violation.Check) that fail it. A subtest name says which
// promise broke: TestInProcessLeaderPause/no-reads-back-in-time.
var checkGroups = []struct {
	name   string
	checks []string
}{
	{"acknowledged-writes-kept", []string{"lost-write", "wrong-version"}},
	{"no-duplicate-versions", []string{"duplicate", "phantom"}},
	{"linearizable", []string{"not-linearizable", "linearizability-unknown"}},
	{"linearizable-reads-never-downgraded", []string{"linearizable-downgraded"}},
	{"no-reads-back-in-time", []string{"went-back"}},
	{"reads-return-written-values", []string{"bad-read"}},
	{"reads-succeed", []string{"failed-read"}},
	// ReplicaQuorumLoss's own promises (Run.Violate).
	{"no-write-acknowledged-without-quorum", []string{"acked-without-quorum"}},
	{"writes-fail-cleanly-without-quorum", []string{"no-write-failed", "write-error-unclear"}},
	{"replica-serves-without-quorum", []string{"replica-silent"}},
}

// report logs a scenario's figures and check counts, keeps the result for
// $COFFER_CHAOS_OUT, and runs one subtest per check group, failing on its
// violations.
func report(t *testing.T, res *Result) {
	t.Helper()
	results.mu.Lock()
	results.list = append(results.list, *res)
	results.mu.Unlock()
	c := res.Check
	t.Logf("%s/%s: %d ops in %.1fs: %d writes (%d acknowledged, %d failed, %d of them took effect), %d reads (%d fresh, %d stale, %d cached, %d failed; linearizable: %d succeeded, %d failed); porcupine %s\n%s",
		res.Driver, res.Scenario, c.Ops, res.DurationMs/1000, c.Writes, c.AckedWrites, c.FailedWrites, c.AmbiguousWrites,
		c.Reads, c.FreshReads, c.StaleReads, c.CachedReads, c.FailedReads, c.LinearizableReads, c.FailedLinearizableReads,
		c.LinearizabilityTime.Round(time.Millisecond), Table(res.Faults))
	for _, w := range c.FailedWriteSamples {
		t.Logf("failed write: %s", w)
	}
	for _, g := range checkGroups {
		t.Run(g.name, func(t *testing.T) {
			for _, v := range c.Violations {
				if slices.Contains(g.checks, v.Check) {
					t.Errorf("%s: %s", v.Check, v.Detail)
				}
			}
		})
	}
}

// wantNoFailedWrites fails the subtest no-failed-writes when a write failed
// during a fault: the goal of a graceful leader restart with a retrying
// client.
func wantNoFailedWrites(t *testing.T, res *Result) {
	t.Helper()
	t.Run("no-failed-writes", func(t *testing.T) {
		for _, f := range res.Faults {
			if f.FailedWrites > 0 {
				t.Errorf("%s: %d writes failed; the goal is 0 with a retrying client", f.Fault, f.FailedWrites)
			}
		}
	})
}

// wantNoFailedCalls fails the subtest no-failed-calls when a write or a
// read (linearizable ones included) failed during a fault of one of kinds:
// a graceful restart must cost a retrying client nothing.
func wantNoFailedCalls(t *testing.T, res *Result, kinds ...string) {
	t.Helper()
	t.Run("no-failed-calls", func(t *testing.T) {
		n := 0
		for _, f := range res.Faults {
			if !slices.Contains(kinds, f.Kind) {
				continue
			}
			n++
			if f.FailedWrites > 0 || f.FailedReads > 0 || f.FailedLinearizableReads > 0 {
				t.Errorf("%s: %d writes, %d reads and %d linearizable reads failed; the goal is 0 with a retrying client",
					f.Fault, f.FailedWrites, f.FailedReads, f.FailedLinearizableReads)
			}
		}
		if n == 0 {
			t.Errorf("no fault of kinds %v in the run", kinds)
		}
	})
}

// wantReplicaReads fails the subtest replica-reads unless the read
// replica's clients read during the run's faults, and none of those reads
// failed.
func wantReplicaReads(t *testing.T, res *Result) {
	t.Helper()
	t.Run("replica-reads", func(t *testing.T) {
		for _, f := range res.Faults {
			if f.ReplicaReads == 0 || f.FailedReplicaReads > 0 {
				t.Errorf("%s: %d reads through the read replica, %d failed; want some, none failed", f.Fault, f.ReplicaReads, f.FailedReplicaReads)
			}
		}
	})
}

// wantPicture fails the test unless the run's picture, when it asked for
// one, is a PNG of the default size.
func wantPicture(t *testing.T, res *Result) {
	t.Helper()
	if res.Picture == "" {
		return
	}
	f, err := os.Open(res.Picture)
	if err != nil {
		t.Fatalf("the picture: %v", err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatalf("the picture %s is no PNG: %v", res.Picture, err)
	}
	if cfg.Width != timeline.DefaultWidth || cfg.Height != timeline.DefaultHeight {
		t.Errorf("the picture %s is %dx%d, want %dx%d", res.Picture, cfg.Width, cfg.Height, timeline.DefaultWidth, timeline.DefaultHeight)
	}
	t.Logf("picture: %s", res.Picture)
}

// visualizeDir is where porcupine's views of non-linearizable keys go:
// $COFFER_CHAOS_VISUALIZE, or nowhere.
func visualizeDir() string { return os.Getenv("COFFER_CHAOS_VISUALIZE") }
