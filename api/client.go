package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/internal/ports"
	"coffer/internal/tlsutil"
)

// Environment variables read by ConfigFromEnv.
const (
	// EnvAddr holds a comma-separated list of API endpoints: host:port,
	// https://host:port (TLS), http://host:port (plaintext) or
	// unix:///path (see Config.Endpoints).
	EnvAddr = "COFFER_ADDR"
	// EnvToken holds the token sent with every call.
	EnvToken = "COFFER_TOKEN"
	// EnvCACert names the CA certificate that verifies the nodes (the
	// cluster's ca.crt).
	EnvCACert = "COFFER_CACERT"
	// EnvClientCert and EnvClientKey name the client certificate and key
	// presented to the nodes.
	EnvClientCert = "COFFER_CLIENT_CERT"
	EnvClientKey  = "COFFER_CLIENT_KEY"
	// EnvTLSServerName is the name the nodes' certificates must carry
	// (default: each endpoint's host).
	EnvTLSServerName = "COFFER_TLS_SERVER_NAME"
	// DefaultAddr is the endpoint used when none is configured.
	DefaultAddr = ports.APIAddr
)

// Errors of the client. Each message says what to do about it.
var (
	// ErrNoEndpoints is returned by New when the endpoint list is empty.
	ErrNoEndpoints = errors.New("api: no endpoints: set COFFER_ADDR or -address to host:port[,host:port…]")
	// ErrInvalidConfig wraps a Config field that cannot work; the wrapping
	// message names the field.
	ErrInvalidConfig = errors.New("api: invalid client configuration")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("api: client is closed: create a new one with api.New")
	// ErrCacheTooStale means no endpoint answered and the cached value is
	// older than the cache's max_stale budget allows; CacheStaleError
	// carries the details.
	ErrCacheTooStale = errors.New("api: the cluster is unreachable and the cached value is past max_stale")

	// errStopWatch: a watch's consumer no longer takes events.
	errStopWatch = errors.New("api: watch stopped")
)

// Defaults of the Config fields whose zero value means "default".
const (
	DefaultTimeout        = 30 * time.Second
	DefaultAttemptTimeout = 5 * time.Second
	DefaultDialTimeout    = time.Second
	DefaultRetryBudget    = 5 * time.Second
	DefaultDownBackoff    = time.Second
	DefaultMaxDownBackoff = 30 * time.Second
	// DefaultHedgeAfter: a read outstanding this long on one node is also
	// sent to the next (Config.HedgeAfter). Far above a healthy read (a
	// few milliseconds, tens under load) and below what users notice.
	DefaultHedgeAfter = 250 * time.Millisecond
)

