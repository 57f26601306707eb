package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"time"

	"coffer/replication"
	"coffer/server"
)

// EnvClusterKey holds the base64 cluster key when -cluster-key is not given.
const EnvClusterKey = "COFFER_CLUSTER_KEY"

// EnvSealKey holds the static seal key (its base64 or hex text) when the
// node runs -seal=static; it wins over -seal-key-file.
const EnvSealKey = "COFFER_SEAL_KEY"

// sealFlags are the `coffer server` flags of the seal.
type sealFlags struct {
	typ     string
	keyFile string
}

// addSealFlags defines -seal and -seal-key-file on f.
func addSealFlags(f *cmdFlags) *sealFlags {
	s := &sealFlags{}
	f.fs.StringVar(&s.typ, "seal", "shamir", "how the node unseals: shamir (a threshold of unseal shares) or static (by itself, with the static seal key)")
	f.fs.StringVar(&s.keyFile, "seal-key-file", "", "with -seal=static: file holding the static seal key, 32 random bytes raw or as base64 or hex text, the same on every node ($"+EnvSealKey+" holds the text instead and wins)")
	return s
}

// apply copies the seal flags given on the command line into cfg (they
// win over the config file's seal and seal_key_file) and takes the key's
// text from $COFFER_SEAL_KEY under the static seal. The key is read and
// checked by the server, which stays sealed and says why when it cannot
// use it.
func (s *sealFlags) apply(f *cmdFlags, e *env, cfg *server.Config) {
	if f.isSet("seal") {
		cfg.Seal = s.typ
	}
	if f.isSet("seal-key-file") {
		cfg.SealKeyFile = s.keyFile
	}
	if v := e.getenv(EnvSealKey); v != "" && cfg.Seal == server.SealStatic {
		cfg.SealKey = []byte(v)
	}
}

// clusterFlags are the `coffer server` flags for clustering and Raft
// timings.
type clusterFlags struct {
	gossipAddr        string
	advertise         string
	join              string
	bootstrapExpect   int
	readReplica       bool
	clusterKey        string
	deadServerTimeout time.Duration
	heartbeatTimeout  time.Duration
	electionTimeout   time.Duration
	leaseTimeout      time.Duration
	snapshotInterval  time.Duration
	snapshotThreshold uint64
	trailingLogs      uint64
	raftLogStore      string
}

// addClusterFlags defines the clustering flags on f, with def's defaults.
func addClusterFlags(f *cmdFlags, def server.Config) *clusterFlags {
	c := &clusterFlags{}
	f.fs.StringVar(&c.gossipAddr, "gossip-addr", server.DefaultGossip().BindAddr, "gossip (memberlist) listen address host:port, TCP and UDP")
	f.fs.StringVar(&c.advertise, "advertise", "", "host peers and clients use to reach this node when it listens on 0.0.0.0 or behind NAT (e.g. coffer1); each address keeps its listen port")
	f.fs.StringVar(&c.join, "join", "", "comma-separated gossip addresses host:port of other nodes, retried until one answers")
	f.fs.IntVar(&c.bootstrapExpect, "bootstrap-expect", 0, "bootstrap the cluster together with the other nodes once gossip shows this many (give every node the same N)")
	f.fs.BoolVar(&c.readReplica, "read-replica", false, "join as a non-voter that serves reads and never votes (needs -join)")
	f.fs.StringVar(&c.clusterKey, "cluster-key", "", "base64 key of 32 bytes that encrypts gossip, the same on every node (overrides $"+EnvClusterKey+"; prefer the environment: a flag shows in the process list)")
	f.fs.DurationVar(&c.deadServerTimeout, "dead-server-timeout", replication.DefaultDeadServerTimeout, "how long a member must be dead before the leader removes it from Raft (only while quorum stays healthy)")
	f.fs.DurationVar(&c.heartbeatTimeout, "raft-heartbeat-timeout", 0, "Raft heartbeat timeout; 0 means the default ("+def.HeartbeatTimeout.String()+")")
	f.fs.DurationVar(&c.electionTimeout, "raft-election-timeout", 0, "Raft election timeout; 0 means the default ("+def.ElectionTimeout.String()+")")
	f.fs.DurationVar(&c.leaseTimeout, "raft-lease-timeout", 0, "Raft leader lease timeout, at most the heartbeat timeout; 0 means the default ("+def.LeaderLeaseTimeout.String()+")")
	f.fs.DurationVar(&c.snapshotInterval, "raft-snapshot-interval", 0, "how often (randomised up to twice this) Raft checks whether -raft-snapshot-threshold entries piled up and snapshots; longer means fewer snapshots under a heavy write load but a larger log and more memory; 0 means the default ("+def.SnapshotInterval.String()+")")
	f.fs.Uint64Var(&c.snapshotThreshold, "raft-snapshot-threshold", 0, fmt.Sprintf("log entries since the last snapshot that make Raft snapshot; 0 means the default: %d, grown with the state to one entry per %d bytes of the last snapshot (at most %d); a value set here stays fixed", def.SnapshotThreshold, def.SnapshotBytesPerEntry, replication.MaxAdaptiveThreshold))
	f.fs.Uint64Var(&c.trailingLogs, "raft-trailing-logs", 0, fmt.Sprintf("log entries kept behind a snapshot, so that a follower that lags by fewer catches up from the log instead of a snapshot; 0 means the default (%d)", def.TrailingLogs))
	f.fs.StringVar(&c.raftLogStore, "raft-log-store", def.RaftLogStore, "where Raft keeps its log: "+replication.LogStoreBoltDB+" (raft/raft.db) or "+replication.LogStoreWAL+" (segment files in raft/wal/, one fsync per append); a data directory written with the other has its log moved across at start")
	return c
}

