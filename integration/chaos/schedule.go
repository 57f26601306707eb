package chaos

import (
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// A Step is one fault of a seeded schedule: what is done, to which role
// (the leader or a follower, chosen when the step runs, since who leads is
// the cluster's doing), and for how long it lasts when it is held.
type Step struct {
	// Fault is one of the ScheduleFaults.
	Fault string
	// Role is "leader" or "follower"; Follower picks which follower (an
	// index into the followers, modulo their number).
	Role     string
	Follower int
	// Hold is how long a pause or partition lasts; 0 for the others.
	Hold time.Duration
}

func (s Step) String() string {
	who := s.Role
	if s.Role == "follower" {
		who = fmt.Sprintf("follower #%d", s.Follower)
	}
	if s.Hold > 0 {
		return fmt.Sprintf("%s %s for %s", s.Fault, who, s.Hold)
	}
	return s.Fault + " " + who
}

// ScheduleFaults are the faults a schedule draws from, each with the
// driver's operations: kill (and start), a graceful stop (and start), a
// pause (and resume), a partition (and heal).
var ScheduleFaults = []string{"kill", "stop", "pause", "partition"}

// NewSchedule draws n steps from seed: the same seed gives the same steps,
// on every machine and run. Each run of len(ScheduleFaults) steps has
// every fault once, in a drawn order, so that a long schedule has as many
// of each. hold is the driver's Hold; a step's hold is drawn between half
// and twice it.
func NewSchedule(seed uint64, n int, hold time.Duration) []Step {
	rng := mrand.New(mrand.NewPCG(seed, 0x636f66666572)) // "coffer"
	steps := make([]Step, n)
	var order []int
	for i := range steps {
		if len(order) == 0 {
			order = rng.Perm(len(ScheduleFaults))
		}
		fault := ScheduleFaults[order[0]]
		order = order[1:]
		s := Step{Fault: fault, Role: "follower", Follower: rng.IntN(8)}
		if rng.IntN(2) == 0 {
			s.Role, s.Follower = "leader", 0
		}
		if s.Fault == "pause" || s.Fault == "partition" {
			s.Hold = (hold/2 + time.Duration(rng.Int64N(int64(hold)*3/2))).Round(time.Millisecond)
		}
		steps[i] = s
	}
	return steps
}

// ParseSeed reads a schedule's seed: a number, or "random" for one drawn
// now (logged, so the run can be replayed). Empty gives def.
func ParseSeed(v string, def uint64) (uint64, error) {
	switch strings.TrimSpace(v) {
	case "":
		return def, nil
	case "random":
		return mrand.Uint64() >> 1, nil
	}
	seed, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("COFFER_CHAOS_SEED=%q: want a number, or random", v)
	}
	return seed, nil
}

// Schedule runs the n steps NewSchedule draws from seed, one after the
// other, each healed and the cluster recovered (healthy, taking writes)
// before the next. An error names the seed and the step, so that
// COFFER_CHAOS_SEED replays the same faults in the same order.
func Schedule(seed uint64, n int) Scenario {
	return Scenario{Name: "schedule", Seed: seed, Body: func(r *Run) error {
		steps := NewSchedule(seed, n, r.C.D.Hold())
		var list []string
		for i, s := range steps {
			list = append(list, fmt.Sprintf("%d. %s", i+1, s))
		}
		r.Logf("schedule of seed %d (replay: COFFER_CHAOS_SEED=%d): %s", seed, seed, strings.Join(list, "; "))
		for i, s := range steps {
			if err := runStep(r, s, i+1, len(steps)); err != nil {
				return fmt.Errorf("step %d of %d (%s) of the schedule of seed %d (replay: COFFER_CHAOS_SEED=%d): %w", i+1, len(steps), s, seed, seed, err)
			}
		}
		return nil
	}}
}

// runStep injects one step's fault, removes it, and waits for recovery.
func runStep(r *Run, s Step, i, n int) error {
	leader, err := r.Leader()
	if err != nil {
		return err
	}
	id := leader
	if s.Role == "follower" {
		fs := r.C.Followers(leader)
		id = fs[s.Follower%len(fs)]
	}
	d := r.C.D
	f := r.Begin("schedule-"+s.Fault+"-"+s.Role, []string{id}, "%s (%s, step %d/%d)", s, id, i, n)
	ctx, cancel := r.waitCtx()
	defer cancel()
	switch s.Fault {
	case "kill", "stop":
		down := d.Kill
		if s.Fault == "stop" {
			down = d.Stop
		}
		if err := down(ctx, id); err != nil {
			return err
		}
		if s.Role == "leader" {
			if err := r.WaitTakeover(id); err != nil {
				return err
			}
		}
		if err := r.StartNodes(id); err != nil {
			return err
		}
		if err := r.C.WaitCaughtUp(ctx, id); err != nil {
			return err
		}
	case "pause", "partition":
		inject, remove := d.Pause, d.Resume
		if s.Fault == "partition" {
			inject, remove = d.Partition, d.Heal
		}
		if err := inject(ctx, id); err != nil {
			return err
		}
		if err := r.Hold(s.Hold); err != nil {
			return err
		}
		if err := remove(ctx, id); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown fault %q", s.Fault)
	}
	r.Healed(f)
	return r.Recover(f)
}
