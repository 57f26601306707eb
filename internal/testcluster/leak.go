package testcluster

import "go.uber.org/goleak"

// LeakOptions are the goleak options of the test binaries that kill and
// stop nodes while writes are in flight. hashicorp/raft (v1.8.0) never
// answers a command it committed but had not yet handed to its state
// machine when it shut down (the batch stays queued for an FSM goroutine
// that has returned), so the goroutine replication.Node.Apply left
// waiting on that future stays; Apply itself returned ErrShutdown.
func LeakOptions() []goleak.Option {
	return []goleak.Option{goleak.IgnoreTopFunction("github.com/hashicorp/raft.(*deferError).Error")}
}
