package replication

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/fsm"
)

// logSink forwards log lines to t.Log until the test ends (memberlist timers
// may still fire a moment after a node stopped), and flags lines that contain
// watched phrases.
type logSink struct {
	t       *testing.T
	mu      sync.Mutex
	done    bool
	watched map[string]*atomic.Bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return len(p), nil
	}
	line := string(p)
	for phrase, seen := range s.watched {
		if strings.Contains(line, phrase) {
			seen.Store(true)
		}
	}
	s.t.Log(strings.TrimRight(line, "\n"))
	return len(p), nil
}

// watch returns a flag set once a log line contains phrase.
func (s *logSink) watch(phrase string) *atomic.Bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watched == nil {
		s.watched = make(map[string]*atomic.Bool)
	}
	if f, ok := s.watched[phrase]; ok {
		return f
	}
	f := new(atomic.Bool)
	s.watched[phrase] = f
	return f
}

// newLogSink returns a sink that stops forwarding when the test ends. It is
// registered before any node, so its cleanup runs after theirs.
func newLogSink(t *testing.T) *logSink {
	s := &logSink{t: t}
	t.Cleanup(func() {
		s.mu.Lock()
		s.done = true
		s.mu.Unlock()
	})
	return s
}

func (s *logSink) logger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Debug, Output: s})
}

// testLogStore is the Raft log store of the package's test nodes:
// COFFER_TEST_RAFT_LOG_STORE (wal or boltdb), or the default when unset.
func testLogStore() string { return os.Getenv("COFFER_TEST_RAFT_LOG_STORE") }

// Test timings: Raft heartbeat/election 200 ms, gossip probes every 100 ms.
const (
	testPromoteAfter = 300 * time.Millisecond
	testWait         = 10 * time.Second
)

// clusterConfig is a gossiping node with test timings.
func clusterConfig(t *testing.T, logs *logSink, id string) Config {
	return Config{
		NodeID:             id,
		DataDir:            t.TempDir(),
		RaftLogStore:       testLogStore(),
		BindAddr:           "127.0.0.1:0",
		Logger:             logs.logger(id),
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 200 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		APIAdvertise:       "api-" + id + ":8400",
		Version:            "test",
		PromoteAfter:       testPromoteAfter,
		ReconcileInterval:  100 * time.Millisecond,
		Gossip: &GossipConfig{
			BindAddr:          "127.0.0.1:0",
			ProbeInterval:     100 * time.Millisecond,
			ProbeTimeout:      50 * time.Millisecond,
			GossipInterval:    50 * time.Millisecond,
			SuspicionMult:     3,
			DeadServerTimeout: time.Second,
		},
	}
}

// tnode is a node over a real FSM, stopped when the test ends.
type tnode struct {
	*Node
	fsm  *fsm.FSM
	cfg  Config
	once sync.Once
}

