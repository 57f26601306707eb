package replication

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

type stateStringer struct{}

func (stateStringer) String() string { return "Node at 127.0.0.1:1 [Candidate]" }

// TestRaftLoggerKeepsNodeID: raft's own "node" field (its state) does not
// hide the node id of the root logger, in JSON or text, through With and
// Named too.
func TestRaftLoggerKeepsNodeID(t *testing.T) {
	for _, js := range []bool{true, false} {
		var buf bytes.Buffer
		root := hclog.New(&hclog.LoggerOptions{Output: &buf, JSONFormat: js, Level: hclog.Trace}).With("node", "n1")
		args := []any{"node", stateStringer{}, "term", 2}
		l := raftLogger{root}
		l.Info("entering candidate state", args...)
		l.Named("x").With("snapshot-id", "s").Debug("m", args...)
		l.Log(hclog.Warn, "m", args...)
		if args[0] != "node" {
			t.Fatal("renameNode changed the caller's args")
		}
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("json=%v: %d lines: %q", js, len(lines), buf.String())
		}
		for _, line := range lines {
			if js {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				if m["node"] != "n1" || m["raft_node"] != "Node at 127.0.0.1:1 [Candidate]" {
					t.Errorf("line %q: node %v, raft_node %v", line, m["node"], m["raft_node"])
				}
			} else if strings.Count(line, " node=") != 1 || !strings.Contains(line, " node=n1") || !strings.Contains(line, `raft_node="Node at`) {
				t.Errorf("text line %q: want one node=n1 and raft_node", line)
			}
		}
	}
}
