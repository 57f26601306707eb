package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"coffer/api"
)

// Scenario is a sequence of faults run under load.
type Scenario struct {
	// Name names the scenario in figures and key paths.
	Name string
	// Cache gives the readers' clients a cache (for the outage of every
	// node).
	Cache bool
	// Voters is the number of voters the scenario needs (default 3);
	// ReadReplica says it needs a read replica too, whose readers join
	// the load (LoadConfig.ReplicaEndpoints). The runners build the
	// cluster to match; Execute refuses a cluster that does not.
	Voters      int
	ReadReplica bool
	// Seed is the seed of a drawn schedule (Schedule), recorded in the
	// run's Result so that a passing run can be replayed too.
	Seed uint64
	// Body injects the faults. It returns when the cluster is healthy
	// again after the last one.
	Body func(r *Run) error
}

// voters is the number of voters s needs.
func (s Scenario) voters() int {
	if s.Voters == 0 {
		return 3
	}
	return s.Voters
}

// Options tune a scenario run. The zero value of each field means its
// default.
type Options struct {
	// Load shapes the workload; Endpoints, Token, Prefix and Cache are
	// filled in by Execute.
	Load LoadConfig
	// Wait bounds each wait of the run: for a leader, a healthy cluster,
	// writes after a fault. Default 60s.
	Wait time.Duration
	// Warmup is the number of writes acknowledged before the first fault
	// and after each recovery. Default 20.
	Warmup int
	// Check tunes the checks.
	Check CheckOptions
	// Logf receives progress lines (t.Logf in tests).
	Logf func(format string, args ...any)
	// Picture, when set, is the file the run's timeline goes to, as a
	// PNG (see Picture).
	Picture string
}

// Run is a scenario in progress: the cluster, the load, and the faults
// injected so far.
type Run struct {
	Ctx  context.Context
	C    *Cluster
	Load *Load
	opts Options

	mu         sync.Mutex
	faults     []*Fault
	violations []Violation
}

// Violate records a promise of the scenario itself that the run broke
// (check names it, as Violation.Check); the run goes on, and the
// violation joins the history checks' in the Result.
func (r *Run) Violate(check, format string, args ...any) {
	v := Violation{Check: check, Detail: fmt.Sprintf(format, args...)}
	r.mu.Lock()
	r.violations = append(r.violations, v)
	r.mu.Unlock()
	r.Logf("violation: %s: %s", v.Check, v.Detail)
}

// Logf logs a progress line.
func (r *Run) Logf(format string, args ...any) { r.opts.Logf(format, args...) }

// waitCtx returns a context bounded by the run's Wait.
func (r *Run) waitCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Ctx, r.opts.Wait)
}

// Begin records a fault that starts now; inject it right after.
func (r *Run) Begin(kind string, nodes []string, format string, args ...any) *Fault {
	f := &Fault{Kind: kind, Name: fmt.Sprintf(format, args...), Nodes: nodes, Start: time.Now()}
	r.mu.Lock()
	r.faults = append(r.faults, f)
	r.mu.Unlock()
	r.Logf("%s fault: %s", f.Start.Format("15:04:05.000"), f.Name)
	return f
}

// Healed records that faults fs were removed now.
func (r *Run) Healed(fs ...*Fault) {
	now := time.Now()
	for _, f := range fs {
		f.Healed = now
		r.Logf("%s healed: %s", now.Format("15:04:05.000"), f.Name)
	}
}

// Leader waits for the agreed leader.
func (r *Run) Leader() (string, error) {
	ctx, cancel := r.waitCtx()
	defer cancel()
	return r.C.Leader(ctx)
}

// WaitTakeover waits until the nodes still up agree on a leader other
// than old, then for a write acknowledged after that: the cluster takes
// writes again without old.
func (r *Run) WaitTakeover(old string) error {
	ctx, cancel := r.waitCtx()
	defer cancel()
	err := poll(ctx, "a new leader", func() error {
		leader, err := r.C.agreedLeader(ctx)
		if err == nil && leader == old {
			err = fmt.Errorf("%s still leads", old)
		}
		return err
	})
	if err != nil {
		return err
	}
	return r.Load.WaitAcked(ctx, 1, time.Now())
}

