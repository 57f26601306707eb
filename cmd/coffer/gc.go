package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the garbage collector's growth target for the long-running
// commands (server and bench) unless $GOGC says otherwise. Go's default of
// 100 collects each time the heap doubles; a node's live heap is small
// (a few MiB), so under load it collected many times a second: 8-17 % of
// a node's CPU in the profiles. At 400 the cluster served more reads and
// writes on the same CPU and a node's RSS stays below the 100 MiB budget
// (docs/BENCHMARKS.md: 86-89 MiB after the benchmark runs, 25-33 MiB of
// it Go's heap, the rest mapped bbolt pages and the binary).
const gcPercent = 400

// tuneGC applies gcPercent unless the operator set $GOGC.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}
