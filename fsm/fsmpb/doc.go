// Package fsmpb holds the protobuf messages of package fsm: the Command
// carried by every raft.LogCommand entry and the records the state machine
// keeps in bbolt. The Go code is generated from command.proto by `make proto`;
// edit the .proto, never the generated file.
package fsmpb
