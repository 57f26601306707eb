// Package integration holds coffer's multi-node tests: real servers in one
// process on loopback (real TCP, real bbolt in temp dirs, real gRPC), with
// faults injected inside the program (a node's network cut by its
// replication.Network, a node killed without a graceful shutdown).
//
// The harness is internal/testcluster (Kill, Stop, Restart, AddNode, waits
// with deadlines); cluster_test.go starts it with this package's timings
// (NewCluster) and builds api.Clients over its nodes; load_test.go has the
// writers and readers that run while faults happen. The tests, by file:
//
//   - failover_test.go: leader killed under load (no acknowledged write
//     lost, retried writes make one version, follower stale reads never
//     fail); ten kills in a row with the production Raft timings, which log
//     the failover figures; a graceful leader shutdown without a failed
//     write.
//   - linearizable_test.go: linearizable reads through clients with the
//     stale fallback on, across two leader kills, checked with porcupine
//     (integration/chaos's load and checks): never answered stale, only
//     answered or failed.
//   - partition_test.go: a follower cut off in a minority.
//   - restart_test.go: a restarted node catches up while sealed.
//   - membership_test.go: five nodes lose two; read replicas; dead members
//     removed; step-down; leadership churn under load.
//   - snapshot_test.go: save and restore, foreign snapshots, disaster
//     recovery into a new cluster.
//   - haproxy_test.go: hashicorp/vault/api through a real HAProxy run with
//     docs/haproxy.cfg in front of the nodes' HTTP API: a leader killed
//     under reads and writes, a node sealed and unsealed. Skipped without
//     haproxy, failed without it under CI=true.
//
// Waits poll a condition with a deadline (testcluster.WaitFor) or wait on
// an event; none sleeps. -short skips the ten-kill figures test.
package integration
