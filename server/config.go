package server

import (
	"errors"
	"fmt"
	"net"
	"time"

	"coffer/internal/ports"
	"coffer/internal/tlsutil"
	"coffer/replication"
	"coffer/seal"
)

// Config configures one coffer node: one tree, filled by flags, the
// config file and tests alike. DefaultConfig gives the production
// defaults.
type Config struct {
	// Config is the node's identity, its Raft node and its gossip: NodeID
	// and DataDir, the Raft listen and advertised addresses (BindAddr,
	// AdvertiseAddr), the Raft timings, Gossip (nil: a one-node cluster
	// without gossip), BootstrapExpect, ReadReplica, Network and Logger.
	// New fills in what the server owns: the advertised API address, the
	// version, the sealed flag and the caught-up check.
	replication.Config

	// APIAddr is the gRPC listen address (host:port; port 0 picks one).
	APIAddr string `json:"api_addr"`
	// HTTPAddr is the listen address of the Vault-compatible HTTP API
	// (host:port; port 0 picks one); empty: none. It serves TLS with the
	// API's certificates.
	HTTPAddr string `json:"http_addr,omitempty"`
	// Advertise is the host peers and clients should use to reach this
	// node when it listens on 0.0.0.0 or behind NAT (e.g. "coffer1"); each
	// advertised address (API, Raft, gossip) keeps its listen port unless
	// set on its own.
	Advertise string `json:"advertise,omitempty"`
	// PprofAddr, when set, serves Go's pprof profiles over HTTP on this
	// address (keep it on loopback: profiles show memory contents' shape).
	PprofAddr string `json:"pprof_addr,omitempty"`
	// MetricsAddr, when set, serves the node's Prometheus metrics at
	// /metrics on this address, without authentication (an operator's
	// listener: keep it private). The CLI's default is 127.0.0.1:8405.
	MetricsAddr string `json:"metrics_addr,omitempty"`

	// CertsDir holds ca.crt, node.crt and node.key (`coffer cert`). With
	// it, or the three files below, the API serves TLS and every
	// node-to-node channel (Raft, forwarding, read index, peer status)
	// runs over mutual TLS that demands a node certificate of the CA.
	CertsDir string `json:"certs_dir,omitempty"`
	// TLSCertFile, TLSKeyFile and TLSCAFile name the node's certificate,
	// key and CA one by one (Vault's names); each overrides CertsDir's.
	TLSCertFile string `json:"tls_cert_file,omitempty"`
	TLSKeyFile  string `json:"tls_key_file,omitempty"`
	TLSCAFile   string `json:"tls_ca_file,omitempty"`
	// TLSRequireClientCert makes the API demand a client certificate of
	// the CA from every caller.
	TLSRequireClientCert bool `json:"tls_require_client_cert,omitempty"`
	// Insecure runs the node without TLS: its API and its node-to-node
	// traffic travel in clear, and anyone who reaches it first may
	// initialize it. A node without certificates refuses to start unless
	// told so (tests, -dev, experiments on one machine).
	Insecure bool `json:"insecure,omitempty"`

	// MaxInflightBytes bounds the request bytes the node holds at once:
	// calls past it wait a moment, then are refused with OVERLOADED (see
	// inflight.go). Zero means DefaultMaxInflightBytes; it must hold the
	// largest request, MaxRequestSize.
	MaxInflightBytes int64 `json:"max_inflight_bytes,omitempty"`

	// MaxLeases bounds the live leases of dynamic credentials in the whole
	// cluster (the leader checks it when it issues; a role's max_leases
	// bounds its own). Zero means DefaultMaxLeases; negative, no bound.
	MaxLeases int64 `json:"max_leases,omitempty"`
	// LeaseIntentWindow is how long a lease may stay an unconfirmed
	// intent (the database user is created within its first half) before
	// the leader revokes it; 0: DefaultLeaseIntentWindow.
	LeaseIntentWindow time.Duration `json:"-"`

	// AuditFiles are the node's audit devices: one JSON line per request
	// and per response in each file. A call no device can record is
	// refused. Only the node's configuration names them, never the API.
	AuditFiles []string `json:"audit_files,omitempty"`
	// AuditTimeout is how long a device may take to record one line before
	// it counts as failed (0: audit.DefaultTimeout, 2 s).
	AuditTimeout time.Duration `json:"-"`

	// Snapshots schedules snapshot files written by whichever node leads
	// (-snapshot-interval, -snapshot-dir, -snapshot-retain); off unless
	// Interval and Dir are set. See snapshots.go.
	Snapshots SnapshotSchedule `json:"-"`
	// Seal is how the node gets the key that opens the root key when it
	// starts: SealShamir ("" too), from a threshold of unseal shares, or
	// SealStatic, from the static seal key, by itself (auto-unseal).
	Seal string `json:"seal,omitempty"`
	// SealKeyFile (SealStatic) is the file holding the static seal key:
	// 32 raw bytes, or their base64 or hex text. SealKey, when set, is the
	// key's text itself ($COFFER_SEAL_KEY) and wins over the file; New
	// zeroes it once it has read it. A file
	// that is missing or does not hold the cluster's key leaves the node
	// sealed, saying so in one log line and in its status.
	SealKeyFile string `json:"seal_key_file,omitempty"`
	SealKey     []byte `json:"-"`

	// IdempotencyWindow is how long a write's request id is remembered.
	IdempotencyWindow time.Duration `json:"-"`
	// ShutdownTimeout bounds the graceful stop of the gRPC server.
	ShutdownTimeout time.Duration `json:"-"`
}

