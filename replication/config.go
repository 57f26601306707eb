package replication

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config describes one Raft node. The zero value of every duration means the
// default of DefaultConfig.
type Config struct {
	// NodeID is this node's Raft server id; it must be stable across restarts.
	NodeID string
	// DataDir is the node's data directory; Raft keeps raft/raft.db (log and
	// stable store) and raft/snapshots/ under it.
	DataDir string
	// BindAddr is the host:port the Raft transport listens on. Port 0 picks a
	// free port (tests).
	BindAddr string
	// AdvertiseAddr is the host:port peers use to reach this node; empty
	// means the address the transport is bound to.
	AdvertiseAddr string
	// Bootstrap makes a node without Raft state bootstrap a one-voter
	// cluster of itself. A node that has state ignores it.
	Bootstrap bool
	// Logger receives Raft's logs; nil discards them.
	Logger hclog.Logger

	// HeartbeatTimeout, ElectionTimeout and LeaderLeaseTimeout are Raft's
	// failure-detection timings, tuned for a LAN.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds how long a follower waits before it learns the
	// commit index without new entries.
	CommitTimeout time.Duration
	// SnapshotInterval and SnapshotThreshold decide when Raft snapshots the
	// state machine and truncates its log; TrailingLogs is how many entries
	// stay behind a snapshot for slow followers.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// MaxAppendEntries bounds one replication batch (and one FSM batch).
	MaxAppendEntries int
	// SnapshotsRetained is how many snapshots stay on disk.
	SnapshotsRetained int
}

// DefaultConfig returns the production defaults: timings for a LAN that
// elect a new leader well under a second after the old one dies.
func DefaultConfig() Config {
	return Config{
		BindAddr:           "127.0.0.1:8401",
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		SnapshotInterval:   2 * time.Minute,
		SnapshotThreshold:  8192,
		TrailingLogs:       10240,
		MaxAppendEntries:   256,
		SnapshotsRetained:  2,
	}
}

// withDefaults fills every zero field from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = d.LeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = d.CommitTimeout
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.MaxAppendEntries == 0 {
		c.MaxAppendEntries = d.MaxAppendEntries
	}
	if c.SnapshotsRetained == 0 {
		c.SnapshotsRetained = d.SnapshotsRetained
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}

// Validate reports the first field that cannot work, naming it.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.NodeID == "":
		return errors.New("replication: node id is empty: set -node-id")
	case c.DataDir == "":
		return errors.New("replication: data directory is empty: set -data-dir")
	case c.LeaderLeaseTimeout > c.HeartbeatTimeout:
		return fmt.Errorf("replication: leader lease timeout %s exceeds heartbeat timeout %s: lower it", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	case c.ElectionTimeout < c.HeartbeatTimeout:
		return fmt.Errorf("replication: election timeout %s is below heartbeat timeout %s: raise it", c.ElectionTimeout, c.HeartbeatTimeout)
	case c.MaxAppendEntries > 1024:
		return fmt.Errorf("replication: max append entries %d is above Raft's limit of 1024", c.MaxAppendEntries)
	}
	return nil
}
