package testcluster

import (
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// Logger returns an hclog logger named name that writes lines at level and
// above to t.Log until the test ends (its cleanup), and discards them
// after: a goroutine still winding down must not log to a finished test.
func Logger(t testing.TB, name string, level hclog.Level) hclog.Logger {
	return newLogger(newLogGate(t), name, level)
}

func newLogger(g *logGate, name string, level hclog.Level) hclog.Logger {
	return newLoggerTap(g, nil, name, level)
}

// newLoggerTap is newLogger whose lines also go to tap (when not nil).
func newLoggerTap(g *logGate, tap io.Writer, name string, level hclog.Level) hclog.Logger {
	var out io.Writer = g
	if tap != nil {
		out = io.MultiWriter(g, tap)
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: out})
}

// logGate is an io.Writer that passes each write to t.Log as one line
// until it is closed.
type logGate struct {
	t testing.TB
	// mu is held for reading while a line goes to t, so that once close
	// returns no write is still inside t.Log.
	mu     sync.RWMutex
	closed bool
}

// newLogGate returns a gate to t that closes when t's cleanups run (after
// the cleanups registered later, such as a cluster's shutdown).
func newLogGate(t testing.TB) *logGate {
	g := &logGate{t: t}
	t.Cleanup(g.close)
	return g
}

func (g *logGate) Write(p []byte) (int, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if !g.closed {
		g.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (g *logGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
}