// SnapshotSchedule configures scheduled snapshots. Give it to every
// voter: only the leader takes them, so a new leader continues the
// schedule.
type SnapshotSchedule struct {
	// Interval is the time between two snapshots; 0: none.
	Interval time.Duration
	// Dir is where this node writes them (created 0700 at start when
	// missing). Nodes may share it (e.g. a network file system): names
	// carry the node id, each node cleans up only its own temporary
	// files, and retention keeps the newest Retain of all.
	Dir string
	// Retain is how many snapshots Dir keeps (the newest); 0 means
	// DefaultSnapshotRetain.
	Retain int
}

// DefaultSnapshotRetain is how many scheduled snapshots a directory keeps
// unless -snapshot-retain says otherwise.
const DefaultSnapshotRetain = 24

// MinSnapshotInterval is the shortest -snapshot-interval.
const MinSnapshotInterval = time.Second

// Enabled reports whether snapshots are scheduled.
func (s SnapshotSchedule) Enabled() bool { return s.Interval > 0 && s.Dir != "" }

// Validate reports the first scheduled-snapshot setting that cannot work.
func (s SnapshotSchedule) Validate() error {
	switch {
	case s.Interval < 0:
		return fmt.Errorf("server: -snapshot-interval=%s: want a positive duration (e.g. 1h), or 0 for no scheduled snapshots", s.Interval)
	case s.Interval > 0 && s.Interval < MinSnapshotInterval:
		return fmt.Errorf("server: -snapshot-interval=%s is below %s: take them less often", s.Interval, MinSnapshotInterval)
	case s.Interval > 0 && s.Dir == "":
		return errors.New("server: -snapshot-interval needs -snapshot-dir=DIR, where the leader writes them")
	case s.Interval == 0 && s.Dir != "":
		return errors.New("server: -snapshot-dir needs -snapshot-interval=D (e.g. 1h), how often the leader takes one")
	case s.Retain < 0:
		return fmt.Errorf("server: -snapshot-retain=%d: want how many snapshots to keep (at least 1), or 0 for the default (%d)", s.Retain, DefaultSnapshotRetain)
	}
	return nil
}

// DefaultConfig returns a node listening on the default ports of
// DESIGN.md §9 on loopback, with no gossip (a one-node cluster).
func DefaultConfig() Config {
	return Config{
		Config:            replication.DefaultConfig(),
		APIAddr:           ports.APIAddr,
		MaxInflightBytes:  DefaultMaxInflightBytes,
		MaxLeases:         DefaultMaxLeases,
		IdempotencyWindow: 10 * time.Minute,
		ShutdownTimeout:   5 * time.Second,
	}
}

// Seal types of Config.Seal.
const (
	SealShamir = seal.TypeShamir
	SealStatic = seal.TypeStatic
)

// DefaultMaxLeases is the cluster's bound on live leases unless
// -max-leases says otherwise.
const DefaultMaxLeases = 1_000_000

// DefaultLeaseIntentWindow is how long an unconfirmed lease intent waits
// before the leader revokes it.
const DefaultLeaseIntentWindow = 10 * time.Second