// WaitLinearizableRead waits until a linearizable read that began after
// t has succeeded: the cluster answers them again. It returns at once when
// the load makes none.
func (r *Run) WaitLinearizableRead(t time.Time) error {
	if !r.Load.linearizableReads() {
		return nil
	}
	ctx, cancel := r.waitCtx()
	defer cancel()
	return r.Load.WaitOps(ctx, 1, "linearizable reads begun since "+t.Format("15:04:05.000")+" succeeded", func(op Op) bool {
		return op.Linearizable() && op.OK() && op.Start.After(t)
	})
}

// StartNodes starts the nodes ids (in parallel), checks that each comes
// back sealed, and unseals them.
func (r *Run) StartNodes(ids ...string) error {
	return r.parallel(ids, func(ctx context.Context, id string) error {
		if err := r.C.D.Start(ctx, id); err != nil {
			return err
		}
		if err := r.C.WantSealed(ctx, id); err != nil {
			return err
		}
		return r.C.Unseal(ctx, id)
	})
}

// parallel runs fn for every id at once, bounded by Wait.
func (r *Run) parallel(ids []string, fn func(ctx context.Context, id string) error) error {
	ctx, cancel := r.waitCtx()
	defer cancel()
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(ctx, id)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Hold lets a fault last d. It is the fault's duration, not a wait for
// something to happen.
func (r *Run) Hold(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.Ctx.Done():
		return r.Ctx.Err()
	case <-t.C:
		return nil
	}
}

// Recover waits until the cluster is healthy and has acknowledged Warmup
// more writes, then closes the windows of faults fs.
func (r *Run) Recover(fs ...*Fault) error {
	ctx, cancel := r.waitCtx()
	defer cancel()
	if err := r.C.WaitHealthy(ctx); err != nil {
		return err
	}
	if err := r.Load.WaitAcked(ctx, r.opts.Warmup, time.Now()); err != nil {
		return err
	}
	now := time.Now()
	for _, f := range fs {
		f.End = now
	}
	r.Logf("%s recovered: healthy, taking writes", now.Format("15:04:05.000"))
	return nil
}

// Execute runs scenario s on cluster c: it starts the load, waits for
// Warmup writes, runs the body, stops the load, reads the final state and
// checks the history. The error reports a run that could not complete;
// broken promises are in the Result's Check.Violations.
func Execute(ctx context.Context, c *Cluster, s Scenario, opts Options) (*Result, error) {
	if opts.Wait == 0 {
		opts.Wait = 60 * time.Second
	}
	if opts.Warmup == 0 {
		opts.Warmup = 20
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if want, got := s.voters(), len(c.D.Nodes()); got != want {
		return nil, fmt.Errorf("chaos: %s needs %d voters, the cluster has %d", s.Name, want, got)
	}
	if s.ReadReplica && len(c.D.Replicas()) == 0 {
		return nil, fmt.Errorf("chaos: %s needs a read replica, the cluster has none", s.Name)
	}
	lc := opts.Load
	lc.Endpoints, lc.Token, lc.TLS = c.Endpoints(), c.Token, c.D.ClientTLS()
	if s.ReadReplica {
		lc.ReplicaEndpoints = c.ReplicaEndpoints()
	}
	lc.Prefix = "secret/chaos/" + s.Name
	if s.Cache {
		// Short-lived entries, so that most reads still reach the cluster
		// (and are checked), with a budget that outlasts the outage.
		lc.Cache = &api.CacheConfig{TTL: 300 * time.Millisecond, MaxStale: 5 * time.Minute}
	}
	begin := time.Now()
	load, err := StartLoad(ctx, lc)
	if err != nil {
		return nil, err
	}
	defer load.Stop()
	r := &Run{Ctx: ctx, C: c, Load: load, opts: opts}
	wctx, cancel := r.waitCtx()
	err = load.WaitAcked(wctx, opts.Warmup, begin)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("chaos: warm-up: %w", err)
	}
	if err := s.Body(r); err != nil {
		return nil, fmt.Errorf("chaos: %s: %w", s.Name, err)
	}
	load.Stop()
	ops := load.History().Ops()
	final, err := ReadFinal(ctx, api.Config{Endpoints: c.Endpoints(), Token: c.Token, TLS: c.D.ClientTLS()}, load.Keys())
	if err != nil {
		return nil, err
	}
	res := &Result{Scenario: s.Name, Seed: s.Seed, Driver: c.D.Name(), TLS: c.D.ClientTLS() != nil, Check: Check(ops, final, opts.Check)}
	res.Check.Violations = append(res.Check.Violations, r.violations...)
	var faults []Fault
	for _, f := range r.faults {
		fig := Measure(ops, *f)
		fig.Scenario, fig.Driver = s.Name, c.D.Name()
		res.Faults = append(res.Faults, fig)
		faults = append(faults, *f)
	}
	if opts.Picture != "" {
		if err := Picture(res.Driver, s.Name, ops, faults, res.Faults).WriteFile(opts.Picture, 0, 0); err != nil {
			return nil, fmt.Errorf("chaos: %s: the picture: %w", s.Name, err)
		}
		res.Picture = opts.Picture
	}
	res.DurationMs = ms(time.Since(begin))
	return res, nil
}

