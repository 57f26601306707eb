package chaos

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// The checker on hand-made histories: each broken promise is found, and a
// correct history passes.

// at builds times in milliseconds from a fixed origin.
var origin = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return origin.Add(time.Duration(ms) * time.Millisecond) }

func write(client int, key, value string, version uint64, start, end int) Op {
	return Op{Client: client, Kind: OpWrite, Key: key, Value: value, Version: version, Start: at(start), End: at(end)}
}

func failedWrite(client int, key, value string, start, end int) Op {
	op := write(client, key, value, 0, start, end)
	op.Err = "Unavailable: no leader"
	return op
}

func read(client int, key, value string, version uint64, start, end int) Op {
	return Op{Client: client, Kind: OpRead, Key: key, Value: value, Version: version, Consistency: "default", Start: at(start), End: at(end)}
}

func staleRead(client int, key, value string, version uint64, start, end int) Op {
	op := read(client, key, value, version, start, end)
	op.Consistency, op.Stale = "stale", true
	return op
}

func linRead(client int, key, value string, version uint64, start, end int) Op {
	op := read(client, key, value, version, start, end)
	op.Consistency = ConsistencyLinearizable
	return op
}

func failedLinRead(client int, key string, start, end int) Op {
	op := linRead(client, key, "", 0, start, end)
	op.Err = "Unavailable: no leader"
	return op
}

// checks returns the names of the violated checks.
func checks(r Report) string {
	var names []string
	for _, v := range r.Violations {
		names = append(names, v.Check)
	}
	return strings.Join(names, ",")
}

var k = "secret/t/k"

func TestCheckCorrectHistory(t *testing.T) {
	ops := []Op{
		write(0, k, "init", 1, 0, 1),
		write(1, k, "a", 2, 10, 20),
		read(2, k, "init", 1, 11, 12), // concurrent with the write: either value
		read(2, k, "a", 2, 21, 22),
		// A failed write that took effect, seen by a later read.
		failedWrite(1, k, "b", 30, 40),
		read(3, k, "b", 3, 50, 51),
		// A failed write that never happened.
		failedWrite(1, k, "c", 60, 70),
		// A stale read may be old, but not older than what its client saw.
		staleRead(4, k, "a", 2, 80, 81),
		staleRead(4, k, "b", 3, 82, 83),
		// A linearizable read may fail (no leader could confirm it).
		linRead(5, k, "b", 3, 84, 85),
		failedLinRead(5, k, 86, 87),
	}
	final := Final{k: {{1, "init"}, {2, "a"}, {3, "b"}}}
	r := Check(ops, final, CheckOptions{})
	if len(r.Violations) > 0 {
		t.Fatalf("violations on a correct history: %+v", r.Violations)
	}
	if r.AckedWrites != 2 || r.FailedWrites != 2 || r.AmbiguousWrites != 1 || r.FreshReads != 4 || r.StaleReads != 2 {
		t.Errorf("counts: %+v", r)
	}
	if r.Reads != 7 || r.FailedReads != 1 || r.LinearizableReads != 1 || r.FailedLinearizableReads != 1 {
		t.Errorf("read counts: %+v", r)
	}
}

func TestCheckFindsBrokenPromises(t *testing.T) {
	base := []Op{write(0, k, "init", 1, 0, 1), write(1, k, "a", 2, 10, 20)}
	cases := []struct {
		name  string
		ops   []Op
		final Final
		want  string
	}{{
		name:  "an acknowledged write is missing",
		ops:   base,
		final: Final{k: {{1, "init"}}},
		want:  "lost-write",
	}, {
		name:  "an acknowledged write is at another version",
		ops:   base,
		final: Final{k: {{1, "init"}, {2, "x"}, {3, "a"}}},
		want:  "phantom,wrong-version",
	}, {
		name:  "a retried write made two versions",
		ops:   base,
		final: Final{k: {{1, "init"}, {2, "a"}, {3, "a"}}},
		want:  "duplicate",
	}, {
		name:  "a fresh read returns the old value after the write was acknowledged",
		ops:   append(base, read(2, k, "init", 1, 30, 31)),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "not-linearizable",
	}, {
		name: "two clients see the writes in opposite orders",
		ops: append(base,
			write(1, k, "b", 3, 30, 100),
			read(2, k, "b", 3, 40, 41),
			read(3, k, "a", 2, 50, 51), // after another client saw b
		),
		final: Final{k: {{1, "init"}, {2, "a"}, {3, "b"}}},
		want:  "not-linearizable",
	}, {
		name:  "a stale read goes back in time for its client",
		ops:   append(base, read(2, k, "a", 2, 30, 31), staleRead(2, k, "init", 1, 40, 41)),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "went-back",
	}, {
		name:  "a read returns a value at a version that never held it",
		ops:   append(base, staleRead(2, k, "a", 7, 30, 31)),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "bad-read",
	}, {
		// The negative control of the linearizable reads: what a client
		// that answered one from an old state would leave in a history.
		name:  "a linearizable read returns an older value than a write acknowledged before it began",
		ops:   append(base, linRead(2, k, "init", 1, 30, 31)),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "not-linearizable",
	}, {
		// The bug of the stale fallback: the answer was marked stale, and
		// a checker that leaves stale reads out would have passed it.
		name: "a linearizable read is answered by a stale fallback with an older value",
		ops: append(base, func() Op {
			op := linRead(2, k, "init", 1, 30, 31)
			op.Stale, op.Fallback = true, true
			return op
		}()),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "linearizable-downgraded,not-linearizable",
	}, {
		name: "a linearizable read is answered from the client cache",
		ops: append(base, func() Op {
			op := linRead(2, k, "a", 2, 30, 31)
			op.Cached = true
			return op
		}()),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "linearizable-downgraded",
	}, {
		name: "two linearizable reads see the writes in opposite orders",
		ops: append(base,
			write(1, k, "b", 3, 30, 100),
			linRead(2, k, "b", 3, 40, 41),
			linRead(3, k, "a", 2, 50, 51),
		),
		final: Final{k: {{1, "init"}, {2, "a"}, {3, "b"}}},
		want:  "not-linearizable",
	}, {
		name:  "a read failed",
		ops:   append(base, Op{Client: 2, Kind: OpRead, Key: k, Start: at(30), End: at(31), Err: "Unavailable: down"}),
		final: Final{k: {{1, "init"}, {2, "a"}}},
		want:  "failed-read",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Check(c.ops, c.final, CheckOptions{})
			if got := checks(r); got != c.want {
				t.Fatalf("violations %q, want %q: %+v", got, c.want, r.Violations)
			}
		})
	}
}

