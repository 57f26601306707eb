package server

import (
	"strings"
	"testing"
)

// TestClusteredNodeNeedsTheGossipKey: a node that joins or bootstraps a
// cluster refuses to start without the gossip key (an outsider could join
// otherwise), and says how to make one; with one it validates.
func TestClusteredNodeNeedsTheGossipKey(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir = "n1", t.TempDir()
	cfg.Gossip = DefaultGossip()
	cfg.BootstrapExpect = 3
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "COFFER_CLUSTER_KEY") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("clustered without a key: %v", err)
	}
	if _, err := New(cfg); err == nil {
		t.Fatal("New started a clustered node without a gossip key")
	}
	cfg.Gossip.ClusterKey = make([]byte, 16)
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "16 bytes") {
		t.Fatalf("a short key: %v", err)
	}
	cfg.Gossip.ClusterKey = make([]byte, 32)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("with a key: %v", err)
	}
	// A one-node cluster has no gossip and needs no key.
	single := DefaultConfig()
	single.NodeID, single.DataDir = "n1", t.TempDir()
	if err := single.Validate(); err != nil {
		t.Fatalf("one node: %v", err)
	}
}
