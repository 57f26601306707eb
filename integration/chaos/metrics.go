package chaos

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Fault is one injected fault and the window it is measured over.
type Fault struct {
	// Kind names the fault: leader-kill, leader-pause, leader-partition,
	// follower-restart, quorum-loss, all-down, graceful-leader-restart,
	// a rolling restart's four (KindRollingGracefulFollower …),
	// KindLoseTwo and KindReplicaQuorumLoss.
	Kind string `json:"kind"`
	// Name describes it ("kill leader n2 (3/10)").
	Name string `json:"name"`
	// Nodes are the nodes it hit.
	Nodes []string `json:"nodes"`
	// Start is when the fault was injected (before the command that
	// injects it), Healed when it was removed (the node restarted and
	// unsealed, resumed, reconnected), End when the cluster was healthy
	// again and taking writes.
	Start  time.Time `json:"start"`
	Healed time.Time `json:"healed"`
	End    time.Time `json:"end"`
}

// Figures are the measurements of one fault.
type Figures struct {
	Scenario string `json:"scenario"`
	Driver   string `json:"driver"`
	Kind     string `json:"kind"`
	Fault    string `json:"fault"`
	// WriteUnavailableMs is the longest stretch without an acknowledged
	// write from the fault to the end of its window, counted from the
	// fault: for a leader kill, from the kill (or the old leader's last
	// acknowledgement after it) to the new leader's first acknowledged
	// write.
	WriteUnavailableMs float64 `json:"write_unavailable_ms"`
	// FirstWriteMs is the time from the fault to the first write
	// acknowledged after it (a write already committed may be
	// acknowledged just after the fault, so WriteUnavailableMs is the
	// figure to read); -1 when no write was acknowledged in the window.
	FirstWriteMs float64 `json:"first_write_ms"`
	// FaultMs is how long the fault lasted (Start to Healed); WindowMs
	// the whole window (Start to End).
	FaultMs  float64 `json:"fault_ms"`
	WindowMs float64 `json:"window_ms"`
	// Counts of the operations started in the window. FailedReads are
	// the default and stale reads that failed: they have fallbacks, and
	// the goal is none. Linearizable reads have none (they fail while no
	// leader can confirm them) and are counted apart; Reads counts them
	// too.
	Writes                  int `json:"writes"`
	FailedWrites            int `json:"failed_writes"`
	Reads                   int `json:"reads"`
	FailedReads             int `json:"failed_reads"`
	StaleReads              int `json:"stale_reads"`
	CachedReads             int `json:"cached_reads"`
	LinearizableReads       int `json:"linearizable_reads"`
	FailedLinearizableReads int `json:"failed_linearizable_reads"`
	// ReplicaReads are the reads of the clients that know only the read
	// replicas (Op.Replica), FailedReplicaReads those that failed (in
	// FailedReads too).
	ReplicaReads       int `json:"replica_reads,omitempty"`
	FailedReplicaReads int `json:"failed_replica_reads,omitempty"`
	// p99 latencies of the calls started while the fault lasted (Start to
	// Healed), failed ones included.
	ReadP99Ms  float64 `json:"read_p99_ms"`
	WriteP99Ms float64 `json:"write_p99_ms"`
}

// Measure computes the figures of fault f from a history.
func Measure(ops []Op, f Fault) Figures {
	fig := Figures{Kind: f.Kind, Fault: f.Name}
	fig.FaultMs, fig.WindowMs = ms(f.Healed.Sub(f.Start)), ms(f.End.Sub(f.Start))
	var acks []time.Time
	var readLat, writeLat []time.Duration
	for _, op := range ops {
		if op.Kind == OpWrite && op.OK() && op.End.After(f.Start) && !op.End.After(f.End) {
			acks = append(acks, op.End)
		}
		if op.Start.Before(f.Start) || op.Start.After(f.End) {
			continue
		}
		during := !op.Start.After(f.Healed)
		switch op.Kind {
		case OpWrite:
			fig.Writes++
			if !op.OK() {
				fig.FailedWrites++
			}
			if during {
				writeLat = append(writeLat, op.Latency())
			}
		case OpRead:
			fig.Reads++
			if op.Linearizable() {
				fig.LinearizableReads++
			}
			if op.Replica {
				fig.ReplicaReads++
				if !op.OK() {
					fig.FailedReplicaReads++
				}
			}
			switch {
			case !op.OK() && op.Linearizable():
				fig.FailedLinearizableReads++
			case !op.OK():
				fig.FailedReads++
			case op.Cached:
				fig.CachedReads++
			case op.Stale:
				fig.StaleReads++
			}
			if during {
				readLat = append(readLat, op.Latency())
			}
		}
	}
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	if len(acks) == 0 {
		fig.WriteUnavailableMs, fig.FirstWriteMs = fig.WindowMs, -1
	} else {
		fig.FirstWriteMs = ms(acks[0].Sub(f.Start))
		prev, longest := f.Start, time.Duration(0)
		for _, a := range acks {
			longest = max(longest, a.Sub(prev))
			prev = a
		}
		fig.WriteUnavailableMs = ms(longest)
	}
	fig.ReadP99Ms, fig.WriteP99Ms = ms(p99(readLat)), ms(p99(writeLat))
	return fig
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)) / 1000 }

// p99 returns the 99th percentile (nearest rank) of ds, 0 for none.
func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(0.99*float64(len(s)))) - 1
	return s[max(rank, 0)]
}

