package server

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/replication"
)

// Config configures one coffer node. Flags, the config file and tests all
// fill this struct; DefaultConfig gives the production defaults.
type Config struct {
	// NodeID names the node in Raft and in status output; stable across
	// restarts.
	NodeID string `json:"node_id"`
	// DataDir holds raft/raft.db, raft/snapshots/ and fsm.db.
	DataDir string `json:"data_dir"`
	// APIAddr is the gRPC listen address (host:port; port 0 picks one).
	APIAddr string `json:"api_addr"`
	// RaftAddr is the Raft transport listen address.
	RaftAddr string `json:"raft_addr"`
	// RaftAdvertise is the Raft address peers dial; empty means RaftAddr
	// (or Advertise with RaftAddr's port).
	RaftAdvertise string `json:"raft_advertise,omitempty"`
	// PprofAddr, when set, serves Go's pprof profiles over HTTP on this
	// address (keep it on loopback: profiles show memory contents' shape).
	PprofAddr string `json:"pprof_addr,omitempty"`
	// GossipAddr is the memberlist listen address.
	GossipAddr string `json:"gossip_addr"`
	// Advertise is the host peers and clients should use to reach this
	// node when it listens on 0.0.0.0 or behind NAT (e.g. "coffer1"); each
	// advertised address keeps its listen port.
	Advertise string `json:"advertise,omitempty"`
	// Join lists gossip seeds (host:port), retried until one answers.
	// With neither Join nor BootstrapExpect the node is a one-node cluster.
	Join []string `json:"join,omitempty"`
	// BootstrapExpect makes identical nodes bootstrap Raft together once
	// gossip shows this many of them.
	BootstrapExpect int `json:"bootstrap_expect,omitempty"`
	// ReadReplica joins as a non-voter that serves reads and never votes.
	ReadReplica bool `json:"read_replica,omitempty"`
	// ClusterKey (32 bytes) encrypts gossip; nodes with another key cannot
	// join.
	ClusterKey []byte `json:"-"`
	// DeadServerTimeout is how long a member must be dead before the
	// leader removes it from Raft (only while quorum stays healthy).
	DeadServerTimeout time.Duration `json:"-"`
	// Gossip tunes memberlist (tests shorten its probes); the fields above
	// override its addresses, seeds and key.
	Gossip replication.GossipConfig `json:"-"`

	// Raft tunes the Raft node; zero fields take replication's defaults.
	// NodeID, DataDir and the addresses above override its own fields.
	Raft replication.Config `json:"-"`

	// IdempotencyWindow is how long a write's request id is remembered.
	IdempotencyWindow time.Duration `json:"-"`
	// ShutdownTimeout bounds the graceful stop of the gRPC server.
	ShutdownTimeout time.Duration `json:"-"`

	// Network carries the node's Raft traffic and its calls to peers'
	// APIs; tests cut it to partition the node. Nil means a plain one.
	Network *replication.Network `json:"-"`

	// Logger receives the node's logs; nil discards them.
	Logger hclog.Logger `json:"-"`
}

// DefaultConfig returns a node listening on the default ports of
// DESIGN.md §9 on loopback.
func DefaultConfig() Config {
	return Config{
		NodeID:            "",
		APIAddr:           "127.0.0.1:8400",
		RaftAddr:          "127.0.0.1:8401",
		GossipAddr:        "127.0.0.1:8402",
		DeadServerTimeout: 30 * time.Second,
		Raft:              replication.DefaultConfig(),
		IdempotencyWindow: 10 * time.Minute,
		ShutdownTimeout:   5 * time.Second,
	}
}

// Validate reports the first setting that cannot work, naming its flag.
func (c Config) Validate() error {
	if c.NodeID == "" {
		return errors.New("server: node id is empty: set -node-id")
	}
	if c.DataDir == "" {
		return errors.New("server: data directory is empty: set -data-dir (or use -dev)")
	}
	if _, _, err := net.SplitHostPort(c.APIAddr); err != nil {
		return fmt.Errorf("server: -api-addr %q is not host:port: %w", c.APIAddr, err)
	}
	if _, _, err := net.SplitHostPort(c.RaftAddr); err != nil {
		return fmt.Errorf("server: -raft-addr %q is not host:port: %w", c.RaftAddr, err)
	}
	if c.Clustered() {
		if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
			return fmt.Errorf("server: -gossip-addr %q is not host:port: %w", c.GossipAddr, err)
		}
	}
	if c.BootstrapExpect < 0 {
		return fmt.Errorf("server: -bootstrap-expect=%d: want a positive number of nodes", c.BootstrapExpect)
	}
	if c.ReadReplica && c.BootstrapExpect > 0 {
		return errors.New("server: a read replica cannot bootstrap the cluster: drop -bootstrap-expect and give -join")
	}
	if c.ReadReplica && len(c.Join) == 0 {
		return errors.New("server: a read replica needs -join=host:port of a cluster member")
	}
	if len(c.ClusterKey) != 0 && len(c.ClusterKey) != 32 {
		return fmt.Errorf("server: cluster key is %d bytes: want 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)", len(c.ClusterKey))
	}
	if host, _, _ := net.SplitHostPort(c.APIAddr); c.Clustered() && c.Advertise == "" && unspecified(host) {
		return fmt.Errorf("server: -api-addr %s listens on all interfaces: set -advertise=HOST so peers know how to reach this node", c.APIAddr)
	}
	return nil
}

// Clustered reports whether the node uses gossip (it joins or bootstraps
// a cluster of several nodes).
func (c Config) Clustered() bool { return len(c.Join) > 0 || c.BootstrapExpect > 0 }

// unspecified reports whether host is empty or a wildcard address.
func unspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}

// advertiseAddr replaces the host of a listen address by the advertised
// host, keeping the port.
func advertiseAddr(listen, host string) string {
	if host == "" {
		return listen
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	return net.JoinHostPort(host, port)
}
