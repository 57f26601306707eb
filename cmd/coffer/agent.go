package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"coffer/api"
	"coffer/api/agent"
	pb "coffer/api/cofferpb"
)

// agentOpts is a parsed `coffer agent` command line.
type agentOpts struct {
	cfg  agent.Config // without Logger
	logs logSettings
	// warnings are logged once the logger exists.
	warnings []string
}

// parseAgent parses the flags of `coffer agent` and fills the agent's
// configuration from the environment and the flags (flags win). It starts
// nothing.
func parseAgent(e *env, args []string) (*agentOpts, error) {
	f := newFlags("coffer agent", "[flags]", `
Run a local caching proxy beside your services. It serves coffer's API on
-listen, in plaintext, so that services and the CLI talk to it exactly as to
a node (COFFER_ADDR=http://`+agent.DefaultListen+`): reads go to the cluster
at COFFER_ADDR / -address through a cache, writes and watches pass through.

Each caller's token (COFFER_TOKEN of the caller) is used for its calls, and
a cached value is served only to callers with the token that read it. A
caller without a token gets nothing, unless the agent runs with
-use-agent-token on a unix socket (-listen=unix:///path, mode 0600): then it
lends its own token (COFFER_TOKEN, -token or -token-file) to callers that
send none, and the socket's file mode says who may call. With -auth-method
(approle, jwt or cert; unix socket only) the agent logs in for its service
itself and lends that token, renewing it or logging in again before it
ends.

A token's cached values are served for -token-recheck after the cluster last
accepted the token; then the next read asks the cluster, and a token it
refuses (revoked, expired) loses every cached value at once. When no node
answers, cached values are served, marked stale with their age, up to
-max-stale past their -ttl; then reads fail with a clear error. During such
a full outage the agent cannot learn of a revocation: by design, a revoked
token's values stay servable within -max-stale.

Database credentials (coffer database creds ROLE through the agent) are
fetched once per token and role and handed to every caller with that token
while their lease runs; the agent renews the lease at two thirds of its
remaining TTL and fetches new credentials before its max TTL (when 10-20 %
of its life is left). When no node answers, the credentials it holds are
served only while at least -lease-margin of their lease is left, never
after; a static role's password (database static-creds) until the role's
next rotation.

-cache-dir keeps an encrypted copy of the cache, and of the database
credentials the agent holds while their lease runs, on disk (AES-256-GCM;
key: 32 bytes, raw or base64, from -cache-key-file or base64 in
$`+agent.EnvCacheKey+`), so an agent restarted during an outage still
serves. Stop it with SIGINT or SIGTERM.`).withClient()
	listen := f.fs.String("listen", agent.DefaultListen, "gRPC listen address of the agent: host:port, or unix:///path for a unix socket (mode 0600)")
	metricsAddr := f.fs.String("metrics-addr", "", "serve the agent's Prometheus metrics at /metrics on this host:port (unauthenticated: keep it private; default off)")
	useAgentToken := f.fs.Bool("use-agent-token", false, "lend the agent's own token to callers that send none (needs -listen=unix:///path)")
	tokenFile := f.fs.String("token-file", "", "read the agent's own token from this file (instead of -token or $"+api.EnvToken+")")
	cacheDir := f.fs.String("cache-dir", "", "keep an encrypted copy of the cache in this directory (needs a key)")
	keyFile := f.fs.String("cache-key-file", "", "file with the 32-byte cache key, raw or base64 (default: base64 in $"+agent.EnvCacheKey+")")
	maxStale := f.fs.Duration("max-stale", agent.DefaultMaxStale, "serve cached values this long past their TTL while no node answers; 0 never serves them stale")
	ttl := f.fs.Duration("ttl", agent.DefaultTTL, "serve a cached value this long without asking the cluster")
	recheck := f.fs.Duration("token-recheck", api.DefaultTokenRecheck, "serve a token's cached values this long after the cluster last accepted the token; then ask again, and drop them all when it refuses (revoked, expired)")
	entries := f.fs.Int("cache-entries", api.DefaultCacheEntries, "most cached answers kept (least recently used dropped first)")
	leaseMargin := f.fs.Duration("lease-margin", agent.DefaultLeaseMargin, "hand database credentials out only while at least this much of their lease is left (of a static password, before its next rotation)")
	maxHeld := f.fs.Int("max-held-leases", agent.DefaultMaxHeldLeases, "most database credentials held (one per token and role); a caller beyond it is refused")
	authMethod := f.fs.String("auth-method", "", "log in for the service and lend that token on the unix socket: approle, jwt or cert (renewed, or logged in again, before it expires)")
	roleIDFile := f.fs.String("role-id-file", "", "with -auth-method=approle: file holding the role_id")
	secretIDFile := f.fs.String("secret-id-file", "", "with -auth-method=approle: file holding the secret_id")
	jwtFile := f.fs.String("jwt-file", "", "with -auth-method=jwt: file holding the JWT, read at every login (e.g. /var/run/secrets/kubernetes.io/serviceaccount/token)")
	authRole := f.fs.String("auth-role", "", "with -auth-method=jwt: the JWT role; with -auth-method=cert: the certificate role (default: the first that matches)")
	lf := addLogFlags(f)
	args, err := f.parse(e, args)
	if err != nil {
		return nil, err
	}
	if err := f.wantArgs(args); err != nil {
		return nil, err
	}
	logs, err := parseLogSettings(lf.level, "-log-level", lf.format, "-log-format")
	if err != nil {
		return nil, err
	}
	if *ttl <= 0 {
		return nil, usageErrorf(f.name, "-ttl=%s: want a positive duration such as 1m", *ttl)
	}
	if *maxStale < 0 {
		return nil, usageErrorf(f.name, "-max-stale=%s: want 0 or a positive duration such as 24h", *maxStale)
	}
	if *recheck <= 0 {
		return nil, usageErrorf(f.name, "-token-recheck=%s: want a positive duration such as 5s", *recheck)
	}
	if *entries <= 0 {
		return nil, usageErrorf(f.name, "-cache-entries=%d: want a positive number", *entries)
	}
	if *leaseMargin <= 0 {
		return nil, usageErrorf(f.name, "-lease-margin=%s: want a positive duration such as 2s", *leaseMargin)
	}
	if *maxHeld <= 0 {
		return nil, usageErrorf(f.name, "-max-held-leases=%d: want a positive number", *maxHeld)
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		return nil, usageErrorf(f.name, "-listen %q is not host:port", *listen)
	}

	up, err := f.clientConfig(e)
	if err != nil {
		return nil, err
	}
	o := &agentOpts{logs: logs}
	if f.isSet("token-file") {
		if f.isSet("token") {
			return nil, usageErrorf(f.name, "give -token or -token-file, not both")
		}
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("reading -token-file: %v", err)}
		}
		warnIfShared(*tokenFile, "-token-file", &o.warnings)
		up.Token = strings.TrimSpace(string(b))
		if up.Token == "" {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("-token-file %s is empty: put the agent's token in it", *tokenFile)}
		}
	}
	for _, ep := range up.Endpoints {
		if addr, err := api.EndpointAddress(ep); err == nil && addr == *listen {
			return nil, usageErrorf(f.name, "upstream endpoint %s is the agent's own -listen address: point %s / -address at the cluster's nodes", ep, api.EnvAddr)
		}
	}

	login, err := agentLogin(f, *authMethod, *roleIDFile, *secretIDFile, *jwtFile, *authRole, *listen, &o.warnings)
	if err != nil {
		return nil, err
	}

	cfg := agent.DefaultConfig()
	cfg.Upstream = up
	cfg.Login = login
	cfg.Listen = *listen
	cfg.MetricsAddr = *metricsAddr
	cfg.Cache = api.CacheConfig{TTL: *ttl, MaxStale: *maxStale, MaxEntries: *entries, TokenRecheck: *recheck}
	if *maxStale == 0 {
		cfg.Cache.MaxStale = -1 // off: the api's zero means its default
	}
	cfg.LeaseMargin, cfg.MaxHeldLeases = *leaseMargin, *maxHeld
	cfg.Version = version
	switch {
	case *cacheDir != "" && f.isSet("cache-key-file"):
		if cfg.CacheKey, err = agent.ReadKeyFile(*keyFile); err != nil {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("-cache-key-file: %v", err)}
		}
		cfg.CacheKeySource = "-cache-key-file " + *keyFile
		warnIfShared(*keyFile, "-cache-key-file", &o.warnings)
	case *cacheDir != "" && e.getenv(agent.EnvCacheKey) != "":
		if cfg.CacheKey, err = agent.ParseKey(e.getenv(agent.EnvCacheKey)); err != nil {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("$%s: %v", agent.EnvCacheKey, err)}
		}
		cfg.CacheKeySource = "$" + agent.EnvCacheKey
	case *cacheDir != "":
		return nil, &cliError{code: 1, msg: agent.ErrNoCacheKey.Error()}
	case f.isSet("cache-key-file"):
		return nil, usageErrorf(f.name, "-cache-key-file needs -cache-dir")
	}
	cfg.CacheDir = *cacheDir
	cfg.UseAgentToken = *useAgentToken || login != nil
	if err := cfg.Validate(); err != nil {
		return nil, &cliError{code: 1, msg: err.Error()}
	}
	if host, _, err := net.SplitHostPort(*listen); err == nil && !isLoopback(host) {
		return nil, usageErrorf(f.name, "-listen %s is not a loopback address: the agent serves in plaintext, so its answers would cross the network in clear; listen on 127.0.0.1 or a unix socket (-listen=unix:///path) beside the services", *listen)
	}
	o.cfg = cfg
	return o, nil
}