// Config configures a Client. The zero value of each field means its
// default; Validate reports a field that cannot work.
type Config struct {
	// Endpoints are the API addresses of the cluster's nodes, each with
	// its own transport: "https://host:port" speaks TLS (with TLS below,
	// or the system's roots when TLS is nil); "http://host:port" speaks
	// plaintext; a bare "host:port" follows TLS (nil: plaintext);
	// "unix:///path" reaches a unix socket (an agent's) in plaintext. A
	// missing port is the API's default (8400). Any other scheme
	// (grpc://, dns:///, …) is refused. A transport that does not match
	// the node's, or a certificate that does not verify, fails the call on
	// that endpoint with a TransportError.
	Endpoints []string
	// Token is sent as "authorization: Bearer <token>" on every call.
	Token string

	// Timeout bounds one call, retries included, when the caller's context
	// has no deadline. Default 30s.
	Timeout time.Duration
	// AttemptTimeout bounds one attempt on one endpoint. An attempt that
	// runs out counts as Unavailable: the call moves on to another
	// endpoint (a write keeps its request id, so this is safe). Default 5s,
	// which covers a follower's 3s wait for a new leader and a node's 5s
	// wait for a read's min_index.
	AttemptTimeout time.Duration
	// LeaderCheck is how long a write to the leader may be outstanding
	// before the client asks the other nodes to tell it as soon as they
	// follow a new leader; once one does, the attempt is abandoned
	// (LEADER_UNRESPONSIVE) and the write is sent to the new leader with
	// the same request id. It bounds what a frozen leader (docker pause, a
	// stalled VM) costs a write: about the election time, instead of
	// AttemptTimeout. Default 200ms (DefaultLeaderCheck).
	LeaderCheck time.Duration
	// DisableLeaderCheck turns the leader check off: a write waits for
	// the leader's answer up to AttemptTimeout.
	DisableLeaderCheck bool
	// HedgeAfter is how long a read may be outstanding on one node before
	// the client also sends it to another, and then to the next every
	// HedgeAfter while none has answered: the first answer wins and the
	// other attempts are cancelled; a node beaten so goes after the others
	// for a while. It bounds what a frozen or stalled node (docker pause,
	// a stalled VM or disk) costs the reads that land on it: about
	// HedgeAfter (the election, when it led), instead of AttemptTimeout.
	// Only reads are hedged; every node answers at the consistency asked
	// for. Default 250ms (DefaultHedgeAfter).
	HedgeAfter time.Duration
	// DisableHedgedReads turns hedging off: a read waits for its node's
	// answer up to AttemptTimeout before it moves on.
	DisableHedgedReads bool
	// DialTimeout bounds how long an attempt waits for a connection to an
	// endpoint before it moves on. Default 1s.
	DialTimeout time.Duration
	// RetryBudget bounds how long a call keeps retrying: once it has
	// passed since the call began, no further attempt starts (the first
	// pass over the endpoints always completes, and the caller's deadline
	// always wins). Default 5s. A call whose pass reached no node at all
	// (every endpoint down) fails without waiting for the budget: the
	// cluster cannot answer, and a cached value may.
	RetryBudget time.Duration
	// Retries, when positive, also bounds the number of attempts a call
	// makes after its first one (over all passes). 0 means no bound other
	// than RetryBudget and the caller's deadline.
	Retries int
	// DownBackoff is how long an endpoint that failed is skipped before it
	// is probed again; it doubles on every failed probe up to
	// MaxDownBackoff. Defaults 1s and 30s.
	DownBackoff    time.Duration
	MaxDownBackoff time.Duration

	// Consistency is the default consistency of reads; a request whose
	// ReadOptions are set uses its own. Default: pb.Consistency_CONSISTENCY_DEFAULT.
	Consistency pb.Consistency
	// MaxStaleness bounds stale reads (those asked for and stale fallbacks)
	// when the request sets no bound: a node that has not heard from a
	// leader for longer refuses. 0 means no bound.
	MaxStaleness time.Duration
	// DisableStaleFallback turns off the stale fallback: by default a
	// default read that fails with Unavailable on every endpoint is
	// retried as a stale read, and its answer says so (ReadMeta.Stale). A
	// linearizable read never falls back, neither to a stale read nor to
	// the cache's stale-if-error: it succeeds linearizably or fails with a
	// retryable error. The cache's stale-if-error has its own switch,
	// CacheConfig.MaxStale.
	DisableStaleFallback bool

	// Cache, when set, turns on the client cache of Get answers (see
	// CacheConfig). Nil means no cache.
	Cache *CacheConfig

	// SyncEndpoints, when positive, is the interval at which the client
	// asks the cluster for its members (Operator.Members, which needs the
	// root token today) and adds the API address of every live member it
	// does not know yet, so that nodes added later are used too. A learned
	// endpoint is spoken to as the first configured endpoint is (its
	// scheme and TLS): the nodes of a cluster all speak TLS or all
	// plaintext. Learned endpoints are never removed; one that goes away
	// is marked down like any other. 0 disables it.
	SyncEndpoints time.Duration

	// Dialer, when set, opens the connections to endpoints (tests count
	// dials with it; a proxy or a unix socket may need it).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)

	// TLS, when set, secures the connections to bare and https://
	// endpoints: the servers are verified against its RootCAs (the
	// system's roots when nil) and ServerName (or each endpoint's host),
	// and its client certificate is presented when the server asks. Nil
	// means plaintext for bare endpoints. http:// endpoints are always
	// plaintext. LoadTLS builds one from files.
	TLS *tls.Config
}

