package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/internal/grpcutil"
)

// The health service names of the APIs the agent serves.
const (
	kvService       = "coffer.v1.KV"
	databaseService = "coffer.v1.Database"
	leaseService    = "coffer.v1.Lease"
)

// Agent is a running coffer agent. Create it with New, start it with Start
// and stop it with Shutdown.
type Agent struct {
	cfg    Config
	logger hclog.Logger
	client *api.Client
	// authToken is the token auto-auth holds (nil without auto-auth or
	// before the first login); authed closes at the first login.
	authToken atomic.Pointer[string]
	authed    chan struct{}
	authReady sync.Once
	cache     *api.Cache
	held      *credsStore // the database credentials the agent holds
	file      *cacheFile  // nil without CacheDir

	lis net.Listener
	// metricsLis serves /metrics (nil when Config.MetricsAddr is empty).
	metricsLis net.Listener
	metrics    *agentMetrics
	grpc       *grpc.Server
	health     *health.Server

	started time.Time
	// lastContact is when an upstream node last answered (unix nanos; 0:
	// never).
	lastContact atomic.Int64

	// stopCtx ends with Shutdown: watches stop, the persister stops.
	stopCtx  context.Context
	stopFunc context.CancelFunc
	bg       sync.WaitGroup

	persistMu sync.Mutex // one write of the cache file at a time

	mu           sync.Mutex
	serving      bool
	shutdownOnce sync.Once
	shutdownErr  error
}

// New creates an agent: it checks cfg, loads the cache file (when
// CacheDir is set), creates the upstream client and listens on
// cfg.Listen. It serves after Start. It fails on an invalid configuration,
// a cache file written with another key, or an address in use; a corrupt
// cache file is logged and the agent starts with an empty cache.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	a := &Agent{cfg: cfg, logger: cfg.Logger, started: time.Now(), authed: make(chan struct{})}
	a.stopCtx, a.stopFunc = context.WithCancel(context.Background())

	var restored cacheContents
	if cfg.CacheDir != "" {
		keys, err := deriveKeys(cfg.CacheKey)
		if err != nil {
			return nil, err
		}
		a.file = &cacheFile{dir: cfg.CacheDir, keys: keys, source: cfg.keySource()}
		notes, err := a.file.prepare()
		if err != nil {
			return nil, err
		}
		for _, n := range notes {
			a.logger.Info("cache directory: " + n)
		}
		contents, written, err := a.file.load()
		switch {
		case errors.Is(err, ErrCorruptCacheFile):
			a.logger.Warn("ignoring the cache file: starting with an empty cache", "file", a.file.path(), "error", err)
		case err != nil:
			return nil, err
		default:
			restored = contents
			if n := len(contents.Records) + len(contents.Leases) + len(contents.Static); n > 0 {
				a.logger.Info("read the cache file", "file", a.file.path(), "entries", len(contents.Records),
					"database_credentials", len(contents.Leases), "static_passwords", len(contents.Static), "written", written.Format(time.RFC3339))
			}
		}
	}

	up := cfg.Upstream
	cc := cfg.Cache
	up.Cache = &cc
	client, err := api.New(up)
	if err != nil {
		return nil, err
	}
	a.client, a.cache = client, client.Cache()
	a.held = newCredsStore(a)
	if recs := restored.Records; len(recs) > 0 {
		// A restored entry may have missed changes while the agent was
		// down: it counts as expired, served only while no upstream node
		// answers.
		now := time.Now()
		for i := range recs {
			recs[i].Expires = minTime(recs[i].Expires, now)
		}
		n := a.cache.Restore(recs)
		a.logger.Info("restored cached answers (served only while the cluster is unreachable, until refreshed)", "entries", n, "dropped_past_max_stale", len(recs)-n)
	}
	if len(restored.Leases)+len(restored.Static) > 0 {
		nh, ns := a.held.restore(restored.Leases, restored.Static)
		a.logger.Info("restored database credentials whose lease is still valid (checked with the cluster at their token's first call)",
			"credentials", nh, "static_passwords", ns, "dropped_ended", len(restored.Leases)+len(restored.Static)-nh-ns)
	}

	a.lis, err = listen(cfg.Listen)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("agent: listen on %s: %w (is another agent running? pick another -listen)", cfg.Listen, err)
	}
	a.metrics = newAgentMetrics(a.cache)
	if cfg.MetricsAddr != "" {
		if a.metricsLis, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			client.Close()
			a.lis.Close()
			return nil, fmt.Errorf("agent: -metrics-addr %s: %w (pick another address, or leave it empty to turn it off)", cfg.MetricsAddr, err)
		}
	}
	a.health = health.NewServer()
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, svc := range []string{kvService, databaseService, leaseService} {
		a.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	a.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(grpcutil.RecoverUnary(a.logger, agentInternal), a.unaryInterceptor),
		grpc.ChainStreamInterceptor(grpcutil.RecoverStream(a.logger, agentInternal), a.streamInterceptor),
		grpc.MaxRecvMsgSize(16<<20),
	)
	pb.RegisterKVServer(a.grpc, &kvServer{a: a})
	pb.RegisterSysServer(a.grpc, &sysServer{a: a})
	pb.RegisterDatabaseServer(a.grpc, &dbServer{a: a})
	pb.RegisterLeaseServer(a.grpc, &leaseServer{a: a})
	healthpb.RegisterHealthServer(a.grpc, a.health)
	reflection.Register(a.grpc)
	return a, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Start serves the API in the background and starts writing the cache
