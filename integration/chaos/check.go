package chaos

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Version is one version of a key as the cluster holds it at the end.
type Version struct {
	Version uint64 `json:"version"`
	Value   string `json:"value"`
}

// Final is every key's version history at the end of a run, oldest first.
type Final map[string][]Version

// ReadFinal reads every version of keys through a client of its own (cfg,
// at linearizable consistency), each call within readCallTimeout: a long
// run leaves tens of thousands of versions, so no bound on the whole fits
// every run. It fails when a key lost old versions to max_versions (the
// checks need all of them).
func ReadFinal(ctx context.Context, cfg api.Config, keys []string) (Final, error) {
	cfg.Consistency = pb.Consistency_CONSISTENCY_LINEARIZABLE
	cl, err := api.New(cfg)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	final := Final{}
	for _, key := range keys {
		mctx, cancel := context.WithTimeout(ctx, readCallTimeout)
		md, err := cl.ReadMetadata(mctx, &pb.ReadMetadataRequest{Path: key})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("chaos: metadata of %s: %w", key, err)
		}
		if md.OldestVersion > 1 {
			return nil, fmt.Errorf("chaos: %s keeps versions %d..%d only: raise max_versions (MaxVersions)", key, md.OldestVersion, md.CurrentVersion)
		}
		versions := make([]Version, len(md.Versions))
		// A few reads at a time: thousands of versions, one call each.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		sem := make(chan struct{}, 8)
		for i, vm := range md.Versions {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				gctx, cancel := context.WithTimeout(ctx, readCallTimeout)
				g, err := cl.Get(gctx, &pb.GetRequest{Path: key, Version: vm.Version})
				cancel()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("chaos: %s version %d: %w", key, vm.Version, err)
					}
					return
				}
				versions[i] = Version{Version: vm.Version, Value: g.Data["v"]}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return nil, firstErr
		}
		sort.Slice(versions, func(i, j int) bool { return versions[i].Version < versions[j].Version })
		final[key] = versions
	}
	return final, nil
}

// readCallTimeout bounds each read of ReadFinal and readBack, which read
// too much for one bound on the whole: three of the client's 5 s
// attempts, on as many nodes.
const readCallTimeout = 15 * time.Second

// Violation is one broken promise found in a history.
type Violation struct {
	// Check names the property: lost-write, wrong-version, duplicate,
	// phantom, not-linearizable, linearizability-unknown,
	// linearizable-downgraded, went-back, bad-read, failed-read; and a
	// scenario's own (Run.Violate): acked-without-quorum,
	// write-error-unclear, no-write-failed, replica-silent.
	Check  string `json:"check"`
	Detail string `json:"detail"`
}

// Report is the outcome of Check: counts of the history and every
// violation found.
type Report struct {
	Ops          int `json:"ops"`
	Writes       int `json:"writes"`
	AckedWrites  int `json:"acked_writes"`
	FailedWrites int `json:"failed_writes"`
	// AmbiguousWrites failed but took effect (their value is in the
	// final history): modelled as writes without a known end.
	AmbiguousWrites int `json:"ambiguous_writes"`
	Reads           int `json:"reads"`
	FreshReads      int `json:"fresh_reads"`
	StaleReads      int `json:"stale_reads"`
	CachedReads     int `json:"cached_reads"`
	FailedReads     int `json:"failed_reads"`
	// LinearizableReads and FailedLinearizableReads count the reads that
	// asked for linearizable consistency and succeeded or failed (the
	// latter are in FailedReads too). A linearizable read has no fallback:
	// while no leader can confirm it, it fails, and that breaks no promise.
	LinearizableReads       int `json:"linearizable_reads"`
	FailedLinearizableReads int `json:"failed_linearizable_reads"`
	// FailedWriteSamples describe the first failed writes (they break no
	// promise when they took effect or left no trace, but say why).
	FailedWriteSamples []string `json:"failed_write_samples,omitempty"`
	// LinearizabilityTime is how long porcupine took.
	LinearizabilityTime time.Duration `json:"linearizability_ns"`
	Violations          []Violation   `json:"violations,omitempty"`
}

// add records a violation; past maxPerCheck of one kind only counts.
func (r *Report) add(check, format string, args ...any) {
	n := 0
	for _, v := range r.Violations {
		if v.Check == check {
			n++
		}
	}
	if n == maxPerCheck {
		r.Violations = append(r.Violations, Violation{Check: check, Detail: "… more of the same left out"})
	}
	if n >= maxPerCheck {
		return
	}
	r.Violations = append(r.Violations, Violation{Check: check, Detail: fmt.Sprintf(format, args...)})
}