// fileGossip is what the config file says about gossip, in its flat keys.
type fileGossip struct {
	addr    string
	join    []string
	key     string // base64, decoded after the flag and the environment
	addrSet bool
	joinSet bool
}

// apply copies the clustering flags given on the command line into cfg
// (they win over the config file, whose gossip keys are in file), resolves
// the cluster key (flag, then $COFFER_CLUSTER_KEY, then the file), turns
// gossip on when the node joins or bootstraps a cluster, and checks the
// settings it can check without starting anything.
func (c *clusterFlags) apply(f *cmdFlags, e *env, cfg *server.Config, file fileGossip) error {
	set := f.isSet
	g := server.DefaultGossip()
	if file.addrSet {
		g.BindAddr = file.addr
	}
	if set("gossip-addr") {
		g.BindAddr = c.gossipAddr
	}
	if file.joinSet {
		g.Join = file.join
	}
	if set("join") {
		g.Join = splitJoin(c.join)
	}
	g.DeadServerTimeout = c.deadServerTimeout
	if set("advertise") {
		cfg.Advertise = c.advertise
	}
	if set("bootstrap-expect") {
		cfg.BootstrapExpect = c.bootstrapExpect
	}
	if set("read-replica") {
		cfg.ReadReplica = c.readReplica
	}

	for _, j := range g.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("invalid -join address %q: want host:port[,host:port…] (the other nodes' -gossip-addr)", j)}
		}
	}
	if cfg.BootstrapExpect < 0 {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -bootstrap-expect=%d: want the number of nodes that bootstrap the cluster together", cfg.BootstrapExpect)}
	}
	if g.DeadServerTimeout < 0 {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -dead-server-timeout=%s: want a positive duration such as 30s", g.DeadServerTimeout)}
	}

	key, err := resolveClusterKey(c.clusterKey, set("cluster-key"), e.getenv(EnvClusterKey), file.key)
	if err != nil {
		return err
	}
	g.ClusterKey = key
	// Gossip only for a node that joins or bootstraps a cluster; a node
	// given neither is a one-node cluster.
	cfg.Gossip = nil
	if len(g.Join) > 0 || cfg.BootstrapExpect > 0 {
		cfg.Gossip = g
	}
	return c.applyRaftTimings(set, cfg)
}

