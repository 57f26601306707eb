// Package server is one coffer node: it wires the seal (package seal), the
// Raft node (package replication) and the state machine (package fsm)
// together behind the gRPC services of package api.
//
// Handlers stay thin: they validate input, encrypt or decrypt through the
// seal, propose commands through Raft or read the FSM, and return errors
// that one table (errors.go) maps to gRPC status codes. Nothing here logs a
// secret value, a key share or a token.
package server
