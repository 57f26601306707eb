// Package integration holds coffer's multi-node tests: real servers in one
// process on loopback (real TCP, real bbolt in temp dirs, real gRPC), with
// faults injected inside the program (a node's network cut by its
// replication.Network, a node killed without a graceful shutdown).
package integration