// Result is the outcome of one scenario run.
type Result struct {
	Scenario string `json:"scenario"`
	// Seed is a schedule's seed (COFFER_CHAOS_SEED replays it), written
	// as a string: many JSON readers (jq among them) round a 64-bit
	// number to a float's 53 bits, and another seed replays other faults.
	Seed   uint64 `json:"seed,omitempty,string"`
	Driver string `json:"driver"`
	// TLS tells whether clients and nodes spoke TLS (mutual between nodes).
	TLS    bool      `json:"tls"`
	Faults []Figures `json:"faults"`
	Check  Report    `json:"check"`
	// DurationMs is the run's wall time, cluster start-up excluded.
	DurationMs float64 `json:"duration_ms"`
	// Picture is the file the run's timeline was drawn into, if any.
	Picture string `json:"picture,omitempty"`
}

// Summary aggregates the figures of the faults of one kind on one driver.
type Summary struct {
	Driver                   string  `json:"driver"`
	Kind                     string  `json:"kind"`
	Count                    int     `json:"count"`
	MedianWriteUnavailableMs float64 `json:"median_write_unavailable_ms"`
	WorstWriteUnavailableMs  float64 `json:"worst_write_unavailable_ms"`
	FailedReads              int     `json:"failed_reads"`
	FailedWrites             int     `json:"failed_writes"`
	LinearizableReads        int     `json:"linearizable_reads"`
	FailedLinearizableReads  int     `json:"failed_linearizable_reads"`
	WorstReadP99Ms           float64 `json:"worst_read_p99_ms"`
	WorstWriteP99Ms          float64 `json:"worst_write_p99_ms"`
}

// Summarize groups figures by driver and kind, in the order they first
// appear.
func Summarize(figs []Figures) []Summary {
	var out []Summary
	idx := map[[2]string]int{}
	var un [][]float64
	for _, f := range figs {
		k := [2]string{f.Driver, f.Kind}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, Summary{Driver: f.Driver, Kind: f.Kind})
			un = append(un, nil)
		}
		s := &out[i]
		s.Count++
		s.FailedReads += f.FailedReads
		s.FailedWrites += f.FailedWrites
		s.LinearizableReads += f.LinearizableReads
		s.FailedLinearizableReads += f.FailedLinearizableReads
		s.WorstReadP99Ms = max(s.WorstReadP99Ms, f.ReadP99Ms)
		s.WorstWriteP99Ms = max(s.WorstWriteP99Ms, f.WriteP99Ms)
		un[i] = append(un[i], f.WriteUnavailableMs)
	}
	for i := range out {
		slices.Sort(un[i])
		n := len(un[i])
		if n%2 == 1 {
			out[i].MedianWriteUnavailableMs = un[i][n/2]
		} else {
			out[i].MedianWriteUnavailableMs = (un[i][n/2-1] + un[i][n/2]) / 2
		}
		out[i].WorstWriteUnavailableMs = un[i][n-1]
	}
	return out
}

// Table renders figures as an aligned text table, one row per fault; the
// read replicas' columns are there when a fault saw replica reads.
func Table(figs []Figures) string {
	replicas := slices.ContainsFunc(figs, func(f Figures) bool { return f.ReplicaReads > 0 })
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "driver\tscenario\tfault\twrite unavail ms\tfault ms\twrites\tfailed w\treads\tfailed r\tstale r\tcached r\tlin r\tfailed lin r\tread p99 ms\twrite p99 ms\t"
	if replicas {
		head += "replica r\tfailed replica r\t"
	}
	fmt.Fprintln(w, head)
	for _, f := range figs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t",
			f.Driver, f.Scenario, f.Fault, f.WriteUnavailableMs, f.FaultMs, f.Writes, f.FailedWrites, f.Reads, f.FailedReads, f.StaleReads, f.CachedReads,
			f.LinearizableReads, f.FailedLinearizableReads, f.ReadP99Ms, f.WriteP99Ms)
		if replicas {
			fmt.Fprintf(w, "%d\t%d\t", f.ReplicaReads, f.FailedReplicaReads)
		}
		fmt.Fprintln(w)
	}
	w.Flush()
	return b.String()
}

// SummaryTable renders summaries as an aligned text table.
func SummaryTable(sums []Summary) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "driver\tfault\tcount\tmedian write unavail ms\tworst write unavail ms\tfailed writes\tfailed reads\tlin reads\tfailed lin reads\tworst read p99 ms\tworst write p99 ms\t")
	for _, s := range sums {
		fmt.Fprintf(w, "%s\t%s\t%d\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t\n", s.Driver, s.Kind, s.Count, s.MedianWriteUnavailableMs, s.WorstWriteUnavailableMs,
			s.FailedWrites, s.FailedReads, s.LinearizableReads, s.FailedLinearizableReads, s.WorstReadP99Ms, s.WorstWriteP99Ms)
	}
	w.Flush()
	return b.String()
}

// Output is what WriteJSON writes: every result, the summaries, and the
// machine they were measured on.
type Output struct {
	Date      time.Time `json:"date"`
	Host      Host      `json:"host"`
	Results   []Result  `json:"results"`
	Summaries []Summary `json:"summaries"`
}

// Host describes the machine a run measured: its CPUs, its load average
// (1, 5 and 15 minutes) when the run began and when it ended, and Go.
type Host struct {
	CPUs         int    `json:"cpus"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	GoVer        string `json:"go"`
}

// WriteJSON writes out as indented JSON to path.
func WriteJSON(path string, out Output) error {
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// LoadAvg returns /proc/loadavg's first three fields ("" elsewhere).
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