// DefaultGossip returns the gossip settings of a clustered node: the
// default gossip address, memberlist's LAN timings.
func DefaultGossip() *replication.GossipConfig {
	return &replication.GossipConfig{BindAddr: ports.GossipAddr}
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
	if _, _, err := net.SplitHostPort(c.HTTPAddr); c.HTTPAddr != "" && err != nil {
		return fmt.Errorf("server: -http-addr %q is not host:port: %w", c.HTTPAddr, err)
	}
	if _, _, err := net.SplitHostPort(c.BindAddr); c.BindAddr != "" && err != nil {
		return fmt.Errorf("server: -raft-addr %q is not host:port: %w", c.BindAddr, err)
	}
	if !replication.ValidLogStore(c.RaftLogStore) {
		return fmt.Errorf("server: -raft-log-store=%q is not a log store: want %s or %s", c.RaftLogStore, replication.LogStoreWAL, replication.LogStoreBoltDB)
	}
	if g := c.Gossip; g != nil {
		if _, _, err := net.SplitHostPort(g.BindAddr); err != nil {
			return fmt.Errorf("server: -gossip-addr %q is not host:port: %w", g.BindAddr, err)
		}
		if len(g.Join) == 0 && c.BootstrapExpect == 0 {
			return errors.New("server: a clustered node needs -join=host:port of a member, or -bootstrap-expect=N")
		}
		if len(g.ClusterKey) == 0 {
			return errors.New("server: a node that joins or bootstraps a cluster needs the gossip key, the same on every node (without it anyone who reaches the gossip port can join): set $COFFER_CLUSTER_KEY (or -cluster-key) to 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`")
		}
		if len(g.ClusterKey) != 32 {
			return fmt.Errorf("server: cluster key is %d bytes: want 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)", len(g.ClusterKey))
		}
	}
	if c.TLSEnabled() {
		f := c.TLSFiles()
		if f.Cert == "" || f.Key == "" || f.CA == "" {
			return errors.New("server: TLS needs a certificate, its key and the CA: set -certs-dir (or all of -tls-cert-file, -tls-key-file and -tls-ca-file)")
		}
	} else if c.TLSRequireClientCert {
		return errors.New("server: -tls-require-client-cert needs TLS: set -certs-dir")
	}
	if c.MaxInflightBytes < 0 || (c.MaxInflightBytes > 0 && c.MaxInflightBytes < MaxRequestSize) {
		return fmt.Errorf("server: -max-inflight-bytes=%d cannot hold the largest request (%d bytes): give at least that, or 0 for the default (%d)", c.MaxInflightBytes, MaxRequestSize, DefaultMaxInflightBytes)
	}
	if c.AuditTimeout < 0 {
		return fmt.Errorf("server: -audit-timeout=%s: want a positive duration (e.g. 2s)", c.AuditTimeout)
	}
	for _, f := range c.AuditFiles {
		if f == "" {
			return errors.New("server: an -audit-file is empty: give the path of a file")
		}
	}
	if err := c.Snapshots.Validate(); err != nil {
		return err
	}
	switch c.Seal {
	case "", SealShamir:
		if c.SealKeyFile != "" || len(c.SealKey) > 0 {
			return errors.New("server: a static seal key is set but the seal is Shamir: pass -seal=static to unseal with it, or drop -seal-key-file (and $COFFER_SEAL_KEY)")
		}
	case SealStatic:
		if c.SealKeyFile == "" && len(c.SealKey) == 0 {
			return errors.New("server: -seal=static needs the static seal key: set -seal-key-file=PATH (32 random bytes, raw or base64 or hex) or $COFFER_SEAL_KEY")
		}
	default:
		return fmt.Errorf("server: -seal=%q is unknown: want shamir or static", c.Seal)
	}
	if c.BootstrapExpect < 0 {
		return fmt.Errorf("server: -bootstrap-expect=%d: want a positive number of nodes", c.BootstrapExpect)
	}
	if c.ReadReplica && c.BootstrapExpect > 0 {
		return errors.New("server: a read replica cannot bootstrap the cluster: drop -bootstrap-expect and give -join")
	}
	if c.ReadReplica && (c.Gossip == nil || len(c.Gossip.Join) == 0) {
		return errors.New("server: a read replica needs -join=host:port of a cluster member")
	}
	if c.BootstrapExpect > 0 && c.Gossip == nil {
		return errors.New("server: -bootstrap-expect needs gossip: give -gossip-addr (and -join to find the others)")
	}
	if host, _, _ := net.SplitHostPort(c.APIAddr); c.Clustered() && c.Advertise == "" && unspecified(host) {
		return fmt.Errorf("server: -api-addr %s listens on all interfaces: set -advertise=HOST so peers know how to reach this node", c.APIAddr)
	}
	if !c.TLSEnabled() && !c.Insecure {
		return errors.New("server: no certificates: create them with `coffer cert create-ca` and `coffer cert create-node` and start with -certs-dir=DIR, or pass -insecure to run in plaintext (tests and local experiments only)")
	}
	if c.TLSEnabled() && c.Insecure {
		return errors.New("server: -insecure and certificates exclude each other: drop -insecure to run with TLS")
	}
	return nil
}

// TLSEnabled reports whether the node has TLS material configured.
func (c Config) TLSEnabled() bool {
	return c.CertsDir != "" || c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSCAFile != ""
}

// TLSFiles is the node's TLS material: CertsDir's files, each overridden
// by its own setting.
func (c Config) TLSFiles() tlsutil.Files {
	f := tlsutil.Files{}
	if c.CertsDir != "" {
		f = tlsutil.NodeFiles(c.CertsDir)
	}
	if c.TLSCertFile != "" {
		f.Cert = c.TLSCertFile
	}
	if c.TLSKeyFile != "" {
		f.Key = c.TLSKeyFile
	}
	if c.TLSCAFile != "" {
		f.CA = c.TLSCAFile
	}
	return f
}

// Clustered reports whether the node gossips (it joins or bootstraps a
// cluster of several nodes).
func (c Config) Clustered() bool { return c.Gossip != nil }

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