// LoadTLS builds a client TLS configuration from a CA certificate file
// and, optionally, a client certificate and key (reloaded when the files
// change) and the name the servers' certificates must carry (empty: the
// host of each endpoint). Without a CA file the servers are verified
// against the system's roots, and no client certificate can be given.
func LoadTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	if caFile == "" {
		if certFile != "" || keyFile != "" {
			return nil, errors.New("api: a client certificate needs the cluster's CA: set COFFER_CACERT or -ca-cert to its ca.crt")
		}
		return &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}, nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("api: a client certificate needs its key, and the reverse: set both COFFER_CLIENT_CERT and COFFER_CLIENT_KEY (or -client-cert and -client-key)")
	}
	r, err := tlsutil.Load(tlsutil.Files{CA: caFile, Cert: certFile, Key: keyFile})
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	return r.ClientConfig(serverName), nil
}

// ConfigFromEnv returns a Config filled from COFFER_ADDR and COFFER_TOKEN.
func ConfigFromEnv() Config {
	return Config{Endpoints: SplitEndpoints(os.Getenv(EnvAddr)), Token: os.Getenv(EnvToken)}
}

// SplitEndpoints splits a comma-separated endpoint list, dropping blanks
// and trailing slashes. Schemes stay: they choose each endpoint's
// transport (see Config.Endpoints).
func SplitEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSuffix(strings.TrimSpace(e), "/")
		if e != "" {
			out = append(out, e)
		}
	}
	return out
}

// Validate reports the first field of c that cannot work.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return ErrNoEndpoints
	}
	for _, ep := range c.Endpoints {
		if _, _, err := parseEndpoint(ep); err != nil {
			return err
		}
	}
	for name, d := range map[string]time.Duration{
		"Timeout": c.Timeout, "AttemptTimeout": c.AttemptTimeout, "DialTimeout": c.DialTimeout,
		"RetryBudget": c.RetryBudget, "DownBackoff": c.DownBackoff, "MaxDownBackoff": c.MaxDownBackoff,
		"MaxStaleness": c.MaxStaleness, "SyncEndpoints": c.SyncEndpoints, "LeaderCheck": c.LeaderCheck,
		"HedgeAfter": c.HedgeAfter,
	} {
		if d < 0 {
			return fmt.Errorf("%w: %s is negative (%s): use 0 for the default", ErrInvalidConfig, name, d)
		}
	}
	if c.Retries < 0 {
		return fmt.Errorf("%w: Retries is negative (%d): use 0 for the default", ErrInvalidConfig, c.Retries)
	}
	if _, ok := pb.Consistency_name[int32(c.Consistency)]; !ok {
		return fmt.Errorf("%w: unknown Consistency %d: use stale, default or linearizable", ErrInvalidConfig, c.Consistency)
	}
	if c.Cache != nil {
		if err := c.Cache.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// withDefaults fills every zero field with its default.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Timeout, DefaultTimeout)
	def(&c.AttemptTimeout, DefaultAttemptTimeout)
	def(&c.LeaderCheck, DefaultLeaderCheck)
	def(&c.HedgeAfter, DefaultHedgeAfter)
	def(&c.DialTimeout, DefaultDialTimeout)
	def(&c.RetryBudget, DefaultRetryBudget)
	def(&c.DownBackoff, DefaultDownBackoff)
	def(&c.MaxDownBackoff, DefaultMaxDownBackoff)
	c.MaxDownBackoff = max(c.MaxDownBackoff, c.DownBackoff)
	c.Endpoints = append([]string(nil), c.Endpoints...)
	return c
}

