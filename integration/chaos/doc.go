// Package chaos runs coffer clusters under a steady client load while it
// injects faults (leader kill, pause, partition, follower restart, quorum
// loss, graceful leader restart, rolling restart of every node, graceful
// and hard, two of five voters killed at once, quorum lost beside a read
// replica), records every client operation in a
// history and checks the history afterwards:
//
//   - no acknowledged write is lost: its value is in its key's version
//     history, at the version the write returned;
//   - no value was written twice (a retried write made one version);
//   - the operations that claim to be fresh (writes, non-stale reads and
//     every successful linearizable read) are linearizable, checked with
//     porcupine against a register per key;
//   - no linearizable read was answered stale, as a fallback or from the
//     client cache (it may fail instead: that is counted, not a violation);
//   - no client saw a key go back in time, and every read, stale or not,
//     returned a value that was written at the version it reported;
//   - default and stale reads through the endpoint list kept succeeding
//     while at least one node was up, and from the client cache while none
//     was.
//
// It measures, per fault, the write unavailability (from the fault to the
// first acknowledged write after the outage), the failed reads and writes,
// and the p99 latencies while the fault lasted.
//
// The same scenarios run against two drivers: InProcess (server.Server
// in this process on loopback, faults injected through each node's
// replication.Network) and Docker (coffer:dev containers driven with the
// docker CLI). A cluster has three voters, or as many as the scenario asks
// for (five for FiveLoseTwo), and a read replica when the scenario needs
// one (ReplicaQuorumLoss): clients that know only the replica then join
// the load, and the scenario checks what it promises while quorum is lost. The tests of this package run the
// in-process scenarios always and the docker ones when COFFER_CHAOS=1 and a
// Docker engine answers; docs/CHAOS.md describes both and their figures.
package chaos