func TestCheckLinearizabilityDropsWritesThatNeverHappened(t *testing.T) {
	// A failed write whose value is nowhere cannot explain a read of it.
	ops := []Op{
		write(0, k, "init", 1, 0, 1),
		failedWrite(1, k, "ghost", 10, 20),
		read(2, k, "ghost", 2, 30, 31),
	}
	r := Check(ops, Final{k: {{1, "init"}}}, CheckOptions{})
	if got := checks(r); got != "bad-read,not-linearizable" {
		t.Fatalf("violations %q: %+v", got, r.Violations)
	}
}

func TestMeasure(t *testing.T) {
	f := Fault{Kind: "leader-kill", Start: at(100), Healed: at(900), End: at(1000)}
	ops := []Op{
		write(1, k, "a", 2, 50, 99),   // before the fault
		write(1, k, "b", 3, 90, 101),  // acknowledged by the old leader just after it
		write(2, k, "c", 4, 95, 700),  // the new leader's first
		write(1, k, "d", 5, 700, 710), // normal again
		failedWrite(3, k, "e", 150, 600),
		read(4, k, "a", 2, 120, 130),
		read(4, k, "a", 2, 130, 330),
		{Client: 5, Kind: OpRead, Key: k, Start: at(140), End: at(141), Err: "Unavailable"},
		staleRead(6, k, "a", 2, 200, 201),
		read(4, k, "d", 5, 950, 951),  // after Healed: counted, no latency
		failedLinRead(7, k, 150, 160), // counted apart from the failed reads
		linRead(7, k, "c", 4, 700, 701),
	}
	fig := Measure(ops, f)
	if fig.WriteUnavailableMs != 599 || fig.FirstWriteMs != 1 {
		t.Errorf("unavailable %vms (want 599), first write %vms (want 1)", fig.WriteUnavailableMs, fig.FirstWriteMs)
	}
	if fig.Writes != 2 || fig.FailedWrites != 1 || fig.Reads != 7 || fig.FailedReads != 1 || fig.StaleReads != 1 {
		t.Errorf("counts: %+v", fig)
	}
	if fig.LinearizableReads != 2 || fig.FailedLinearizableReads != 1 {
		t.Errorf("linearizable read counts: %+v", fig)
	}
	if fig.ReadP99Ms != 200 || fig.WriteP99Ms != 450 || fig.FaultMs != 800 || fig.WindowMs != 900 {
		t.Errorf("latencies and durations: %+v", fig)
	}
	none := Measure(nil, f)
	if none.WriteUnavailableMs != 900 || none.FirstWriteMs != -1 {
		t.Errorf("no write at all: %+v", none)
	}
	if s := Summarize([]Figures{{Kind: "k", WriteUnavailableMs: 300}, {Kind: "k", WriteUnavailableMs: 100}, {Kind: "k", WriteUnavailableMs: 200}}); s[0].MedianWriteUnavailableMs != 200 || s[0].WorstWriteUnavailableMs != 300 || s[0].Count != 3 {
		t.Errorf("summary: %+v", s)
	}
	if s := Summarize([]Figures{{Kind: "k", LinearizableReads: 5, FailedLinearizableReads: 1}, {Kind: "k", LinearizableReads: 2, FailedLinearizableReads: 2}}); s[0].LinearizableReads != 7 || s[0].FailedLinearizableReads != 3 {
		t.Errorf("summary of the linearizable reads: %+v", s)
	}
	if p := p99(nil); p != 0 || math.IsNaN(float64(p)) {
		t.Errorf("p99 of nothing: %v", p)
	}
}