// The scenarios. Each leaves the cluster healthy, every node up and
// unsealed.

// LeaderKill kills the leader n times in a row; each time it waits for
// the new leader's first write and a linearizable read begun after the
// kill, then starts and unseals the old one (crash).
func LeaderKill(n int) Scenario {
	return Scenario{Name: "leader-kill", Body: func(r *Run) error {
		for i := 1; i <= n; i++ {
			leader, err := r.Leader()
			if err != nil {
				return err
			}
			if err := crash(r, "leader-kill", leader, []string{leader}, "kill leader %s (%d/%d)", leader, i, n); err != nil {
				return err
			}
		}
		return nil
	}}
}

// The kinds of the faults of FiveLoseTwo and ReplicaQuorumLoss.
const (
	KindLoseTwo           = "lose-two"
	KindReplicaQuorumLoss = "replica-quorum-loss"
)

// FiveLoseTwo kills the leader and a follower of five voters at the same
// moment: the three left hold a quorum, elect a leader and take writes;
// then the two are started, unsealed and caught up (crash).
func FiveLoseTwo() Scenario {
	return Scenario{Name: "five-lose-two", Voters: 5, Body: func(r *Run) error {
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		follower := r.C.Followers(leader)[0]
		return crash(r, KindLoseTwo, leader, []string{leader, follower}, "kill leader %s and follower %s at once", leader, follower)
	}}
}

// crash kills nodes, leader among them, at once (a fault of kind); waits
// until the nodes left agree on another leader that acknowledges a write,
// and for a linearizable read begun after the kill; starts and unseals
// the nodes, which come back sealed; waits for a healthy cluster taking
// writes (the fault's window ends there), and until each of the nodes has
// applied what the leader had.
func crash(r *Run, kind, leader string, nodes []string, format string, args ...any) error {
	f := r.Begin(kind, nodes, format, args...)
	if err := r.parallel(nodes, r.C.D.Kill); err != nil {
		return err
	}
	if err := r.WaitTakeover(leader); err != nil {
		return err
	}
	if err := r.WaitLinearizableRead(f.Start); err != nil {
		return err
	}
	if err := r.StartNodes(nodes...); err != nil {
		return err
	}
	r.Healed(f)
	if err := r.Recover(f); err != nil {
		return err
	}
	return r.parallel(nodes, r.C.WaitCaughtUp)
}

