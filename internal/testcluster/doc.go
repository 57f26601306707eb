// Package testcluster runs real coffer nodes inside a test process. It is
// for tests only (it imports testing and fails tests through testing.TB);
// no production code may import it.
//
// A Cluster is N server.Server on loopback, each with its own data
// directory under t.TempDir() (real bbolt, real Raft log), real TCP for
// Raft, gossip and gRPC, and a replication.Network per node that a test
// cuts to partition the node or that Kill cuts to make a crash look like
// one. Nodes keep their id, addresses and data directory across a stop or
// kill and a restart, and come back sealed.
//
//	c := testcluster.StartUnsealed(t, 3, testcluster.Options{})
//	leader := c.WaitForLeader(t)
//	c.Kill(leader)
//	c.WaitForNewLeader(t, leader)
//	c.Restart(t, leader)
//	c.Unseal(t, leader, 0)
//	c.WaitForApplied(t, index)
//
// Every wait polls a condition with a deadline and fails the test with the
// last error (WaitFor); none sleeps. Each node's log goes to t.Log until
// the test ends, then nowhere (memberlist may still log while it winds
// down). A shutdown or kill that hangs fails the test after 20s with the
// stacks of the goroutines that hold it, instead of hanging the package.
//
// The package knows the wire API (coffer/api/cofferpb) but not the Go
// client (coffer/api): the client's own tests import this package, and
// build their api.Client from Node.APIAddr and Cluster.Token.
package testcluster