const maxPerCheck = 10

// CheckOptions tune Check.
type CheckOptions struct {
	// LinearizabilityTimeout bounds porcupine per key; 0 means 2 minutes.
	// A check that runs out is a violation (linearizability-unknown).
	LinearizabilityTimeout time.Duration
	// VisualizeDir, when set, receives porcupine's HTML view of every key
	// whose history is not linearizable.
	VisualizeDir string
}

// Check runs every check of the package doc on a history and the final
// state of its keys.
func Check(ops []Op, final Final, opts CheckOptions) Report {
	if opts.LinearizabilityTimeout == 0 {
		opts.LinearizabilityTimeout = 2 * time.Minute
	}
	ops = slices.Clone(ops)
	slices.SortStableFunc(ops, func(a, b Op) int { return a.Start.Compare(b.Start) })
	var r Report
	r.Ops = len(ops)
	// where[key][value] is the version that holds value.
	where := map[string]map[string]uint64{}
	for key, versions := range final {
		where[key] = map[string]uint64{}
		for _, v := range versions {
			if prev, dup := where[key][v.Value]; dup {
				r.add("duplicate", "%s holds %q at versions %d and %d: a write was applied twice", key, v.Value, prev, v.Version)
				continue
			}
			where[key][v.Value] = v.Version
		}
	}
	written := map[string]bool{}
	for _, op := range ops {
		if op.Kind == OpWrite {
			written[op.Key+"\x00"+op.Value] = true
		}
	}
	for key, versions := range final {
		for _, v := range versions {
			if !written[key+"\x00"+v.Value] {
				r.add("phantom", "%s version %d holds %q, which no client wrote", key, v.Version, v.Value)
			}
		}
	}

	for _, op := range ops {
		switch {
		case op.Kind == OpWrite:
			r.Writes++
			version, present := where[op.Key][op.Value]
			switch {
			case op.OK():
				r.AckedWrites++
				if !present {
					r.add("lost-write", "acknowledged write lost: %s (acknowledged at %s)", op, op.End.Format("15:04:05.000"))
				} else if version != op.Version {
					r.add("wrong-version", "write %s was acknowledged as version %d but holds version %d", op, op.Version, version)
				}
			default:
				r.FailedWrites++
				if present {
					r.AmbiguousWrites++
				}
				if len(r.FailedWriteSamples) < 5 {
					r.FailedWriteSamples = append(r.FailedWriteSamples, fmt.Sprintf("%s at %s after %s (took effect: %v)",
						op, op.Start.Format("15:04:05.000"), op.Latency().Round(time.Millisecond), present))
				}
			}
		case !op.OK():
			r.Reads++
			r.FailedReads++
			if op.Linearizable() {
				r.FailedLinearizableReads++
				break
			}
			r.add("failed-read", "%s at %s", op, op.Start.Format("15:04:05.000"))
		default:
			r.Reads++
			if op.Linearizable() {
				r.LinearizableReads++
			}
			if op.Downgraded() {
				r.add("linearizable-downgraded", "%s at %s: a linearizable read succeeds linearizably or fails, it is never answered stale, as a fallback or from the cache",
					op, op.Start.Format("15:04:05.000"))
			}
			switch {
			case op.Cached:
				r.CachedReads++
			case op.Stale:
				r.StaleReads++
			default:
				r.FreshReads++
			}
			// Every read, fresh or not, returns a value written at the
			// version it reports.
			if op.Value == "" && op.Version == 0 {
				break
			}
			if version, present := where[op.Key][op.Value]; !present || version != op.Version {
				r.add("bad-read", "%s: the final history holds that value at version %d (0: nowhere)", op, version)
			}
		}
	}

	checkMonotonic(&r, ops)
	start := time.Now()
	checkLinearizable(&r, ops, where, opts)
	r.LinearizabilityTime = time.Since(start)
	return r
}

// checkMonotonic: one client's successful reads of a key never see an
// older version than an earlier read of that client saw (a client runs one
// call at a time, so start order is its order).
func checkMonotonic(r *Report, ops []Op) {
	type ck struct {
		client int
		key    string
	}
	last := map[ck]Op{}
	for _, op := range ops {
		if op.Kind != OpRead || !op.OK() {
			continue
		}
		k := ck{op.Client, op.Key}
		prev, ok := last[k]
		if ok && op.Version < prev.Version {
			r.add("went-back", "client %d read %s at version %d, then version %d: %s at %s after %s at %s",
				op.Client, op.Key, prev.Version, op.Version, op, op.Start.Format("15:04:05.000"), prev, prev.Start.Format("15:04:05.000"))
		}
		if !ok || op.Version >= prev.Version {
			last[k] = op
		}
	}
}

