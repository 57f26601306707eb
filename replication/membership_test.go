package replication

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

func TestMetaRoundTripAndSize(t *testing.T) {
	m := MemberMeta{
		ID: "coffer-node-1", APIAddr: "coffer1.example.internal:8400", RaftAddr: "172.18.0.2:8401",
		Sealed: true, ReadReplica: true, HasRaftState: true, BootstrapExpect: 5, Version: "1.2.3-rc.1+abcdef", Boot: newBoot(),
	}
	for _, leaving := range []bool{false, true} {
		b := encodeMeta(m, leaving)
		got, gotLeaving, err := decodeMeta(b)
		if err != nil || got != m || gotLeaving != leaving {
			t.Fatalf("round trip of %s: %+v %v %v", b, got, gotLeaving, err)
		}
		if len(b) > 200 {
			t.Errorf("typical metadata takes %d bytes: %s", len(b), b)
		}
	}
	if _, _, err := decodeMeta([]byte("not json")); err == nil {
		t.Error("decoded foreign metadata")
	}
	if _, _, err := decodeMeta([]byte(`{"api":"x"}`)); err == nil {
		t.Error("decoded metadata without an id")
	}

	// A configuration whose metadata could exceed memberlist's limit is
	// refused up front rather than panicking inside memberlist.
	c := DefaultConfig()
	c.NodeID, c.DataDir = "n1", t.TempDir()
	c.Gossip = &GossipConfig{}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Version = strings.Repeat("v", 400)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "metadata") {
		t.Fatalf("oversized metadata: %v", err)
	}
}

func TestClusterConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.NodeID, good.DataDir = "n1", t.TempDir()
	good.Gossip = &GossipConfig{Join: []string{"coffer2:8402"}, ClusterKey: make([]byte, 32)}
	good.BootstrapExpect = 3
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if good.Gossip.BindAddr != "" {
		t.Fatal("Validate changed the caller's gossip config")
	}
	for name, mut := range map[string]func(*Config){
		"expect without gossip":  func(c *Config) { c.Gossip = nil },
		"expect and bootstrap":   func(c *Config) { c.Bootstrap = true },
		"expect and replica":     func(c *Config) { c.ReadReplica = true },
		"negative expect":        func(c *Config) { c.BootstrapExpect = -1 },
		"replica without gossip": func(c *Config) { c.BootstrapExpect, c.ReadReplica, c.Gossip = 0, true, nil },
		"short cluster key":      func(c *Config) { c.Gossip.ClusterKey = make([]byte, 16) },
		"bad gossip address":     func(c *Config) { c.Gossip.BindAddr = "nonsense" },
		"empty seed":             func(c *Config) { c.Gossip.Join = []string{""} },
		"negative dead timeout":  func(c *Config) { c.Gossip.DeadServerTimeout = -1 },
	} {
		c := good
		g := *good.Gossip
		c.Gossip = &g
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	// A read replica with gossip and no expectation is fine.
	c := good
	c.BootstrapExpect, c.ReadReplica = 0, true
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestQuorumAfterRemoval(t *testing.T) {
	conf := func(voters, nonvoters string) map[string]Peer {
		m := map[string]Peer{}
		for _, id := range strings.Fields(voters) {
			m[id] = Peer{ID: id, Voter: true}
		}
		for _, id := range strings.Fields(nonvoters) {
			m[id] = Peer{ID: id}
		}
		return m
	}
	members := func(alive, dead string) map[string]Member {
		m := map[string]Member{}
		for _, id := range strings.Fields(alive) {
			m[id] = Member{MemberMeta: MemberMeta{ID: id}, Status: StatusAlive}
		}
		for _, id := range strings.Fields(dead) {
			m[id] = Member{MemberMeta: MemberMeta{ID: id}, Status: StatusDead}
		}
		return m
	}
	for _, tc := range []struct {
		name           string
		voters, nonv   string
		alive, dead    string
		remove         string
		wantRemovalsOK bool
	}{
		{"5 voters, 1 dead", "a b c d e", "", "a b c d", "e", "e", true},
		{"5 voters, 2 dead", "a b c d e", "", "a b c", "d e", "e", true},
		{"4 voters, 1 more dead", "a b c d", "", "a b c", "d", "d", true},
		{"3 voters, 2 dead", "a b c", "", "a", "b c", "c", false},
		{"3 voters, 1 dead, 1 unknown", "a b c", "", "a", "c", "c", false},
		{"3 voters, 1 dead", "a b c", "", "a b", "c", "c", true},
		{"2 voters, 1 dead", "a b", "", "a", "b", "b", true},
		{"a non-voter while quorum is healthy", "a b c", "r", "a b c", "r", "r", true},
		{"a non-voter while quorum is not", "a b c", "r", "a", "b c r", "r", false},
	} {
		got := quorumAfterRemoval(conf(tc.voters, tc.nonv), members(tc.alive, tc.dead), "a", tc.remove)
		if got != tc.wantRemovalsOK {
			t.Errorf("%s: removing %s allowed=%v, want %v", tc.name, tc.remove, got, tc.wantRemovalsOK)
		}
	}
}

// Without gossip a node is exactly the one-node cluster of the foundation;
// the membership API answers about itself.
func TestNoGossipSingleNode(t *testing.T) {
	n, f := openNode(t, t.TempDir())
	defer f.Close()
	defer n.Shutdown()
	n.cfg.APIAdvertise = "127.0.0.1:8400"
	n.SetSealed(true)
	ms := n.Members()
	if len(ms) != 1 || ms[0].ID != "n1" || ms[0].Status != StatusAlive || !ms[0].Sealed || ms[0].RaftAddr != n.Addr() {
		t.Fatalf("members %+v", ms)
	}
	if got := n.LeaderAPIAddr(); got != "127.0.0.1:8400" {
		t.Fatalf("leader API address %q", got)
	}
	if n.GossipAddr() != "" || n.Leave(0) != nil {
		t.Fatal("gossip API without gossip")
	}
	peers, err := n.Configuration()
	if err != nil || len(peers) != 1 || peers[0] != (Peer{ID: "n1", Address: n.Addr(), Voter: true}) {
		t.Fatalf("configuration %+v %v", peers, err)
	}
	ctx := context.Background()
	if err := n.TransferLeadershipTo(ctx, "n1"); !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("transfer to self: %v", err)
	}
}

// TestGossipPortTakenIsTyped: a gossip address another process holds fails
// New with an error that errors.Is finds as EADDRINUSE (memberlist itself
// reports it as text only).
func TestGossipPortTakenIsTyped(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	logs := newLogSink(t)
	c := clusterConfig(t, logs, "taken")
	c.Bootstrap = true
	c.Gossip.BindAddr = l.Addr().String()
	if _, err := tryStartNode(t, c); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("start on a taken gossip port: %v, want EADDRINUSE", err)
	}
}
