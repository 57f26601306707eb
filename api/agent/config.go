package agent

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/api"
)

// Defaults of the Config fields whose zero value means "default", and the
// environment variable of the cache key.
const (
	// DefaultListen is the agent's gRPC listen address.
	DefaultListen = "127.0.0.1:8500"
	// DefaultTTL is how long a cached answer is served without asking the
	// cluster.
	DefaultTTL = time.Minute
	// DefaultMaxStale is how long past its TTL a cached answer is served
	// while no upstream node answers.
	DefaultMaxStale = 24 * time.Hour
	// DefaultPersistDelay is how long the agent gathers cache changes
	// before it writes the cache file.
	DefaultPersistDelay = time.Second
	// DefaultNodeID is the node id Sys.Status reports.
	DefaultNodeID = "agent"
	// DefaultShutdownTimeout bounds the graceful stop of the gRPC server.
	DefaultShutdownTimeout = 5 * time.Second
	// DefaultLeaseMargin is how much of a lease must be left for the agent
	// to hand its database credentials out.
	DefaultLeaseMargin = 2 * time.Second
	// DefaultMaxHeldLeases bounds the database credentials the agent holds
	// (one per token and role) and the static-role answers it keeps.
	DefaultMaxHeldLeases = 1024

	// EnvCacheKey holds the base64 cache key when no key file is given.
	EnvCacheKey = "COFFER_AGENT_CACHE_KEY"
	// CacheFileName is the name of the cache file in Config.CacheDir.
	CacheFileName = "cache.v1.enc"
)

// Config configures an Agent. The zero value of each field means its
// default; Validate reports a field that cannot work.
type Config struct {
	// Upstream is the client configuration to the cluster: its endpoints,
	// the agent's own token (used for callers that send none, and for the
	// cache's watches) and its timeouts. Its Cache field must be nil: the
	// agent's cache is configured by Cache below.
	Upstream api.Config
	// Listen is the gRPC listen address: host:port (port 0 picks one), or
	// unix:///path for a unix socket (created mode 0600). Default
	// 127.0.0.1:8500.
	Listen string
	// MetricsAddr, when set, serves the agent's Prometheus metrics at
	// /metrics on this host:port (unauthenticated: keep it private).
	// Default off: two agents on one host would otherwise clash.
	MetricsAddr string
	// UseAgentToken lends the agent's own token (Upstream.Token) to
	// callers that send none, as Vault Agent's use_auto_auth_token does.
	// Only on a unix socket, whose file mode says who may call; otherwise
	// a caller without a token gets nothing.
	UseAgentToken bool
	// Login, when set, is auto-auth: the agent logs in for its service
	// with it at start (an AppRole, JWT or certificate login), keeps the
	// token alive — renewing it, or logging in again before it expires —
	// and uses it as its own token (what UseAgentToken lends).
	Login Login
	// Cache configures the cache of Get answers. Zero fields take their
	// defaults, except that TTL defaults to DefaultTTL and MaxStale to
	// DefaultMaxStale (24h); a negative MaxStale turns stale-if-error off.
	Cache api.CacheConfig
	// CacheDir, when set, keeps an encrypted copy of the cache in
	// CacheDir/cache.v1.enc, loaded at start. It needs CacheKey.
	CacheDir string
	// CacheKey is the 32-byte key of the cache file.
	CacheKey []byte
	// CacheKeySource names where CacheKey came from ("-cache-key-file
	// /etc/coffer/agent.key", "$COFFER_AGENT_CACHE_KEY"), for error
	// messages. Never the key itself.
	CacheKeySource string
	// PersistDelay is how long changes are gathered before the cache file
	// is written. Default 1s.
	PersistDelay time.Duration
	// LeaseMargin is how much of a lease must be left for the agent to
	// hand its database credentials out (and of a static role's password
	// before its next rotation, during an outage): the caller must have
	// time to log in with them. Default 2s.
	LeaseMargin time.Duration
	// MaxHeldLeases bounds the database credentials the agent holds, one
	// per token and dynamic role (a caller beyond it is refused), and the
	// static-role answers it keeps for outages. Default 1024.
	MaxHeldLeases int
	// NodeID is the node id Sys.Status reports. Default "agent".
	NodeID string
	// Version is the version Sys.Status reports.
	Version string
	// ShutdownTimeout bounds the graceful stop of the gRPC server before
	// calls in flight are cut. Default 5s.
	ShutdownTimeout time.Duration
	// Logger receives the agent's logs; nil discards them.
	Logger hclog.Logger
}

// DefaultConfig returns an agent on DefaultListen with the default cache
// settings and no cache directory; the caller fills in Upstream.
func DefaultConfig() Config {
	return Config{
		Listen:          DefaultListen,
		Cache:           api.CacheConfig{TTL: DefaultTTL, MaxStale: DefaultMaxStale},
		PersistDelay:    DefaultPersistDelay,
		LeaseMargin:     DefaultLeaseMargin,
		MaxHeldLeases:   DefaultMaxHeldLeases,
		NodeID:          DefaultNodeID,
		ShutdownTimeout: DefaultShutdownTimeout,
	}
}

