package replication

import (
	"fmt"

	"github.com/hashicorp/go-hclog"
)

// raftLogger is the logger handed to hashicorp/raft. Raft names one of
// its own fields "node" (its state, on "entering candidate state"), which
// would hide the node id the process's root logger carries under that key
// (a JSON object keeps one of the two; text would show both). It renames
// raft's field to raft_node, so that every line keeps node=<id>.
type raftLogger struct{ hclog.Logger }

var _ hclog.Logger = raftLogger{}

// renameNode returns args with a "node" key renamed, its value in its
// String form (raft passes itself, which JSON would show as an empty
// struct); args itself is left as it is.
func renameNode(args []any) []any {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == "node" {
			out := append([]any(nil), args...)
			out[i] = "raft_node"
			if v, ok := out[i+1].(fmt.Stringer); ok {
				out[i+1] = v.String()
			}
			return out
		}
	}
	return args
}

func (l raftLogger) Log(level hclog.Level, msg string, args ...any) {
	l.Logger.Log(level, msg, renameNode(args)...)
}
func (l raftLogger) Trace(msg string, args ...any) { l.Logger.Trace(msg, renameNode(args)...) }
func (l raftLogger) Debug(msg string, args ...any) { l.Logger.Debug(msg, renameNode(args)...) }
func (l raftLogger) Info(msg string, args ...any)  { l.Logger.Info(msg, renameNode(args)...) }
func (l raftLogger) Warn(msg string, args ...any)  { l.Logger.Warn(msg, renameNode(args)...) }
func (l raftLogger) Error(msg string, args ...any) { l.Logger.Error(msg, renameNode(args)...) }

// With, Named and ResetNamed keep the renaming on the loggers raft derives.
func (l raftLogger) With(args ...any) hclog.Logger {
	return raftLogger{l.Logger.With(renameNode(args)...)}
}
func (l raftLogger) Named(name string) hclog.Logger { return raftLogger{l.Logger.Named(name)} }
func (l raftLogger) ResetNamed(name string) hclog.Logger {
	return raftLogger{l.Logger.ResetNamed(name)}
}