// LeaderPause freezes the leader n times, for hold each time (docker
// pause; the in-process driver cuts its network instead), then lets it run
// on. Each pause is a fault of kind PauseKind(hold). While the old leader
// is still frozen the others must elect a new leader and acknowledge a
// write that began after the pause: the clients' writes fail over to it
// (the api client's leader check) instead of waiting out their attempt
// timeout on the frozen node. The run fails when no such write is
// acknowledged before the pause ends.
func LeaderPause(hold time.Duration, n int) Scenario {
	return Scenario{Name: PauseKind(hold), Body: func(r *Run) error {
		for i := 1; i <= n; i++ {
			if err := pauseLeader(r, hold, i, n); err != nil {
				return err
			}
		}
		return nil
	}}
}

// LeaderPauses runs LeaderPause(hold, n) for each hold in turn, on one
// cluster.
func LeaderPauses(n int, holds ...time.Duration) Scenario {
	return Scenario{Name: "leader-pause", Body: func(r *Run) error {
		for _, hold := range holds {
			if err := LeaderPause(hold, n).Body(r); err != nil {
				return err
			}
		}
		return nil
	}}
}

// PauseKind is the kind of the faults of a leader pause of hold:
// "leader-pause-2s".
func PauseKind(hold time.Duration) string { return "leader-pause-" + hold.String() }

// pauseLeader is the i-th of n pauses of the leader.
func pauseLeader(r *Run, hold time.Duration, i, n int) error {
	leader, err := r.Leader()
	if err != nil {
		return err
	}
	f := r.Begin(PauseKind(hold), []string{leader}, "pause leader %s for %s (%d/%d)", leader, hold, i, n)
	if err := r.C.D.Pause(r.Ctx, leader); err != nil {
		return err
	}
	// The leader is frozen once the pause command returned: a write begun
	// after that and acknowledged was taken by its successor.
	paused := time.Now()
	ctx, cancel := context.WithDeadline(r.Ctx, f.Start.Add(hold))
	err = r.Load.WaitOps(ctx, 1, "writes begun after the pause acknowledged", func(op Op) bool {
		return op.Kind == OpWrite && op.OK() && op.Start.After(paused)
	})
	cancel()
	if r.Ctx.Err() != nil {
		return r.Ctx.Err()
	}
	back := time.Since(paused)
	if err != nil {
		// Resume it all the same: the cluster must be left healthy.
		if rerr := r.C.D.Resume(r.Ctx, leader); rerr != nil {
			return errors.Join(err, rerr)
		}
		return fmt.Errorf("leader %s paused for %s: no write begun after the pause was acknowledged while it lasted: %w", leader, hold, err)
	}
	r.Logf("leader %s paused (in %s): a write begun after that was acknowledged %s later", leader, paused.Sub(f.Start).Round(time.Millisecond), back.Round(time.Millisecond))
	if err := r.Hold(time.Until(f.Start.Add(hold))); err != nil {
		return err
	}
	if err := r.C.D.Resume(r.Ctx, leader); err != nil {
		return err
	}
	r.Healed(f)
	if err := r.Recover(f); err != nil {
		return err
	}
	after, err := r.Leader()
	r.Logf("leader before the pause: %s, after: %s", leader, after)
	return err
}

// LeaderPartition cuts the leader off from its peers for the driver's
// Hold, then heals the partition. Clients still reach it.
func LeaderPartition() Scenario {
	return Scenario{Name: "leader-partition", Body: func(r *Run) error {
		return holdFault(r, "leader-partition", "partition", r.C.D.Partition, r.C.D.Heal)
	}}
}

func holdFault(r *Run, kind, verb string, inject, remove func(context.Context, string) error) error {
	leader, err := r.Leader()
	if err != nil {
		return err
	}
	f := r.Begin(kind, []string{leader}, "%s leader %s for %s", verb, leader, r.C.D.Hold())
	if err := inject(r.Ctx, leader); err != nil {
		return err
	}
	if err := r.Hold(r.C.D.Hold()); err != nil {
		return err
	}
	if err := remove(r.Ctx, leader); err != nil {
		return err
	}
	r.Healed(f)
	if err := r.Recover(f); err != nil {
		return err
	}
	after, err := r.Leader()
	r.Logf("leader before the %s: %s, after: %s", verb, leader, after)
	return err
}

