package chaos

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// The in-process scenarios: three nodes in this process with the fast test
// timings (150ms heartbeat and election timeouts). Each builds its own
// cluster. Their figures are logged; the tests fail on any broken promise
// of the package doc, and the graceful restart on any failed write.

// TestInProcessLeaderKill runs with TLS (API, Raft and peer calls), as the
// docker suite does; the other scenarios run plaintext.
func TestInProcessLeaderKill(t *testing.T) {
	runInProcessWith(t, LeaderKill(3), InProcessOptions{TLS: true})
}

func TestInProcessLeaderPause(t *testing.T) { runInProcess(t, LeaderPause(time.Second, 1)) }

func TestInProcessLeaderPartition(t *testing.T) { runInProcess(t, LeaderPartition()) }

func TestInProcessFollowerRestart(t *testing.T) { runInProcess(t, FollowerRestart()) }

func TestInProcessQuorumLoss(t *testing.T) { runInProcess(t, QuorumLoss()) }

func TestInProcessGracefulLeaderRestart(t *testing.T) {
	res := runInProcess(t, GracefulLeaderRestart())
	if res != nil {
		wantNoFailedWrites(t, res)
	}
}

// TestInProcessRollingRestart restarts the three nodes one after the
// other, followers first: Server.Shutdown, then Server.Kill.
func TestInProcessRollingRestart(t *testing.T) {
	if res := runInProcess(t, RollingRestart()); res != nil {
		wantNoFailedCalls(t, res, KindRollingGracefulFollower, KindRollingGracefulLeader)
	}
}

// TestInProcessSchedule runs a seeded schedule of eight faults (kill,
// graceful stop, pause, partition; of the leader or a follower; drawn by
// NewSchedule): $COFFER_CHAOS_SEED, or "random", replays or draws one; by
// default the seed is fixed, so that make test runs the same faults every
// time. A failure names the seed.
func TestInProcessSchedule(t *testing.T) {
	seed, err := ParseSeed(os.Getenv("COFFER_CHAOS_SEED"), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("schedule seed %d (replay: COFFER_CHAOS_SEED=%d go test -race -run TestInProcessSchedule ./integration/chaos/)", seed, seed)
	if res := runInProcess(t, Schedule(seed, 8)); res != nil && res.Seed != seed {
		t.Errorf("the run's result records seed %d, want %d: a passing schedule could not be replayed from its figures", res.Seed, seed)
	}
}

func TestInProcessFiveLoseTwo(t *testing.T) { runInProcess(t, FiveLoseTwo()) }

// TestInProcessReplicaQuorumLoss: quorum lost for QuorumLossOutage,
// while the read replica's clients keep reading.
func TestInProcessReplicaQuorumLoss(t *testing.T) {
	if res := runInProcess(t, ReplicaQuorumLoss(QuorumLossOutage)); res != nil {
		wantReplicaReads(t, res)
	}
}

func runInProcess(t *testing.T, s Scenario) *Result {
	t.Helper()
	return runInProcessWith(t, s, InProcessOptions{})
}

// runInProcessWith runs s on an in-process cluster with opts (its
// LogLevel from $COFFER_CHAOS_LOG).
func runInProcessWith(t *testing.T, s Scenario, opts InProcessOptions) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts.LogLevel = hclog.LevelFromString(os.Getenv("COFFER_CHAOS_LOG"))
	opts.Nodes, opts.ReadReplica = s.voters(), s.ReadReplica
	d, err := NewInProcess(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCluster(ctx, d, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	// The picture goes next to the figures, or is drawn and checked only.
	picture := PicturePath(d.Name(), s.Name)
	if picture == "" {
		picture = filepath.Join(t.TempDir(), s.Name+".png")
	}
	res, err := Execute(ctx, c, s, Options{
		Load:    LoadConfig{Writers: 3, Readers: 3, Interval: 10 * time.Millisecond, LinearizableEvery: 3},
		Wait:    30 * time.Second,
		Check:   CheckOptions{VisualizeDir: visualizeDir()},
		Logf:    t.Logf,
		Picture: picture,
	})
	if err != nil {
		t.Fatal(err)
	}
	wantPicture(t, res)
	report(t, res)
	return res
}