// Validate reports the first field of c that cannot work, naming the flag
// that sets it.
func (c Config) Validate() error {
	if c.Upstream.Cache != nil {
		return fmt.Errorf("%w: Upstream.Cache is set: configure the agent's cache with Config.Cache", ErrInvalidConfig)
	}
	if err := c.Upstream.Validate(); err != nil {
		return err
	}
	if path, ok := unixPath(c.Listen); ok {
		if path == "" {
			return fmt.Errorf("%w: -listen %q names no socket path: use unix:///path/agent.sock", ErrInvalidConfig, c.Listen)
		}
	} else if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("%w: -listen %q is not host:port or unix:///path: %v", ErrInvalidConfig, c.Listen, err)
		}
	}
	if c.UseAgentToken {
		if _, ok := unixPath(c.Listen); !ok {
			return fmt.Errorf("%w: -use-agent-token lends the agent's token to every caller: it needs -listen=unix:///path, whose file mode says who may call", ErrInvalidConfig)
		}
		if c.Upstream.Token == "" && c.Login == nil {
			return fmt.Errorf("%w: -use-agent-token needs the agent's own token: set -token, -token-file or $COFFER_TOKEN, or -auth-method", ErrInvalidConfig)
		}
	}
	if err := c.Cache.Validate(); err != nil {
		return err
	}
	if c.PersistDelay < 0 {
		return fmt.Errorf("%w: PersistDelay is negative (%s): use 0 for the default", ErrInvalidConfig, c.PersistDelay)
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("%w: ShutdownTimeout is negative (%s): use 0 for the default", ErrInvalidConfig, c.ShutdownTimeout)
	}
	if c.LeaseMargin < 0 {
		return fmt.Errorf("%w: -lease-margin is negative (%s): use 0 for the default", ErrInvalidConfig, c.LeaseMargin)
	}
	if c.MaxHeldLeases < 0 {
		return fmt.Errorf("%w: -max-held-leases is negative (%d): use 0 for the default", ErrInvalidConfig, c.MaxHeldLeases)
	}
	switch {
	case c.CacheDir != "" && len(c.CacheKey) == 0:
		return ErrNoCacheKey
	case c.CacheDir != "" && len(c.CacheKey) != KeySize:
		return fmt.Errorf("%w: the key from %s is %d bytes", ErrBadCacheKey, c.keySource(), len(c.CacheKey))
	case c.CacheDir == "" && len(c.CacheKey) != 0:
		return fmt.Errorf("%w: a cache key without a cache directory: set -cache-dir too", ErrInvalidConfig)
	}
	return nil
}

// unixPath returns the socket path of a unix:// listen address.
func unixPath(listen string) (string, bool) {
	path, ok := strings.CutPrefix(listen, "unix://")
	return path, ok
}

// withDefaults fills every zero field with its default.
func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Cache.TTL == 0 {
		c.Cache.TTL = DefaultTTL
	}
	if c.Cache.MaxStale == 0 {
		c.Cache.MaxStale = DefaultMaxStale
	}
	if c.PersistDelay == 0 {
		c.PersistDelay = DefaultPersistDelay
	}
	if c.NodeID == "" {
		c.NodeID = DefaultNodeID
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.LeaseMargin == 0 {
		c.LeaseMargin = DefaultLeaseMargin
	}
	if c.MaxHeldLeases == 0 {
		c.MaxHeldLeases = DefaultMaxHeldLeases
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}

// keySource names where the cache key came from.
func (c Config) keySource() string {
	if c.CacheKeySource != "" {
		return c.CacheKeySource
	}
	return "Config.CacheKey"
}

// KeySize is the size of the cache key: 32 bytes (AES-256).
const KeySize = 32

// ParseKey decodes a base64 cache key (standard or URL alphabet, padded or
// not, surrounding white space ignored) of KeySize bytes.
func ParseKey(s string) ([]byte, error) {
	s = string(bytes.TrimSpace([]byte(s)))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil {
			if len(k) != KeySize {
				return nil, fmt.Errorf("%w: it decodes to %d bytes", ErrBadCacheKey, len(k))
			}
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: it is not valid base64", ErrBadCacheKey)
}

// ReadKeyFile reads a cache key file: exactly KeySize raw bytes, or their
// base64 form (white space around it ignored).
func ReadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent: reading the cache key file: %w", err)
	}
	if k, err := ParseKey(string(b)); err == nil {
		return k, nil
	}
	if len(b) == KeySize {
		return b, nil
	}
	return nil, fmt.Errorf("%w: %s holds %d bytes that are neither %d raw bytes nor their base64 form", ErrBadCacheKey, path, len(b), KeySize)
}
