// Package replication owns the Raft node of a coffer server: the
// hashicorp/raft instance, its raft-boltdb/v2 stable store and its log store
// (the same raft-boltdb/v2 file, or hashicorp/raft-wal segments), the file
// snapshot store and the TCP transport; memberlist gossip for discovery and
// failure detection; bootstrap_expect; and, on the leader, the reconciliation
// of gossip into Raft membership (add as non-voter, promote, remove).
//
// Everything above this package talks to Raft through *Node, which turns
// hashicorp/raft's futures and error values into context-aware calls and the
// package's sentinel errors, so the server can map them to gRPC status codes
// with errors.Is. The state machine itself (package fsm) is handed in by the
// caller; this package never interprets a command. DESIGN.md explains the
// choices.
package replication