// registerInput is the input of a porcupine operation on one key.
type registerInput struct {
	write bool
	value string
}

// registerModel is a register per key: a write sets it, a read returns
// it. The empty string is the register before the first write.
var registerModel = porcupine.Model{
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(registerInput)
		if in.write {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		if in.write {
			return fmt.Sprintf("put(%q)", in.value)
		}
		return fmt.Sprintf("get() -> %q", output.(string))
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state.(string)) },
}

// checkLinearizable checks, key by key, the acknowledged writes, the
// failed writes that took effect (with no known end: they may have
// happened any time after their start) and the fresh reads, every
// successful linearizable read among them. A failed write whose value is
// nowhere in the final history never happened and is left out; so are
// failed reads, which returned nothing.
func checkLinearizable(r *Report, ops []Op, where map[string]map[string]uint64, opts CheckOptions) {
	if len(ops) == 0 {
		return
	}
	base := ops[0].Start
	for _, op := range ops {
		if op.Start.Before(base) {
			base = op.Start
		}
	}
	ns := func(t time.Time) int64 { return t.Sub(base).Nanoseconds() }
	perKey := map[string][]porcupine.Operation{}
	byKey := map[string][]Op{}
	for _, op := range ops {
		var p porcupine.Operation
		switch {
		case op.Kind == OpWrite && op.OK():
			p = porcupine.Operation{Input: registerInput{write: true, value: op.Value}, Call: ns(op.Start), Return: ns(op.End)}
		case op.Kind == OpWrite:
			if _, present := where[op.Key][op.Value]; !present {
				continue
			}
			p = porcupine.Operation{Input: registerInput{write: true, value: op.Value}, Call: ns(op.Start), Return: math.MaxInt64}
		case op.Fresh():
			p = porcupine.Operation{Input: registerInput{}, Output: op.Value, Call: ns(op.Start), Return: ns(op.End)}
		default:
			continue
		}
		p.ClientId = op.Client
		perKey[op.Key] = append(perKey[op.Key], p)
		byKey[op.Key] = append(byKey[op.Key], op)
	}
	keys := make([]string, 0, len(perKey))
	for k := range perKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		history := perKey[key]
		res, info := porcupine.CheckOperationsVerbose(registerModel, history, opts.LinearizabilityTimeout)
		switch res {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			r.add("linearizability-unknown", "porcupine ran out of time (%s) on %s (%d operations)", opts.LinearizabilityTimeout, key, len(history))
			continue
		}
		detail := explainIllegal(info, byKey[key], base)
		if opts.VisualizeDir != "" {
			file := fmt.Sprintf("%s/%s.html", opts.VisualizeDir, strings.ReplaceAll(key, "/", "_"))
			if err := porcupine.VisualizePath(registerModel, info, file); err == nil {
				detail += "; visualization in " + file
			}
		}
		r.add("not-linearizable", "%s: %s", key, detail)
	}
}

// explainIllegal names the operations around the point where the longest
// linearizable prefix of a key's history ends.
func explainIllegal(info porcupine.LinearizationInfo, ops []Op, base time.Time) string {
	partials := info.PartialLinearizations()
	if len(partials) == 0 || len(partials[0]) == 0 {
		return "no partial linearization"
	}
	var longest []int
	for _, p := range partials[0] {
		if len(p) > len(longest) {
			longest = p
		}
	}
	in := map[int]bool{}
	for _, id := range longest {
		in[id] = true
	}
	// The first operation (by start) that no linearization could place.
	stuck := -1
	for id := range ops {
		if !in[id] && (stuck < 0 || ops[id].Start.Before(ops[stuck].Start)) {
			stuck = id
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d operations linearize", len(longest), len(ops))
	if stuck >= 0 {
		o := ops[stuck]
		fmt.Fprintf(&b, "; first one that cannot: %s [%s, %s]", o, o.Start.Sub(base), o.End.Sub(base))
	}
	tail := longest[max(0, len(longest)-4):]
	for _, id := range slices.Clone(tail) {
		o := ops[id]
		fmt.Fprintf(&b, "; linearized before it: %s [%s, %s]", o, o.Start.Sub(base), o.End.Sub(base))
	}
	return b.String()
}