// FollowerRestart restarts a follower gracefully and unseals it (it
// comes back sealed).
func FollowerRestart() Scenario {
	return Scenario{Name: "follower-restart", Body: func(r *Run) error {
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		follower := r.C.Followers(leader)[0]
		f := r.Begin("follower-restart", []string{follower}, "restart follower %s", follower)
		ctx, cancel := r.waitCtx()
		defer cancel()
		if err := r.C.D.Restart(ctx, follower); err != nil {
			return err
		}
		if err := r.C.WantSealed(ctx, follower); err != nil {
			return err
		}
		if err := r.C.Unseal(ctx, follower); err != nil {
			return err
		}
		r.Healed(f)
		return r.Recover(f)
	}}
}

// QuorumLoss kills the leader and a follower (quorum lost: one node up,
// reads fall back to stale), holds, kills the last node too (no node up:
// reads come from the client cache), holds, then starts all three.
func QuorumLoss() Scenario {
	return Scenario{Name: "quorum-loss", Cache: true, Body: func(r *Run) error {
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		followers := r.C.Followers(leader)
		two := []string{leader, followers[0]}
		f := r.Begin("quorum-loss", two, "kill leader %s and follower %s", leader, followers[0])
		if err := r.parallel(two, r.C.D.Kill); err != nil {
			return err
		}
		if err := r.Hold(r.C.D.Hold()); err != nil {
			return err
		}
		all := r.Begin("all-down", followers[1:], "kill the last node %s", followers[1])
		if err := r.C.D.Kill(r.Ctx, followers[1]); err != nil {
			return err
		}
		if err := r.Hold(r.C.D.Hold()); err != nil {
			return err
		}
		if err := r.StartNodes(r.C.D.Nodes()...); err != nil {
			return err
		}
		r.Healed(f, all)
		return r.Recover(f, all)
	}}
}

// QuorumLossOutage is how long ReplicaQuorumLoss keeps quorum lost:
// longer than a write's retries last without a leader (the client's 5s
// retry budget, the last attempt it starts within it, which the node left
// holds up to 3s waiting for a leader, and the pass in between), so that
// the writes begun early in the outage fail rather than outlast it.
const QuorumLossOutage = 10 * time.Second

// ReplicaQuorumLoss kills the leader and a follower of three voters at
// once, while a read replica and the clients that know only it go on:
// quorum is lost for outage. Then it starts and unseals the two. The run
// breaks the scenario's promises (Run.Violate) when
//
//   - a write begun after both were down was acknowledged before they
//     came back (acked-without-quorum);
//   - no write failed in the outage (no-write-failed: it was too short to
//     show anything), or one failed without a clear Unavailable error
//     (write-error-unclear): those in flight at the kill fail once the
//     client's retries run out;
//   - the replica's clients made no successful read in the outage
//     (replica-silent; a failed read breaks reads-succeed already).
//
// It ends once a replica read has seen the index of a write acknowledged
// after the recovery: the replica caught up.
//
// The other readers have a cache, as in QuorumLoss: a reader that saw the
// last entry the dead leader committed may find the node left without it
// (its follower that acknowledged the entry died too), and that node
// cannot answer it without going back in time (min_index); the cache can.
func ReplicaQuorumLoss(outage time.Duration) Scenario {
	return Scenario{Name: "replica-quorum-loss", ReadReplica: true, Cache: true, Body: func(r *Run) error {
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		two := []string{leader, r.C.Followers(leader)[0]}
		f := r.Begin(KindReplicaQuorumLoss, two, "kill leader %s and follower %s for %s", two[0], two[1], outage)
		if err := r.parallel(two, r.C.D.Kill); err != nil {
			return err
		}
		// From here no write can commit: Kill returns when the signal is
		// sent, this once the two no longer answer.
		if err := r.parallel(two, r.down); err != nil {
			return err
		}
		down := time.Now()
		if err := r.Hold(outage); err != nil {
			return err
		}
		back := time.Now()
		if err := r.StartNodes(two...); err != nil {
			return err
		}
		r.Healed(f)
		if err := r.Recover(f); err != nil {
			return err
		}
		r.checkQuorumLoss(f, down, back)
		return r.waitReplicaCaughtUp(back)
	}}
}