func TestLoadConsistencyMix(t *testing.T) {
	l := &Load{cfg: LoadConfig{}.withDefaults()}
	var got []string
	for seq := 1; seq <= 12; seq++ {
		got = append(got, l.consistency(seq)[:1])
	}
	// d(efault), s(tale), l(inearizable): every 4th stale, every 3rd of
	// the others linearizable.
	if s := strings.Join(got, ""); s != "ddlsdldsldds" {
		t.Errorf("reads 1..12 of a reader with the defaults: %s", s)
	}
	for _, c := range []struct {
		stale, lin int
		want       bool
	}{{4, 3, true}, {-1, 1, true}, {4, -1, false}, {2, 4, false}, {1, 1, false}, {-1, 0, true}} {
		l := &Load{cfg: LoadConfig{StaleEvery: c.stale, LinearizableEvery: c.lin}.withDefaults()}
		if got := l.linearizableReads(); got != c.want {
			t.Errorf("StaleEvery %d, LinearizableEvery %d: linearizable reads %v, want %v", c.stale, c.lin, got, c.want)
		}
	}
}

func TestMeasureReplicaReads(t *testing.T) {
	f := Fault{Kind: KindReplicaQuorumLoss, Start: at(100), Healed: at(900), End: at(1000)}
	replica := staleRead(8, k, "a", 2, 200, 201)
	replica.Replica = true
	failed := Op{Client: 9, Kind: OpRead, Key: k, Consistency: ConsistencyStale, Replica: true, Start: at(300), End: at(301), Err: "Unavailable"}
	fig := Measure([]Op{replica, failed, staleRead(6, k, "a", 2, 200, 201)}, f)
	if fig.ReplicaReads != 2 || fig.FailedReplicaReads != 1 || fig.Reads != 3 || fig.FailedReads != 1 {
		t.Errorf("replica read counts: %+v", fig)
	}
	if tab := Table([]Figures{fig}); !strings.Contains(tab, "failed replica r") {
		t.Errorf("a table of replica reads has no replica columns:\n%s", tab)
	}
	if tab := Table([]Figures{{Kind: "leader-kill"}}); strings.Contains(tab, "replica") {
		t.Errorf("a table without replica reads has replica columns:\n%s", tab)
	}
}

// TestCheckQuorumLoss: ReplicaQuorumLoss's own promises on hand-made
// outages (the kill at 100, both nodes down at 150, back at 1000).
func TestCheckQuorumLoss(t *testing.T) {
	replicaRead := func(start int) Op {
		op := staleRead(8, k, "a", 2, start, start+1)
		op.Replica = true
		return op
	}
	unclear := failedWrite(2, k, "u", 200, 900)
	unclear.Err = "DeadlineExceeded: context deadline exceeded"
	for _, c := range []struct {
		name string
		ops  []Op
		want string
	}{
		{"kept", []Op{
			write(1, k, "a", 2, 90, 160),    // committed before the kill, acknowledged after down
			failedWrite(2, k, "b", 95, 700), // in flight at the kill
			write(3, k, "c", 3, 400, 1100),  // begun in the outage, acknowledged after it
			replicaRead(500),
		}, ""},
		{"acknowledged without quorum", []Op{write(1, k, "a", 2, 200, 300), failedWrite(2, k, "b", 95, 700), replicaRead(500)}, "acked-without-quorum"},
		{"unclear error", []Op{unclear, replicaRead(500)}, "write-error-unclear"},
		{"no write failed", []Op{failedWrite(2, k, "b", 95, 1200), replicaRead(500)}, "no-write-failed"},
		{"replica silent", []Op{failedWrite(2, k, "b", 95, 700), replicaRead(50), replicaRead(1000)}, "replica-silent"},
	} {
		r := &Run{Load: &Load{history: &History{}}, opts: Options{Logf: t.Logf}}
		for _, op := range c.ops {
			r.Load.history.Add(op)
		}
		r.checkQuorumLoss(&Fault{Start: at(100)}, at(150), at(1000))
		if got := checks(Report{Violations: r.violations}); got != c.want {
			t.Errorf("%s: violations %q, want %q", c.name, got, c.want)
		}
	}
}

func TestLoadReplicaReaders(t *testing.T) {
	if c := (LoadConfig{ReplicaReaders: 3}).withDefaults(); c.ReplicaReaders != 0 {
		t.Errorf("replica readers without replica endpoints: %d", c.ReplicaReaders)
	}
	l := &Load{cfg: LoadConfig{ReplicaEndpoints: []string{"r1:8400"}}.withDefaults()}
	var readers []int
	for w := 1; w <= l.cfg.Writers+l.cfg.Readers+l.cfg.ReplicaReaders; w++ {
		if l.replicaReader(w) {
			readers = append(readers, w)
		}
	}
	if fmt.Sprint(readers) != "[7 8]" {
		t.Errorf("replica readers %v, want the two workers after three writers and three readers", readers)
	}
}