// applyRaftTimings sets the Raft timings and snapshot settings given on
// the command line. A
// heartbeat timeout given alone also bounds the lease (which must not
// exceed it) and raises the election timeout (which must not be below it),
// so that one flag is enough to speed Raft up or slow it down.
func (c *clusterFlags) applyRaftTimings(set func(string) bool, cfg *server.Config) error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"raft-heartbeat-timeout", c.heartbeatTimeout},
		{"raft-election-timeout", c.electionTimeout},
		{"raft-lease-timeout", c.leaseTimeout},
		{"raft-snapshot-interval", c.snapshotInterval},
	} {
		if d.v < 0 {
			return &cliError{code: 1, msg: fmt.Sprintf("invalid -%s=%s: want a positive duration, or 0 for the default", d.name, d.v)}
		}
	}
	r := &cfg.Config
	if set("raft-log-store") {
		r.RaftLogStore = c.raftLogStore
	}
	if !replication.ValidLogStore(r.RaftLogStore) {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -raft-log-store=%q (or raft_log_store in -config): want %s or %s", r.RaftLogStore, replication.LogStoreWAL, replication.LogStoreBoltDB)}
	}
	if c.snapshotInterval > 0 {
		r.SnapshotInterval = c.snapshotInterval
	}
	if c.snapshotThreshold > 0 {
		r.SnapshotThreshold = c.snapshotThreshold
	}
	if c.trailingLogs > 0 {
		r.TrailingLogs = c.trailingLogs
	}
	if c.heartbeatTimeout > 0 {
		r.HeartbeatTimeout = c.heartbeatTimeout
		if !set("raft-lease-timeout") && r.LeaderLeaseTimeout > r.HeartbeatTimeout {
			r.LeaderLeaseTimeout = r.HeartbeatTimeout / 2
		}
		if !set("raft-election-timeout") && r.ElectionTimeout < r.HeartbeatTimeout {
			r.ElectionTimeout = r.HeartbeatTimeout
		}
	}
	if c.electionTimeout > 0 {
		r.ElectionTimeout = c.electionTimeout
	}
	if c.leaseTimeout > 0 {
		r.LeaderLeaseTimeout = c.leaseTimeout
	}
	if r.HeartbeatTimeout > 0 && r.LeaderLeaseTimeout > r.HeartbeatTimeout {
		return &cliError{code: 1, msg: fmt.Sprintf("-raft-lease-timeout=%s exceeds -raft-heartbeat-timeout=%s: lower the lease or raise the heartbeat timeout", r.LeaderLeaseTimeout, r.HeartbeatTimeout)}
	}
	if r.HeartbeatTimeout > 0 && r.ElectionTimeout > 0 && r.ElectionTimeout < r.HeartbeatTimeout {
		return &cliError{code: 1, msg: fmt.Sprintf("-raft-election-timeout=%s is below -raft-heartbeat-timeout=%s: raise it", r.ElectionTimeout, r.HeartbeatTimeout)}
	}
	return nil
}

// splitJoin splits a comma-separated -join list, dropping blanks.
func splitJoin(s string) []string {
	var out []string
	for _, j := range strings.Split(s, ",") {
		if j = strings.TrimSpace(j); j != "" {
			out = append(out, j)
		}
	}
	return out
}

// resolveClusterKey picks the cluster key: the flag when it was given,
// else the environment, else the config file; nil when none is set. The
// key must decode from base64 to exactly 32 bytes. Errors name the source
// but never the key.
func resolveClusterKey(flagVal string, flagSet bool, envVal, fileVal string) ([]byte, error) {
	var src, val string
	switch {
	case flagSet:
		src, val = "-cluster-key", flagVal
	case envVal != "":
		src, val = "$"+EnvClusterKey, envVal
	case fileVal != "":
		src, val = "cluster_key in -config", fileVal
	default:
		return nil, nil
	}
	key, err := decodeClusterKey(val)
	if err != nil {
		return nil, &cliError{code: 1, msg: fmt.Sprintf("invalid %s: %v", src, err)}
	}
	return key, nil
}

// decodeClusterKey decodes a base64 (standard or URL alphabet, padding
// optional) key of exactly 32 bytes. The error never contains the key.
func decodeClusterKey(s string) ([]byte, error) {
	const want = "want 32 bytes base64, e.g. from `openssl rand -base64 32`"
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("empty: %s", want)
	}
	var key []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("not valid base64: %s", want)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("decodes to %d bytes: %s", len(key), want)
	}
	return key, nil
}