// down waits until node id no longer answers.
func (r *Run) down(ctx context.Context, id string) error {
	return poll(ctx, id+" down", func() error {
		if _, err := r.C.Status(ctx, id); err == nil {
			return fmt.Errorf("%s still answers", id)
		}
		return nil
	})
}

// checkQuorumLoss checks the operations of the outage of fault f, from
// down (both nodes gone) to back (their restart), against
// ReplicaQuorumLoss's promises: no write begun after down was
// acknowledged before back; every write that failed after the kill and
// before back (those in flight at the kill among them) failed
// Unavailable, and one did at least; the replica's clients read.
func (r *Run) checkQuorumLoss(f *Fault, down, back time.Time) {
	var failed, replicaReads int
	var firstAck time.Time // the first write acknowledged after back
	for _, op := range r.Load.History().Ops() {
		if op.Kind == OpWrite && op.OK() && op.End.After(back) && (firstAck.IsZero() || op.End.Before(firstAck)) {
			firstAck = op.End
		}
		switch {
		case op.Kind == OpWrite && op.OK() && !op.Start.Before(down) && op.End.Before(back):
			r.Violate("acked-without-quorum", "%s acknowledged at %s, while quorum was lost (%s to %s)",
				op, op.End.Format("15:04:05.000"), down.Format("15:04:05.000"), back.Format("15:04:05.000"))
		case op.Kind == OpWrite && !op.OK() && op.End.After(f.Start) && op.End.Before(back):
			failed++
			if !strings.HasPrefix(op.Err, codes.Unavailable.String()+": ") {
				r.Violate("write-error-unclear", "%s at %s: a write without quorum fails Unavailable, saying why", op, op.Start.Format("15:04:05.000"))
			}
		case op.Replica && op.OK() && !op.Start.Before(down) && op.Start.Before(back):
			replicaReads++
		}
	}
	r.Logf("while quorum was lost (%s): %d writes failed, %d reads served by the read replica; the first write acknowledged %s after the restart began",
		back.Sub(down).Round(time.Millisecond), failed, replicaReads, firstAck.Sub(back).Round(time.Millisecond))
	if failed == 0 {
		r.Violate("no-write-failed", "no write failed while quorum was lost (%s): the outage is shorter than a write's retries", back.Sub(down).Round(time.Millisecond))
	}
	if replicaReads == 0 {
		r.Violate("replica-silent", "the read replica's clients made no successful read while quorum was lost")
	}
}

// waitReplicaCaughtUp waits until a read through the read replicas has
// seen the index of a write acknowledged after back (the replica applied
// a write made after the recovery).
func (r *Run) waitReplicaCaughtUp(back time.Time) error {
	var index uint64
	for _, op := range r.Load.History().Ops() {
		if op.Kind == OpWrite && op.OK() && op.Start.After(back) {
			index = max(index, op.Index)
		}
	}
	if index == 0 {
		return fmt.Errorf("chaos: no write acknowledged since %s", back.Format("15:04:05.000"))
	}
	ctx, cancel := r.waitCtx()
	defer cancel()
	return r.Load.WaitOps(ctx, 1, fmt.Sprintf("reads through the read replica at index %d or later", index), func(op Op) bool {
		return op.Replica && op.OK() && op.Index >= index
	})
}

