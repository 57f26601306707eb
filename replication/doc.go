// Package replication owns the Raft node of a coffer server: the
// hashicorp/raft instance, its raft-boltdb/v2 log and stable store, the file
// snapshot store and the TCP transport.
//
// Everything above this package talks to Raft through *Node, which turns
// hashicorp/raft's futures and error values into context-aware calls and the
// package's sentinel errors, so the server can map them to gRPC status codes
// with errors.Is. The state machine itself (package fsm) is handed in by the
// caller; this package never interprets a command.
package replication
