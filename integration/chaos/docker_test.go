package chaos

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// The docker scenarios: three coffer:dev containers with the production
// Raft timings (300ms heartbeat, election and lease timeouts), driven with the
// docker CLI. They run only when COFFER_CHAOS=1 (make chaos sets it after
// building the image) and a Docker engine answers. Each test builds its own
// cluster and removes it, containers, network and volumes, even when it
// fails.

func TestDockerLeaderKill(t *testing.T) { runDocker(t, LeaderKill(10)) }

func TestDockerLeaderPause(t *testing.T) { runDocker(t, LeaderPause()) }

func TestDockerLeaderPartition(t *testing.T) { runDocker(t, LeaderPartition()) }

func TestDockerFollowerRestart(t *testing.T) { runDocker(t, FollowerRestart()) }

func TestDockerQuorumLoss(t *testing.T) { runDocker(t, QuorumLoss()) }

func TestDockerGracefulLeaderRestart(t *testing.T) {
	if res := runDocker(t, GracefulLeaderRestart()); res != nil {
		wantNoFailedWrites(t, res)
	}
}

// TestDockerSummary logs the figures of the docker scenarios that ran in
// this binary, next to the failover goals of issue 5.
func TestDockerSummary(t *testing.T) {
	var figs []Figures
	results.mu.Lock()
	for _, r := range results.list {
		if r.Driver == "docker" {
			figs = append(figs, r.Faults...)
		}
	}
	results.mu.Unlock()
	if len(figs) == 0 {
		t.Skip("no docker scenario ran")
	}
	t.Logf("docker figures, every fault:\n%s", Table(figs))
	t.Logf("docker figures, by fault:\n%s", SummaryTable(Summarize(figs)))
	for _, s := range Summarize(figs) {
		switch s.Kind {
		case "leader-kill":
			t.Logf("goal leader kill → first write: median < 1000ms (%s: %.0fms), worst < 2000ms (%s: %.0fms); failed reads 0 (%s: %d)",
				verdict(s.MedianWriteUnavailableMs < 1000), s.MedianWriteUnavailableMs,
				verdict(s.WorstWriteUnavailableMs < 2000), s.WorstWriteUnavailableMs,
				verdict(s.FailedReads == 0), s.FailedReads)
		case "graceful-leader-restart":
			t.Logf("goal graceful leader restart: 0 failed writes (%s: %d)", verdict(s.FailedWrites == 0), s.FailedWrites)
		}
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// serverArgs are extra server flags from $COFFER_CHAOS_SERVER_ARGS (e.g.
// "-raft-heartbeat-timeout=500ms -raft-election-timeout=500ms" to measure
// other timings); by default the nodes run with the server's defaults,
// which were tuned by this suite (500ms timeouts cost writes 1.0-1.2s at the
// median after a leader kill, over the 1s goal; see docs/CHAOS.md).
func serverArgs() []string {
	return strings.Fields(os.Getenv("COFFER_CHAOS_SERVER_ARGS"))
}

func runDocker(t *testing.T, s Scenario) *Result {
	t.Helper()
	if os.Getenv("COFFER_CHAOS") != "1" {
		t.Skip("the docker chaos suite runs with COFFER_CHAOS=1 and the coffer:dev image: use `make chaos`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := DockerAvailable(ctx); err != nil {
		t.Skipf("no Docker engine answers, skipping the docker chaos suite: %v", err)
	}
	d, err := NewDocker(ctx, DockerOptions{Logf: t.Logf, Args: serverArgs()})
	t.Cleanup(func() {
		if t.Failed() {
			lctx, lcancel := context.WithTimeout(context.Background(), 30*time.Second)
			t.Log(d.Logs(lctx, 200))
			lcancel()
		}
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCluster(ctx, d, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	res, err := Execute(ctx, c, s, Options{
		Load:  LoadConfig{Writers: 3, Readers: 3, Interval: 10 * time.Millisecond, LinearizableEvery: 3},
		Wait:  60 * time.Second,
		Check: CheckOptions{VisualizeDir: visualizeDir()},
		Logf:  t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	report(t, res)
	return res
}