func startNode(t *testing.T, cfg Config) *tnode {
	t.Helper()
	tn, err := tryStartNode(t, cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	return tn
}

func tryStartNode(t *testing.T, cfg Config) (*tnode, error) {
	f, err := fsm.Open(filepath.Join(cfg.DataDir, "fsm.db"), fsm.Options{})
	if err != nil {
		return nil, err
	}
	n, err := New(cfg, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	tn := &tnode{Node: n, fsm: f, cfg: cfg}
	t.Cleanup(tn.stop)
	return tn, nil
}

// stop shuts the node down gracefully (idempotent).
func (tn *tnode) stop() {
	tn.once.Do(func() {
		tn.Node.Shutdown()
		tn.fsm.Close()
	})
}

// crash stops the node without a gossip leave, as a crash looks to peers.
func (tn *tnode) crash() {
	tn.once.Do(func() {
		tn.Node.kill()
		tn.fsm.Close()
	})
}

// startExpectCluster starts size nodes with BootstrapExpect=size, each given
// the gossip addresses of those started before it as seeds, and waits until
// they form one cluster.
func startExpectCluster(t *testing.T, logs *logSink, size int, mut func(c *Config)) []*tnode {
	t.Helper()
	return startExpectClusterWith(t, logs, size, mut, startNode)
}

// startExpectClusterWith is startExpectCluster with start starting each
// node.
func startExpectClusterWith(t *testing.T, logs *logSink, size int, mut func(c *Config), start func(*testing.T, Config) *tnode) []*tnode {
	t.Helper()
	nodes := make([]*tnode, 0, size)
	var seeds []string
	// Start in reverse id order: the bootstrap configuration is sorted by id
	// whatever order the nodes come up in.
	for i := size; i >= 1; i-- {
		c := clusterConfig(t, logs, fmt.Sprintf("n%d", i))
		c.BootstrapExpect = size
		c.Gossip.Join = append([]string(nil), seeds...)
		if mut != nil {
			mut(&c)
		}
		n := start(t, c)
		nodes = append([]*tnode{n}, nodes...)
		seeds = append(seeds, n.GossipAddr())
	}
	want := make(map[string]bool)
	for _, n := range nodes {
		want[n.ID()] = true
	}
	waitForLeader(t, nodes)
	for _, n := range nodes {
		waitForPeers(t, n, want)
	}
	return nodes
}

// waitUntil polls cond until it returns nil, failing the test with its last
// error after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s: not within %s: %v", what, d, err)
		case <-tick.C:
		}
	}
}

// waitForLeader waits until exactly one of nodes leads and all of them name
// it, and returns it.
func waitForLeader(t *testing.T, nodes []*tnode) *tnode {
	t.Helper()
	var leader *tnode
	waitUntil(t, testWait, "one leader seen by all", func() error {
		leader = nil
		for _, n := range nodes {
			if n.IsLeader() {
				if leader != nil {
					return fmt.Errorf("two leaders: %s and %s", leader.ID(), n.ID())
				}
				leader = n
			}
		}
		if leader == nil {
			return fmt.Errorf("no leader")
		}
		for _, n := range nodes {
			if id, _ := n.Leader(); id != leader.ID() {
				return fmt.Errorf("%s sees leader %q, want %s", n.ID(), id, leader.ID())
			}
		}
		return nil
	})
	return leader
}

// waitForPeers waits until n's Raft configuration is exactly want (id → voter).
func waitForPeers(t *testing.T, n *tnode, want map[string]bool) {
	t.Helper()
	waitUntil(t, testWait, "raft configuration on "+n.ID(), func() error {
		return peersAre(n, want)
	})
}

func peersAre(n *tnode, want map[string]bool) error {
	peers, err := n.Configuration()
	if err != nil {
		return err
	}
	got := make(map[string]bool)
	for _, p := range peers {
		got[p.ID] = p.Voter
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("peers %v, want %v", got, want)
	}
	return nil
}

// memberStatus returns how n's gossip sees id ("" when unknown).
func memberStatus(n *tnode, id string) string {
	m, ok := n.MemberByID(id)
	if !ok {
		return ""
	}
	return m.Status
}

// reportLog collects the reconciliation reports of every node of a test.
type reportLog struct {
	mu   sync.Mutex
	reps []timedReport
}

type timedReport struct {
	at time.Time
	reconcileReport
}

func (l *reportLog) add(r reconcileReport) {
	l.mu.Lock()
	l.reps = append(l.reps, timedReport{time.Now(), r})
	l.mu.Unlock()
}

// find returns the first report after since that satisfies pred.
func (l *reportLog) find(since time.Time, pred func(reconcileReport) bool) (timedReport, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reps {
		if !r.at.Before(since) && pred(r.reconcileReport) {
			return r, true
		}
	}
	return timedReport{}, false
}

// waitFor waits for a report after since that satisfies pred.
func (l *reportLog) waitFor(t *testing.T, since time.Time, what string, pred func(reconcileReport) bool) timedReport {
	t.Helper()
	var found timedReport
	waitUntil(t, testWait, what, func() error {
		r, ok := l.find(since, pred)
		if !ok {
			return fmt.Errorf("no such reconciliation round yet")
		}
		found = r
		return nil
	})
	return found
}

func has(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func ctxWait(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	t.Cleanup(cancel)
	return ctx
}