// Client talks to a coffer cluster through an endpoint list. It is safe for
// concurrent use. Reads are spread round robin over the healthy endpoints;
// writes go to the leader when the client knows it (from Sys.Status or a
// read's ReadMeta) and to any healthy endpoint otherwise, which forwards
// them. An endpoint that cannot be reached (or is sealed) is skipped for a
// back-off period, then probed with Sys.Status in the background and used
// again once it answers unsealed. Retryable failures (Unavailable) move on
// to the next endpoint, and after a failed pass over all of them the call
// backs off (jittered) and tries again, within the caller's deadline and
// Config.RetryBudget. Writes are retried with the same request id, which
// the cluster deduplicates.
//
// The client remembers the highest index its writes returned and sends it
// as a read's min_index, so that its reads never go back before its own
// writes, whichever node answers (read-your-writes).
type Client struct {
	cfg Config
	// conns are the connections of the configured endpoints, in order.
	conns []*grpc.ClientConn

	// eps is the current endpoint list: the configured ones, then those
	// learned by SyncEndpoints (copy on write under mu).
	eps atomic.Pointer[[]*endpoint]
	// rr spreads calls round robin over the healthy endpoints.
	rr atomic.Uint64
	// leader is the endpoint of the leader, when known.
	leader atomic.Pointer[leaderInfo]
	// lastWrite is the highest index a write of this client returned.
	lastWrite atomic.Uint64
	// lastSeen is the highest applied index a read answer of this client
	// reported: later reads carry it as min_index, so that no read goes
	// back in time, even a stale one on another node.
	lastSeen atomic.Uint64

	cache     *Cache
	tokenHash string // of cfg.Token

	mu            sync.Mutex
	closed        bool
	proberRunning bool
	needLeader    bool
	lastLeaderAsk time.Time
	// round is the latest leader check (leadercheck.go).
	round        *leaderRound
	cacheWatches map[string]*cacheWatch
	// tokenChecked: when the cluster last accepted each token (by hash)
	// whose answers the cache holds (CacheConfig.TokenRecheck); bounded.
	tokenChecked tokenChecks
	wake         chan struct{} // wakes the prober
	bg           context.Context
	stop         context.CancelFunc
	wg           sync.WaitGroup // background goroutines
}

// New creates a client over cfg.Endpoints. It connects lazily: New fails
// only on an invalid configuration or a malformed endpoint.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Client{cfg: cfg, wake: make(chan struct{}, 1), cacheWatches: make(map[string]*cacheWatch)}
	c.bg, c.stop = context.WithCancel(context.Background())
	c.eps.Store(&[]*endpoint{})
	for _, addr := range cfg.Endpoints {
		ep, err := c.dial(addr, false)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.conns = append(c.conns, ep.cc)
		list := append(*c.eps.Load(), ep)
		c.eps.Store(&list)
	}
	if cfg.Cache != nil {
		cache, err := NewCache(*cfg.Cache)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.cache = cache
	}
	c.tokenHash = TokenHash(cfg.Token)
	if cfg.SyncEndpoints > 0 {
		c.wg.Add(1)
		go c.syncLoop()
	}
	return c, nil
}

// dial creates the (lazy) connection of one endpoint, given as
// configured (see Config.Endpoints).
func (c *Client) dial(raw string, synced bool) (*endpoint, error) {
	target, mode, err := parseEndpoint(raw)
	if err != nil {
		return nil, err
	}
	sec := &security{endpoint: raw, addr: target, tls: c.cfg.TLS}
	switch mode {
	case modePlaintext:
		sec.tls = nil
	case modeUnix:
		sec.tls, sec.unix = nil, true
	case modeTLS:
		if sec.tls == nil {
			// The system's roots verify the node.
			sec.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	creds := insecure.NewCredentials()
	if sec.tls != nil {
		creds = credentials.NewTLS(sec.tls)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(&recordingCreds{TransportCredentials: creds, sec: sec}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
		// Fixed flow-control windows turn off gRPC's bandwidth probing
		// (pings and window updates on every burst of small calls).
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(4 << 20),
		// gRPC's own reconnect back-off stays short (at most 1 s) so that
		// a node that comes back is reachable when the prober next asks;
		// the client's endpoint back-off decides how often calls try it.
		// (ClientConn.ResetConnectBackoff would do this on demand, but in
		// grpc-go 1.85 it ranges over the connection map without its lock,
		// a data race.)
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: min(c.cfg.DownBackoff, 100*time.Millisecond), Multiplier: 1.6, Jitter: 0.2, MaxDelay: min(c.cfg.MaxDownBackoff, time.Second),
			},
			MinConnectTimeout: c.cfg.DialTimeout,
		}),
	}
	if c.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(c.cfg.Dialer))
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("api: endpoint %q: %w", raw, err)
	}
	return &endpoint{addr: raw, host: target, sec: sec, cc: cc, synced: synced}, nil
}

