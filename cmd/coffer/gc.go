package main

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
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

// The cgroup files that hold a container's memory limit: cgroup v2, then
// v1. Variables, so that a test can point them at files of its own.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// memoryLimitShare is the part of the container's memory limit given to
// Go's heap as its soft limit: the rest is for what the Go runtime does
// not count (bbolt's mapped pages in the page cache, thread stacks).
const memoryLimitShare = 0.8

// cgroupMemoryLimit returns the memory limit of the cgroup this process
// runs in, and 0 when there is none (no file, "max", or v1's "unlimited",
// a number near 2^63).
func cgroupMemoryLimit() int64 {
	for _, path := range cgroupMemoryFiles {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		if err != nil || v <= 0 || v >= 1<<60 {
			return 0 // "max", or unlimited
		}
		return v
	}
	return 0
}

// tuneMemoryLimit gives Go a soft memory limit of memoryLimitShare of the
// container's (unless $GOMEMLIMIT is set): with the garbage collector's
// growth target of 300 % the heap may otherwise grow past a container's
// limit under a storm of large writes, and the kernel kills the node
// where collecting more often would have kept it alive. It returns the
// soft limit set, or 0.
func tuneMemoryLimit() int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0
	}
	limit := cgroupMemoryLimit()
	if limit == 0 {
		return 0
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	return soft
}
