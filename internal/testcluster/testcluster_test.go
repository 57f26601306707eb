package testcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	pb "coffer/api/cofferpb"
	"coffer/replication"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestFreeAddrNeverRepeats(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		a := FreeAddr(t)
		if seen[a] {
			t.Fatalf("FreeAddr returned %s twice", a)
		}
		seen[a] = true
	}
	p, err := FreePort()
	if err != nil || p < portLow || p >= portHigh || seen[fmt.Sprintf("127.0.0.1:%d", p)] {
		t.Fatalf("FreePort = %d, %v", p, err)
	}
}

func TestOptionsRefused(t *testing.T) {
	if _, err := New(t, 0, Options{}); err == nil {
		t.Fatal("a cluster of 0 nodes was accepted")
	}
	if _, err := New(t, 3, Options{Standalone: true}); err == nil {
		t.Fatal("a standalone cluster of 3 nodes was accepted")
	}
}

// TestStandaloneLifecycle: one node without gossip comes up, initializes
// and unseals; killed, it is gone; restarted on the same addresses and
// data, it is sealed, unseals and still holds the write.
func TestStandaloneLifecycle(t *testing.T) {
	c := StartUnsealed(t, 1, Options{Standalone: true, LogLevel: hclog.Warn})
	n := c.Nodes()[0]
	if c.WaitForLeader(t) != n || len(c.Followers(n)) != 0 {
		t.Fatalf("leader %v, followers %v", c.Leader(), c.Followers(n))
	}
	put, err := n.KV.Put(c.Auth(t), &pb.PutRequest{Path: "secret/h/k", Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, put.Index)
	addr := n.APIAddr()

	c.Kill(n)
	if c.IsRunning(n) || len(c.Running()) != 0 {
		t.Fatal("a killed node still counts as running")
	}
	if err := c.StopNode(context.Background(), n); err == nil {
		t.Fatal("stopping a killed node did not fail")
	}
	c.Restart(t, n)
	if n.APIAddr() != addr || c.APIAddrs()[0] != addr {
		t.Fatalf("restarted on %s, was %s", n.APIAddr(), addr)
	}
	if !c.Status(t, n).Seal.GetSealed() {
		t.Fatal("a restarted node is not sealed")
	}
	if err := c.StartNode(context.Background(), n); err == nil {
		t.Fatal("starting a running node did not fail")
	}
	c.Unseal(t, n, 2)
	c.WaitForLeader(t)
	g, err := n.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/h/k"})
	if err != nil || g.Data["v"] != "1" {
		t.Fatalf("read after restart: %v %v", g, err)
	}
	c.Stop(t, n)
	c.RestartAll(t)
	if !c.IsRunning(n) {
		t.Fatal("RestartAll left the node down")
	}
}

func TestWaitFor(t *testing.T) {
	calls := 0
	WaitFor(t, time.Second, "the third call", func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Fatalf("%d calls", calls)
	}
	ft := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitFor(ft, 30*time.Millisecond, "never", func() error { return fmt.Errorf("no") })
	}()
	<-done
	if ft.msg != "timed out after 30ms waiting for never: no" {
		t.Fatalf("failure %q", ft.msg)
	}
}

// fatalTB records Fatalf and ends its goroutine, as testing does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestShutdownBeforeDataDirsGo: the nodes are shut down before t.TempDir
// removes their data dirs (a shutdown closing bbolt in a removed dir
// fails and logs it).
func TestShutdownBeforeDataDirsGo(t *testing.T) {
	rec := &recordingTB{}
	t.Run("cluster", func(t *testing.T) {
		rec.TB = t
		StartUnsealed(rec, 1, Options{Standalone: true, LogLevel: hclog.Off})
	})
	for _, l := range rec.lines() {
		if strings.Contains(l, "shutdown") {
			t.Errorf("logged at cleanup: %s", l)
		}
	}
}

// recordingTB records what is logged through Logf.
type recordingTB struct {
	testing.TB
	mu   sync.Mutex
	logs []string
}

func (r *recordingTB) Logf(format string, args ...any) {
	r.mu.Lock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
	r.mu.Unlock()
	r.TB.Logf(format, args...)
}

func (r *recordingTB) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.logs...)
}

// TestRaftLogStoreOption: Options.RaftLogStore puts the nodes' log in the
// store named, which keeps a write over a kill and a restart; a bad name in
// the options or the environment is refused before any node starts.
func TestRaftLogStoreOption(t *testing.T) {
	for _, kind := range []string{replication.LogStoreBoltDB, replication.LogStoreWAL} {
		t.Run(kind, func(t *testing.T) {
			c := StartUnsealed(t, 1, Options{Standalone: true, LogLevel: hclog.Warn, RaftLogStore: kind})
			n := c.Nodes()[0]
			put, err := n.KV.Put(c.Auth(t), &pb.PutRequest{Path: "secret/s/k", Data: map[string]string{"v": kind}})
			if err != nil {
				t.Fatal(err)
			}
			c.WaitForApplied(t, put.Index)
			_, err = os.Stat(filepath.Join(n.Dir, "raft", "wal"))
			if hasWAL := err == nil; hasWAL != (kind == replication.LogStoreWAL) {
				t.Fatalf("store %s: raft/wal present: %v", kind, hasWAL)
			}
			c.Kill(n)
			c.Restart(t, n)
			c.Unseal(t, n, 2)
			c.WaitForLeader(t)
			g, err := n.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/s/k"})
			if err != nil || g.Data["v"] != kind || g.GetMetadata().GetVersion() != put.GetVersion() {
				t.Fatalf("read after restart: %v %v, want version %d", g, err, put.GetVersion())
			}
		})
	}
	if _, err := New(t, 1, Options{Standalone: true, RaftLogStore: "rocksdb"}); err == nil || !strings.Contains(err.Error(), "want wal or boltdb") {
		t.Fatalf("RaftLogStore rocksdb: %v", err)
	}
	t.Setenv(EnvRaftLogStore, "rocksdb")
	if _, err := New(t, 1, Options{Standalone: true}); err == nil || !strings.Contains(err.Error(), EnvRaftLogStore) {
		t.Fatalf("$%s=rocksdb: %v", EnvRaftLogStore, err)
	}
}