// warnIfShared notes a warning when others may read a token or key file.
func warnIfShared(path, flag string, warnings *[]string) {
	if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
		*warnings = append(*warnings, fmt.Sprintf("%s %s is readable by others (mode %s): chmod 600 it", flag, path, info.Mode().Perm()))
	}
}

// isLoopback reports whether host is a loopback name or address.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func cmdAgent(e *env, args []string) (err error) {
	o, err := parseAgent(e, args)
	if err != nil {
		return err
	}
	logger := o.logs.newLogger(e.stderr)
	captureGlobalLogs(e, logger)
	defer func() { err = o.logs.endInLog(logger, err) }()
	for _, w := range o.warnings {
		logger.Warn(w)
	}
	cfg := o.cfg
	cfg.Logger = logger.Named("agent")
	a, err := agent.New(cfg)
	if err != nil {
		return &cliError{code: 1, msg: err.Error()}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a.Start()
	logger.Info("coffer agent started", "listen", a.Addr(), "upstream", strings.Join(cfg.Upstream.Endpoints, ","), "own_token", cfg.Upstream.Token != "")
	logger.Info(fmt.Sprintf("callers reach the agent with: export %s='%s'", api.EnvAddr, agentClientAddr(a.Addr())))

	<-ctx.Done()
	stop()
	logger.Info("shutting down; press Ctrl-C again to exit at once")
	done := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), agent.DefaultShutdownTimeout+10*time.Second)
		defer cancel()
		done <- a.Shutdown(sctx)
	}()
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	select {
	case err := <-done:
		if err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("shutdown: %v", err)}
		}
		logger.Info("coffer agent stopped")
		return nil
	case <-again:
		return &cliError{code: 1, msg: "second signal: exiting without writing the cache file"}
	}
}

