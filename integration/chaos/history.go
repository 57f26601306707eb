package chaos

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// OpKind tells a write from a read.
type OpKind int

// The kinds of operations a history records.
const (
	OpWrite OpKind = iota
	OpRead
)

func (k OpKind) String() string {
	if k == OpWrite {
		return "write"
	}
	return "read"
}

// Op is one client operation of a history.
type Op struct {
	// Client is the worker that ran it (0: the set-up client).
	Client int    `json:"client"`
	Kind   OpKind `json:"kind"`
	Key    string `json:"key"`
	// Value is the value written, or the value read ("" when the key did
	// not exist).
	Value string `json:"value"`
	// Version is the version a write returned or a read saw.
	Version uint64 `json:"version"`
	// Index is a write's Raft index, or a read's applied index.
	Index uint64 `json:"index"`
	// Consistency is what a read asked for: "default", "stale" or
	// "linearizable" (the Consistency* constants).
	Consistency string `json:"consistency,omitempty"`
	// Start is when the call began, End when it returned.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Err is the error of a failed call ("" when it succeeded).
	Err string `json:"err,omitempty"`
	// Stale, Fallback and Cached describe how a read was answered
	// (api.ReadInfo); Node names the node that answered.
	Stale    bool   `json:"stale,omitempty"`
	Fallback bool   `json:"fallback,omitempty"`
	Cached   bool   `json:"cached,omitempty"`
	Node     string `json:"node,omitempty"`
	// Replica marks a read of a client that knows only the read
	// replicas (LoadConfig.ReplicaEndpoints).
	Replica bool `json:"replica,omitempty"`
}

// The consistencies a read asks for, as Op.Consistency names them.
const (
	ConsistencyDefault      = "default"
	ConsistencyStale        = "stale"
	ConsistencyLinearizable = "linearizable"
)

// OK reports whether the operation succeeded.
func (o Op) OK() bool { return o.Err == "" }

// Linearizable reports whether the operation is a read that asked for
// linearizable consistency, whatever its outcome.
func (o Op) Linearizable() bool { return o.Kind == OpRead && o.Consistency == ConsistencyLinearizable }

// Downgraded reports whether a successful linearizable read was answered
// in a way that promises less: marked stale, as a fallback, or from the
// client cache. The client must never do that.
func (o Op) Downgraded() bool {
	return o.Linearizable() && o.OK() && (o.Stale || o.Fallback || o.Cached)
}

// Fresh reports whether a successful read claims to be up to date: it was
// not marked stale and not served from the client cache, or it asked for
// linearizable consistency. A linearizable read's success is its claim,
// so one answered stale or from the cache (Downgraded) is held to it all
// the same.
func (o Op) Fresh() bool {
	return o.Kind == OpRead && o.OK() && (o.Linearizable() || !o.Stale && !o.Cached)
}

// Latency is the call's duration.
func (o Op) Latency() time.Duration { return o.End.Sub(o.Start) }

func (o Op) String() string {
	s := fmt.Sprintf("client %d %s %s", o.Client, o.Kind, o.Key)
	if o.Kind == OpWrite {
		s += fmt.Sprintf(" %q", o.Value)
	}
	if o.OK() {
		if o.Kind == OpRead {
			s += fmt.Sprintf(" -> %q", o.Value)
		}
		s += fmt.Sprintf(" v%d", o.Version)
	} else {
		s += " failed: " + o.Err
	}
	if o.Kind == OpRead {
		s += " (" + o.Consistency
		if o.Replica {
			s += " via the read replica"
		}
		if o.Node != "" {
			s += " from " + o.Node
		}
		for _, f := range []struct {
			on   bool
			name string
		}{{o.Stale, "stale"}, {o.Fallback, "fallback"}, {o.Cached, "cached"}} {
			if f.on {
				s += ", " + f.name
			}
		}
		s += ")"
	}
	return s
}

// History records the operations of a workload. It is safe for
// concurrent use.
type History struct {
	mu   sync.Mutex
	ops  []Op
	acks []time.Time // end times of acknowledged writes, in record order
}

// Add records one operation.
func (h *History) Add(op Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
	if op.Kind == OpWrite && op.OK() {
		h.acks = append(h.acks, op.End)
	}
}

// Ops returns a copy of the operations recorded so far, ordered by start.
func (h *History) Ops() []Op {
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	slices.SortStableFunc(ops, func(a, b Op) int { return a.Start.Compare(b.Start) })
	return ops
}

// AckedSince returns how many writes were acknowledged after t.
func (h *History) AckedSince(t time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, a := range h.acks {
		if a.After(t) {
			n++
		}
	}
	return n
}

// Count returns how many recorded operations match.
func (h *History) Count(match func(Op) bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, op := range h.ops {
		if match(op) {
			n++
		}
	}
	return n
}

// Len returns the number of operations recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}
