package testcluster

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"
)

// stuckAfter bounds a node's shutdown or kill: one that hangs fails the
// test with the goroutines that hold it, instead of hanging the package
// until go test's timeout.
const stuckAfter = 20 * time.Second

// errStuck is what bounded returns for a call that has not returned.
var errStuck = errors.New("testcluster: stuck")

// bounded runs f and returns its error. When f has not returned after
// stuckAfter it fails the test (without waiting further) with the stacks
// of Raft's goroutines and of the node's shutdown, and returns errStuck;
// the stuck goroutine is leaked (goleak will say so too).
func (c *Cluster) bounded(what string, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(stuckAfter)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		c.t.Errorf("%s has not returned after %s; goroutines of raft and of the shutdown:\n%s", what, stuckAfter, stuckStacks())
		return fmt.Errorf("%s: %w", what, errStuck)
	}
}

// stuckMarks are the frames of the goroutines that explain a hung
// shutdown: raft's replication and pipeline goroutines and coffer's
// shutdown path.
var stuckMarks = []string{
	"raft.(*Raft).replicate",
	"raft.(*Raft).pipeline",
	"raft.(*netPipeline)",
	"raft.(*Raft).heartbeat",
	"(*Node).shutdown",
	"raft.(*raftState).waitShutdown",
}

// stuckStacks returns the stacks of the goroutines that hold a shutdown.
func stuckStacks() string {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, mark := range stuckMarks {
			if strings.Contains(g, mark) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}