// agentClientAddr is the COFFER_ADDR of the agent's callers: the agent
// serves in plaintext, so http:// (a unix socket stays unix:///path).
func agentClientAddr(listen string) string {
	if strings.HasPrefix(listen, api.SchemeUnix) {
		return listen
	}
	return api.SchemePlaintext + listen
}

// agentLogin builds the agent's auto-auth from its flags: nil without
// -auth-method. The credential files are read at every login, so a
// rotated secret_id or a refreshed service-account token is picked up.
func agentLogin(f *cmdFlags, method, roleIDFile, secretIDFile, jwtFile, role, listen string, warnings *[]string) (agent.Login, error) {
	read := func(flag, path string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("reading %s: %w", flag, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("%s %s is empty", flag, path)
		}
		return v, nil
	}
	if method == "" {
		for _, fl := range []string{"role-id-file", "secret-id-file", "jwt-file", "auth-role"} {
			if f.isSet(fl) {
				return nil, usageErrorf(f.name, "-%s needs -auth-method", fl)
			}
		}
		return nil, nil
	}
	if _, ok := strings.CutPrefix(listen, "unix://"); !ok {
		return nil, usageErrorf(f.name, "-auth-method lends the agent's token to its callers: it needs -listen=unix:///path (a socket whose mode says who may call)")
	}
	switch method {
	case "approle":
		if roleIDFile == "" || secretIDFile == "" {
			return nil, usageErrorf(f.name, "-auth-method=approle needs -role-id-file and -secret-id-file")
		}
		warnIfShared(secretIDFile, "-secret-id-file", warnings)
		for _, p := range []string{roleIDFile, secretIDFile} {
			if _, err := os.Stat(p); err != nil {
				return nil, &cliError{code: 1, msg: err.Error()}
			}
		}
		return func(ctx context.Context, c *api.Client) (*pb.TokenInfo, error) {
			roleID, err := read("-role-id-file", roleIDFile)
			if err != nil {
				return nil, err
			}
			secretID, err := read("-secret-id-file", secretIDFile)
			if err != nil {
				return nil, err
			}
			return c.LoginAppRole(ctx, roleID, secretID)
		}, nil
	case "jwt":
		if jwtFile == "" || role == "" {
			return nil, usageErrorf(f.name, "-auth-method=jwt needs -jwt-file and -auth-role")
		}
		return func(ctx context.Context, c *api.Client) (*pb.TokenInfo, error) {
			jwt, err := read("-jwt-file", jwtFile)
			if err != nil {
				return nil, err
			}
			return c.LoginJWT(ctx, role, jwt)
		}, nil
	case "cert":
		return func(ctx context.Context, c *api.Client) (*pb.TokenInfo, error) {
			return c.LoginCert(ctx, role)
		}, nil
	}
	return nil, usageErrorf(f.name, "-auth-method=%q: want approle, jwt or cert", method)
}
