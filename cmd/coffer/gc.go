package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the garbage collector's growth target for the long-running
// commands (server and bench) unless $GOGC says otherwise. Go's default of
// 100 collects each time the heap doubles; a node's live heap is small
// (a few MiB), so under load it collected many times a second: 8-17 % of
// a node's CPU in the profiles. At 300 the cluster serves more reads and
// writes on the same CPU while a node's RSS stays well below the 100 MiB
// budget (docs/BENCHMARKS.md: 81-85 MiB after the benchmark runs, about
// 20 MiB of it Go's heap, the rest mapped bbolt pages and the binary).
// 400 served 5-10 % more but reached 95-101 MiB; 200 stayed at 76-80 MiB
// with 6-14 % less.
const gcPercent = 300

// tuneGC applies gcPercent unless the operator set $GOGC.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}