// file after changes. It is a no-op after Shutdown.
func (a *Agent) Start() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.serving || a.stopCtx.Err() != nil {
		return
	}
	a.serving = true
	a.logger.Info("serving", "listen", a.lis.Addr().String(), "upstream", strings.Join(a.client.Endpoints(), ","),
		"ttl", a.cfg.Cache.TTL, "max_stale", a.cfg.Cache.MaxStale, "cache_dir", a.cfg.CacheDir)
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		if err := a.grpc.Serve(a.lis); err != nil {
			a.logger.Error("gRPC server stopped", "error", err)
		}
	}()
	if a.file != nil {
		a.bg.Add(1)
		go a.persistLoop()
	}
	if a.metricsLis != nil {
		a.serveMetrics()
	}
	if a.cfg.Login != nil {
		a.bg.Add(1)
		go a.autoAuth()
	}
	a.held.start()
}

// listen opens the agent's listener: TCP, or a unix socket that only the
// agent's user may use (mode 0600; a stale socket file is replaced).
func listen(addr string) (net.Listener, error) {
	path, ok := unixPath(addr)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Addr is the address the agent listens on: host:port, or unix:///path.
func (a *Agent) Addr() string {
	if a.lis.Addr().Network() == "unix" {
		return "unix://" + a.lis.Addr().String()
	}
	return a.lis.Addr().String()
}

// Client is the agent's upstream client.
func (a *Agent) Client() *api.Client { return a.client }

// CacheStats returns the cache's counters.
func (a *Agent) CacheStats() api.CacheStats { return a.cache.Stats() }

// Shutdown stops the agent: the API stops taking calls (watches end at
// once, other calls in flight may finish within ShutdownTimeout or ctx),
// the cache file is written a last time, and the upstream client closes.
// It is idempotent.
func (a *Agent) Shutdown(ctx context.Context) error {
	a.shutdownOnce.Do(func() {
		a.mu.Lock()
		a.stopFunc()
		serving := a.serving
		a.mu.Unlock()
		a.held.close()
		a.health.Shutdown()
		if serving {
			stopped := make(chan struct{})
			go func() { a.grpc.GracefulStop(); close(stopped) }()
			timer := time.NewTimer(a.cfg.ShutdownTimeout)
			select {
			case <-stopped:
			case <-ctx.Done():
				a.grpc.Stop()
			case <-timer.C:
				a.grpc.Stop()
			}
			timer.Stop()
			<-stopped
		} else {
			a.grpc.Stop()
			a.lis.Close()
			if a.metricsLis != nil {
				a.metricsLis.Close()
			}
		}
		a.bg.Wait()
		var errs []error
		if a.file != nil && serving {
			if err := a.Persist(); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, a.client.Close())
		a.shutdownErr = errors.Join(errs...)
		a.logger.Info("stopped")
	})
	return a.shutdownErr
}

// Persist writes the cache file now (without CacheDir it does nothing).
func (a *Agent) Persist() error {
	if a.file == nil {
		return nil
	}
	a.persistMu.Lock()
	defer a.persistMu.Unlock()
	c := cacheContents{Records: a.cache.Records()}
	c.Leases, c.Static = a.held.records()
	if err := a.file.save(c, time.Now()); err != nil {
		return err
	}
	a.logger.Debug("wrote the cache file", "entries", len(c.Records), "database_credentials", len(c.Leases), "static_passwords", len(c.Static))
	return nil
}

// persistLoop writes the cache file after every change, gathering the
// changes of PersistDelay into one write, until Shutdown.
func (a *Agent) persistLoop() {
	defer a.bg.Done()
	changed := a.cache.Changed()
	for {
		select {
		case <-a.stopCtx.Done():
			return
		case <-changed:
		case <-a.held.changed:
		}
		t := time.NewTimer(a.cfg.PersistDelay)
		select {
		case <-a.stopCtx.Done():
			t.Stop()
			return // Shutdown writes the file
		case <-t.C:
		}
		// Ask for the next change before taking the records, so that no
		// change falls between them.
		changed = a.cache.Changed()
		select {
		case <-a.held.changed:
		default:
		}
		if err := a.Persist(); err != nil {
			a.logger.Warn("writing the cache file failed: the previous copy stays", "error", err)
		}
	}
}

// noteContact records that an upstream node answered.
func (a *Agent) noteContact() { a.lastContact.Store(time.Now().UnixNano()) }

// callerContext returns ctx with the caller's token for the upstream
// calls: its bearer token; when it sent no authorization header, the
// agent's own token with UseAgentToken (on a unix socket only), nothing
// otherwise.
func (a *Agent) callerContext(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch len(vals) {
	case 0:
		if !a.cfg.UseAgentToken {
			return nil, ErrNoToken
		}
		return withCallerToken(ctx, a.ownToken()), nil // the agent's own token
	case 1:
		token, ok := strings.CutPrefix(vals[0], "Bearer ")
		if !ok || token == "" {
			return nil, ErrBadAuthorization
		}
		return withCallerToken(ctx, token), nil
	default:
		return nil, ErrBadAuthorization
	}
}

type callerTokenKey struct{}

// withCallerToken returns ctx whose upstream calls carry token
// (api.WithToken) and from which callerToken reads it.
func withCallerToken(ctx context.Context, token string) context.Context {
	return context.WithValue(api.WithToken(ctx, token), callerTokenKey{}, token)
}

// callerToken is the token of the call in ctx ("" for a public call).
func callerToken(ctx context.Context) string {
	t, _ := ctx.Value(callerTokenKey{}).(string)
	return t
}

// agentInternal is what a caller learns of a call that failed inside the
// agent.
const agentInternal = "coffer agent: internal error: see the agent's log"

// admit looks the method up in the route table: a method without a route
// is refused; a call that needs a token goes upstream with the caller's
// (callerContext).
func (a *Agent) admit(ctx context.Context, method string) (context.Context, error) {
	r, ok := route.Lookup(method)
	if !ok {
		return nil, api.StatusError(codes.Unimplemented, pb.ErrorReason_NO_ROUTE, "coffer agent: "+method+" has no route: check the client's version against the agent's")
	}
	if r.Access == route.Public {
		return ctx, nil
	}
	return a.callerContext(ctx)
}

// unaryInterceptor admits the call by its route and maps errors through
// toStatus.
func (a *Agent) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.admit(ctx, info.FullMethod)
	if err != nil {
		return nil, a.toStatus(info.FullMethod, err)
	}
	resp, err := handler(ctx, req)
	if err != nil && api.IsUnauthenticated(err) {
		if token := callerToken(ctx); token != "" {
			// The cluster refused the token: nothing held for it may be
			// served again.
			a.held.dropToken(api.TokenHash(token), "the cluster refused the token")
		}
	}
	if err != nil {
		err = a.toStatus(info.FullMethod, err)
		a.logger.Debug("call failed", "method", info.FullMethod, "code", status.Code(err))
	}
	return resp, err
}

// streamInterceptor does for Watch what unaryInterceptor does for the
// other calls.
func (a *Agent) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.admit(ss.Context(), info.FullMethod)
	if err != nil {
		return a.toStatus(info.FullMethod, err)
	}
	return a.toStatus(info.FullMethod, handler(srv, &tokenStream{ServerStream: ss, ctx: ctx}))
}

// tokenStream is a server stream whose context carries the caller's token.
type tokenStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *tokenStream) Context() context.Context { return s.ctx }