// Close stops the client's background work (prober, endpoint sync,
// watches of the cache and of Watch callers) and closes every connection.
// It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	var errs []error
	for _, ep := range c.endpoints() {
		errs = append(errs, ep.cc.Close())
	}
	return errors.Join(errs...)
}

// isClosed reports whether Close was called.
func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// goBackground runs fn in a goroutine that Close waits for. It reports
// false (and runs nothing) once the client is closed.
func (c *Client) goBackground(fn func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// Endpoints returns the current endpoint list: the configured endpoints
// as given, then those learned by SyncEndpoints with the scheme of the
// first configured endpoint (so that the list configures another Client
// the same way).
func (c *Client) Endpoints() []string {
	var out []string
	for _, ep := range c.endpoints() {
		out = append(out, ep.addr)
	}
	return out
}

// LastWriteIndex returns the highest Raft index a write of this client
// returned: the min_index its reads carry.
func (c *Client) LastWriteIndex() uint64 { return c.lastWrite.Load() }

// noteWrite records the index a write returned (read-your-writes).
func (c *Client) noteWrite(index uint64) { raise(&c.lastWrite, index) }

// noteSeen records the applied index a read answer reported.
func (c *Client) noteSeen(index uint64) { raise(&c.lastSeen, index) }

// raise sets v to index when index is higher.
func raise(v *atomic.Uint64, index uint64) {
	for {
		cur := v.Load()
		if index <= cur || v.CompareAndSwap(cur, index) {
			return
		}
	}
}

// outgoing adds the token and a default deadline to ctx.
func (c *Client) outgoing(ctx context.Context) (context.Context, context.CancelFunc) {
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
	}
	return c.withToken(ctx), cancel
}

// withToken adds the call's token to ctx.
func (c *Client) withToken(ctx context.Context) context.Context {
	if token, _ := c.token(ctx); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx
}

// callToken is the token WithToken puts in a context, with its hash.
type callToken struct{ token, hash string }

type callTokenKey struct{}

// WithToken returns a context whose calls carry token instead of the
// client's own (Config.Token). A cached Get is then keyed by that token's
// hash, so that its answer is served only to calls with the same token: a
// process serving several callers (an agent) can share one Client and its
// cache between them. The cache's watches keep using Config.Token.
func WithToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, callTokenKey{}, &callToken{token: token, hash: TokenHash(token)})
}

// token returns the token of a call and its hash.
func (c *Client) token(ctx context.Context) (token, hash string) {
	if t, ok := ctx.Value(callTokenKey{}).(*callToken); ok {
		return t.token, t.hash
	}
	return c.cfg.Token, c.tokenHash
}

// call runs fn against any healthy endpoint, round robin, moving on while
// the answer is retryable (see run). fn must be safe to repeat.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	_, err := c.run(ctx, policy{}, func(ctx context.Context, ep *endpoint, _ bool) error {
		return fn(ctx, ep.cc)
	})
	return err
}

// callNode runs fn against the first endpoint that can be reached, in the
// configured order: calls about one node (init, unseal, seal, status) act
// on the first node of the list, and move on to the next only when that
// one could not be reached at all (so nothing happened there). A node that
// answers, even with an error, is the one acted on.
func (c *Client) callNode(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	ctx, cancel := c.outgoing(ctx)
	defer cancel()
	var err error
	for _, ep := range c.endpoints() {
		if err = c.ready(ctx, ep); err == nil {
			err = c.explain(ctx, ep, fn(ctx, ep.cc))
		}
		if err == nil || ctx.Err() != nil || !unreachable(err, ep) {
			return err
		}
	}
	return err
}

// NewRequestID returns a unique id that makes a write idempotent (see
// route.NewRequestID, the one place ids are made).
func NewRequestID() string { return route.NewRequestID() }
