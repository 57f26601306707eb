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
	// RaftAdvertise is the Raft address peers dial; empty means RaftAddr.
	RaftAdvertise string `json:"raft_advertise,omitempty"`

	// Raft tunes the Raft node; zero fields take replication's defaults.
	// NodeID, DataDir and the addresses above override its own fields.
	Raft replication.Config `json:"-"`

	// IdempotencyWindow is how long a write's request id is remembered.
	IdempotencyWindow time.Duration `json:"-"`
	// ShutdownTimeout bounds the graceful stop of the gRPC server.
	ShutdownTimeout time.Duration `json:"-"`

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
	return nil
}