// GracefulLeaderRestart stops the leader gracefully (it hands leadership
// over first), starts and unseals it.
func GracefulLeaderRestart() Scenario {
	return Scenario{Name: "graceful-leader-restart", Body: func(r *Run) error {
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		f := r.Begin("graceful-leader-restart", []string{leader}, "stop leader %s gracefully, start it again", leader)
		ctx, cancel := r.waitCtx()
		defer cancel()
		if err := r.C.D.Stop(ctx, leader); err != nil {
			return err
		}
		if err := r.StartNodes(leader); err != nil {
			return err
		}
		r.Healed(f)
		return r.Recover(f)
	}}
}

// The kinds of a rolling restart's faults: how the node was stopped and
// what it was when it went.
const (
	KindRollingGracefulFollower = "rolling-graceful-follower"
	KindRollingGracefulLeader   = "rolling-graceful-leader"
	KindRollingHardFollower     = "rolling-hard-follower"
	KindRollingHardLeader       = "rolling-hard-leader"
)

// RollingRestart restarts every node in turn, as an operator applying a
// new configuration or binary would: the followers first, the leader last.
// The first round stops each node gracefully (Stop: SIGTERM, a leader
// hands leadership over first), the second kills it (Kill: SIGKILL); then
// the node is started, unsealed (it comes back sealed) and caught up (it
// has applied what the leader had applied once it was unsealed), and the
// cluster is healthy and taking writes, before the next node goes.
func RollingRestart() Scenario {
	return Scenario{Name: "rolling-restart", Body: func(r *Run) error {
		graceful := map[string]string{"follower": KindRollingGracefulFollower, "leader": KindRollingGracefulLeader}
		if err := rollingRound(r, "graceful restart", graceful, r.C.D.Stop, r.C.D.Start); err != nil {
			return err
		}
		hard := map[string]string{"follower": KindRollingHardFollower, "leader": KindRollingHardLeader}
		return rollingRound(r, "hard restart", hard, r.C.D.Kill, r.C.D.Start)
	}}
}

// rollingRound takes every node down and up again once, one after the
// other, each follower before the leader: stop, then start (which may
// start another build, for an upgrade), unseal and catch up. kinds names
// the faults by the role of the node ("follower", "leader"); how names
// the step in the log.
func rollingRound(r *Run, how string, kinds map[string]string, stop, start func(context.Context, string) error) error {
	done := map[string]bool{}
	for step := 1; step <= len(r.C.D.Nodes()); step++ {
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		// A follower not yet restarted if one is left, else the leader.
		// Leadership stays put while a follower restarts, so the leader
		// goes last; should it have moved, the node left goes as what it
		// is.
		id, role := "", "leader"
		for _, f := range r.C.Followers(leader) {
			if !done[f] {
				id, role = f, "follower"
				break
			}
		}
		if id == "" {
			id = leader
		}
		done[id] = true
		f := r.Begin(kinds[role], []string{id}, "%s of %s %s (%d/%d)", how, role, id, step, len(r.C.D.Nodes()))
		ctx, cancel := r.waitCtx()
		err = stop(ctx, id)
		if err == nil {
			err = start(ctx, id)
		}
		if err == nil {
			err = r.C.WantSealed(ctx, id)
		}
		if err == nil {
			err = r.C.Unseal(ctx, id)
		}
		if err == nil {
			err = r.C.WaitCaughtUp(ctx, id)
		}
		cancel()
		if err != nil {
			return err
		}
		r.Healed(f)
		if err := r.Recover(f); err != nil {
			return err
		}
	}
	return nil
}

// HostInfo describes this machine for the figures; loadStart is the load
// average when the run began.
func HostInfo(cpus int, goVersion, loadStart string) Host {
	return Host{CPUs: cpus, LoadAvgStart: loadStart, LoadAvgEnd: LoadAvg(), GoVer: goVersion}
}

// OutPath is the file the figures go to ($COFFER_CHAOS_OUT), or "".
func OutPath() string { return os.Getenv("COFFER_CHAOS_OUT") }
