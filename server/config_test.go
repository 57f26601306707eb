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
	cfg.NodeID, cfg.DataDir, cfg.Insecure = "n1", t.TempDir(), true
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
	single.NodeID, single.DataDir, single.Insecure = "n1", t.TempDir(), true
	if err := single.Validate(); err != nil {
		t.Fatalf("one node: %v", err)
	}
}

// TestNoCertificatesNeedsInsecure: a node without certificates refuses to
// start unless told -insecure, and says how to make certificates; the two
// settings exclude each other.
func TestNoCertificatesNeedsInsecure(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir = "n1", t.TempDir()
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "coffer cert create-ca") || !strings.Contains(err.Error(), "-insecure") {
		t.Fatalf("no certificates, no -insecure: %v", err)
	}
	if _, err := New(cfg); err == nil {
		t.Fatal("New started a node without certificates and without -insecure")
	}
	cfg.Insecure = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("-insecure: %v", err)
	}
	cfg.CertsDir = t.TempDir()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "exclude") {
		t.Fatalf("-insecure with certificates: %v", err)
	}
}

// TestMaxInflightBytes: the budget defaults when zero, and one that cannot
// hold the largest request (or is negative) is refused with what to give.
func TestMaxInflightBytes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.Insecure = "n1", t.TempDir(), true
	if cfg.MaxInflightBytes != DefaultMaxInflightBytes {
		t.Fatalf("default budget %d, want %d", cfg.MaxInflightBytes, DefaultMaxInflightBytes)
	}
	for _, v := range []int64{0, MaxRequestSize, 1 << 40} {
		cfg.MaxInflightBytes = v
		if err := cfg.Validate(); err != nil {
			t.Errorf("budget %d: %v", v, err)
		}
	}
	for _, v := range []int64{-1, 1, MaxRequestSize - 1} {
		cfg.MaxInflightBytes = v
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "-max-inflight-bytes") || !strings.Contains(err.Error(), "at least") {
			t.Errorf("budget %d: %v, want a refusal naming the flag and the least budget", v, err)
		}
	}
}
