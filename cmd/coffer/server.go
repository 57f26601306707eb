package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/api"
	"coffer/internal/ports"
	"coffer/server"
)

// devBannerJSON is the JSON form of the dev-mode banner (-dev -format=json).
type devBannerJSON struct {
	APIAddress string `json:"api_address"`
	// HTTPAddress is the Vault-compatible HTTP API's URL (VAULT_ADDR).
	HTTPAddress string `json:"http_address,omitempty"`
	// ClientAddr and CACert are what clients set as COFFER_ADDR and
	// COFFER_CACERT (none without TLS).
	ClientAddr   string `json:"client_addr"`
	CACert       string `json:"ca_cert,omitempty"`
	UnsealKeyB64 string `json:"unseal_key_b64"`
	RootToken    string `json:"root_token"`
	DataDir      string `json:"data_dir"`
}

// serverOpts is a parsed `coffer server` command line.
type serverOpts struct {
	cfg          server.Config // without Logger and, with -dev, DataDir
	logs         logSettings
	format       string
	dev          bool
	devRootToken string
	// raftAddrSet means the Raft address came from a flag or the file.
	raftAddrSet bool
}

// parseServer parses the flags of `coffer server` and fills the node's
// configuration from the config file, the environment and the flags
// (flags win). It starts nothing.
func parseServer(e *env, args []string) (*serverOpts, error) {
	f := newFlags("coffer server", "[flags]", `
Run a coffer node. It starts sealed: initialize the cluster once with
"coffer operator init", then unseal every node with "coffer operator unseal".
Settings come from -config (JSON with the keys node_id, data_dir, api_addr,
raft_addr, raft_advertise, gossip_addr, advertise, join (a list),
bootstrap_expect, read_replica, cluster_key, max_inflight_bytes, max_leases,
audit_files, log_level, log_format, seal, seal_key_file,
snapshot_interval (e.g. "1h"), snapshot_dir, snapshot_retain and
raft_log_store); flags
given on the command line win over it.

A cluster: start identical nodes with -bootstrap-expect=N and -join listing
the others' gossip addresses; they find each other and form one cluster once
N are seen. A node given neither -join nor -bootstrap-expect is a one-node
cluster. -cluster-key (or $COFFER_CLUSTER_KEY, or cluster_key in -config;
in that order of precedence) encrypts gossip: every node needs the same key.
Prefer the environment or the config file: a flag shows in the process list.

-seal=static -seal-key-file=PATH makes the node unseal itself at start
with a static seal key (the same on every node; or $COFFER_SEAL_KEY): init
then prints recovery shares instead of unseal shares. A missing or wrong key
leaves the node sealed with a message saying why. To move a running cluster
between the seals, see "coffer operator unseal -migrate".

-dev runs a throw-away node for development: its data lives in a temporary
directory removed on exit, it initializes itself with a single unseal key,
unseals itself, and prints the key and the root token. Never use -dev in
production.`)
	def := server.DefaultConfig()
	nodeID := f.fs.String("node-id", "", "node id, stable across restarts (default: the hostname; \"dev\" with -dev)")
	dataDir := f.fs.String("data-dir", "", "data directory (required unless -dev)")
	apiAddr := f.fs.String("api-addr", def.APIAddr, "gRPC API listen address host:port")
	httpAddr := f.fs.String("http-addr", ports.HTTPAddr, "Vault-compatible HTTP API listen address host:port (TLS with the API's certificates); empty: none")
	raftAddr := f.fs.String("raft-addr", def.BindAddr, "Raft listen address host:port (with -dev: an ephemeral loopback port unless set)")
	raftAdvertise := f.fs.String("raft-advertise", "", "Raft address peers dial (default: -raft-addr, or -advertise with its port)")
	metricsAddr := f.fs.String("metrics-addr", ports.MetricsAddr, "serve this node's Prometheus metrics at /metrics on host:port, without authentication (keep it private); empty: off")
	pprofAddr := f.fs.String("pprof-addr", "", "serve Go's pprof profiles on this host:port (e.g. 127.0.0.1:6060); off when empty")
	maxLeases := f.fs.Int64("max-leases", def.MaxLeases, "live leases of dynamic credentials the cluster holds at most (the leader refuses creds past it; -1: no bound)")
	maxInflight := f.fs.Int64("max-inflight-bytes", def.MaxInflightBytes, fmt.Sprintf("request bytes the node holds at once; calls past it wait up to 500ms, then are refused as OVERLOADED (clients retry after a back-off); at least %d, the largest request", server.MaxRequestSize))
	certsDir := f.fs.String("certs-dir", "", "certificates directory with ca.crt, node.crt and node.key (`coffer cert`): TLS on the API, mutual TLS between nodes")
	tlsCert := f.fs.String("tls-cert-file", "", "the node certificate (overrides -certs-dir's node.crt)")
	tlsKey := f.fs.String("tls-key-file", "", "the node key (overrides -certs-dir's node.key)")
	tlsCA := f.fs.String("tls-ca-file", "", "the CA certificate (overrides -certs-dir's ca.crt)")
	requireClientCert := f.fs.Bool("tls-require-client-cert", false, "make the API demand a client certificate of the CA")
	insecureFlag := f.fs.Bool("insecure", false, "run WITHOUT TLS: traffic, tokens and key shares travel in clear (tests and local experiments only; -dev implies it)")
	var auditFiles listFlag
	f.fs.Var(&auditFiles, "audit-file", "audit log file: one JSON line per request and response, secrets HMACed (repeatable; a call no file can record is refused; SIGHUP reopens them)")
	auditTimeout := f.fs.Duration("audit-timeout", 0, "how long an audit file may take to record a line before it counts as failed (default 2s)")
	configFile := f.fs.String("config", "", "JSON config file; flags given on the command line win over it")
	lf := addLogFlags(f)
	dev := f.fs.Bool("dev", false, "run a throw-away, self-unsealed development node (NOT for production)")
	devRootToken := f.fs.String("dev-root-token", "", "with -dev: use this root token instead of a random one")
	cf := addClusterFlags(f, def)
	snapf := addSnapshotFlags(f)
	sealf := addSealFlags(f)
	args, err := f.parse(e, args)
	if err != nil {
		return nil, err
	}
	if err := f.wantArgs(args); err != nil {
		return nil, err
	}
	if f.isSet("dev-root-token") && !*dev {
		return nil, usageErrorf(f.name, "-dev-root-token needs -dev")
	}

	cfg := def
	fromFile := map[string]bool{}
	var fileG fileGossip
	var fileLog fileLogging
	if *configFile != "" {
		if fromFile, fileG, fileLog, err = loadConfigFile(*configFile, &cfg); err != nil {
			return nil, err
		}
	}
	logs, err := resolveLogSettings(f, lf, fileLog)
	if err != nil {
		return nil, err
	}
	// Flags given explicitly win over the file.
	set := func(name string) bool { return f.isSet(name) }
	if set("node-id") {
		cfg.NodeID = *nodeID
	}
	if set("data-dir") {
		cfg.DataDir = *dataDir
	}
	if set("api-addr") {
		cfg.APIAddr = *apiAddr
	}
	if set("http-addr") || !fromFile["http_addr"] {
		cfg.HTTPAddr = *httpAddr
	}
	if set("raft-addr") {
		cfg.BindAddr = *raftAddr
	}
	if set("raft-advertise") {
		cfg.AdvertiseAddr = *raftAdvertise
	}
	if set("metrics-addr") || !fromFile["metrics_addr"] {
		cfg.MetricsAddr = *metricsAddr
	}
	if set("pprof-addr") {
		cfg.PprofAddr = *pprofAddr
	}
	if set("max-inflight-bytes") {
		cfg.MaxInflightBytes = *maxInflight
	}
	if set("max-leases") {
		cfg.MaxLeases = *maxLeases
	}
	if set("certs-dir") {
		cfg.CertsDir = *certsDir
	}
	if set("audit-file") {
		cfg.AuditFiles = auditFiles
	}
	if set("audit-timeout") {
		cfg.AuditTimeout = *auditTimeout
	}
	if set("tls-cert-file") {
		cfg.TLSCertFile = *tlsCert
	}
	if set("tls-key-file") {
		cfg.TLSKeyFile = *tlsKey
	}
	if set("tls-ca-file") {
		cfg.TLSCAFile = *tlsCA
	}
	if set("tls-require-client-cert") {
		cfg.TLSRequireClientCert = *requireClientCert
	}
	if set("insecure") {
		cfg.Insecure = *insecureFlag
	}
	if err := cf.apply(f, e, &cfg, fileG); err != nil {
		return nil, err
	}
	if err := snapf.apply(f, &cfg); err != nil {
		return nil, err
	}
	sealf.apply(f, e, &cfg)
	o := &serverOpts{cfg: cfg, logs: logs, format: f.format, dev: *dev, devRootToken: *devRootToken,
		raftAddrSet: set("raft-addr") || fromFile["raft_addr"]}

	if *dev {
		if cfg.DataDir != "" {
			return nil, usageErrorf(f.name, "-dev keeps its data in a temporary directory: drop -data-dir (and data_dir from -config)")
		}
		if o.cfg.Seal == server.SealStatic {
			return nil, usageErrorf(f.name, "-dev unseals itself with its single unseal key: drop -seal=static")
		}
		if o.cfg.NodeID == "" {
			o.cfg.NodeID = "dev"
		}
		if !o.raftAddrSet {
			o.cfg.BindAddr = "127.0.0.1:0"
		}
		// A dev node is plaintext on loopback unless given certificates.
		o.cfg.Insecure = !o.cfg.TLSEnabled()
		return o, nil
	}
	if o.cfg.NodeID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			return nil, usageErrorf(f.name, "cannot default the node id to the hostname (%v): set -node-id", err)
		}
		o.cfg.NodeID = host
	}
	if o.cfg.DataDir == "" {
		return nil, usageErrorf(f.name, "no data directory: set -data-dir (or data_dir in -config), or use -dev for a throw-away node")
	}
	return o, nil
}

func cmdServer(e *env, args []string) (err error) {
	o, err := parseServer(e, args)
	if err != nil {
		return err
	}
	cfg := o.cfg
	tuneGC()
	// The node id is a field of the root logger, so that every line of
	// the process carries it: every component's logger (Raft, memberlist,
	// the FSM, the HTTP API, audit...) derives from this one.
	logger := o.logs.newLogger(e.stderr, "node", cfg.NodeID)
	captureGlobalLogs(e, logger)
	defer func() { err = o.logs.endInLog(logger, err) }()
	cfg.Logger = logger
	if soft := tuneMemoryLimit(); soft > 0 {
		logger.Info("memory limit of the container: Go's soft memory limit set to 80% of it (set $GOMEMLIMIT to choose another)", "soft_limit_mib", soft>>20)
	}

	if o.dev {
		dir, err := os.MkdirTemp("", "coffer-dev-*")
		if err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("creating the dev data directory: %v", err)}
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}

	srv, err := server.New(cfg)
	if err != nil {
		return &cliError{code: 1, msg: err.Error()}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Start(); err != nil {
		shutdownServer(srv, cfg, logger)
		return &cliError{code: 1, msg: err.Error()}
	}
	logger.Info("coffer server started", "api_addr", srv.APIAddr(), "data_dir", cfg.DataDir, "dev", o.dev, "tls", cfg.TLSEnabled())
	hint := newClientHint(cfg, srv.APIAddr())
	if !o.dev {
		logger.Info("clients reach this node with: " + hint.exports())
	}
	// SIGHUP reloads the certificates (a handshake also notices changed
	// files within a second) and reopens the audit files (logrotate).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer func() {
		signal.Stop(hup) // no delivery after it returns
		close(hup)
	}()
	go func() {
		for range hup {
			if err := srv.ReloadTLS(); err != nil {
				logger.Error("reloading the certificates failed; the previous ones stay", "error", err)
			} else {
				logger.Info("reloaded the certificates")
			}
			if err := srv.ReopenAudit(); err != nil {
				logger.Error("reopening the audit files failed", "error", err)
			}
		}
	}()

	if o.dev {
		initCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		info, err := srv.DevInit(initCtx, o.devRootToken)
		cancel()
		if err != nil {
			shutdownServer(srv, cfg, logger)
			return &cliError{code: 1, msg: fmt.Sprintf("dev mode: initializing and unsealing: %v", err)}
		}
		if err := printDevBanner(e, o.format, srv.APIAddr(), srv.HTTPURL(), hint, cfg.DataDir, info); err != nil {
			shutdownServer(srv, cfg, logger)
			return err
		}
	}

	select {
	case <-ctx.Done():
	case <-srv.Failed():
		// The node stops itself (its disk could not be written): wait
		// for it, and exit with why.
		shutdownServer(srv, cfg, logger)
		return &cliError{code: 1, msg: srv.Failure().Error()}
	}
	stop()
	logger.Info("shutting down; press Ctrl-C again to exit at once")
	done := make(chan error, 1)
	go func() { done <- shutdownServer(srv, cfg, logger) }()
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	select {
	case err := <-done:
		if err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("shutdown: %v", err)}
		}
		logger.Info("coffer server stopped")
		return nil
	case <-again:
		return &cliError{code: 1, msg: "second signal: exiting without a clean shutdown"}
	}
}

// shutdownServer stops srv within a bound derived from its configuration.
func shutdownServer(srv *server.Server, cfg server.Config, logger hclog.Logger) error {
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		logger.Error("shutdown", "error", err)
	}
	return err
}

// configFile is the JSON config file: the json-tagged fields of
// server.Config, plus gossip's flat keys (gossip_addr, join, and the base64
// cluster_key), which apply turns into server.Config's gossip settings.
type configFile struct {
	*server.Config
	GossipAddr *string  `json:"gossip_addr"`
	Join       []string `json:"join"`
	ClusterKey string   `json:"cluster_key"`
	LogLevel   *string  `json:"log_level"`
	LogFormat  *string  `json:"log_format"`
	fileSnapshots
}

// fileLogging is what the config file says about logging; nil: not set.
type fileLogging struct {
	level, format *string
}

// resolveLogSettings picks the log level and format: the flag when given,
// else the config file, else the flag's default; and checks them.
func resolveLogSettings(f *cmdFlags, lf *logFlags, file fileLogging) (logSettings, error) {
	level, levelSrc := lf.level, "-log-level"
	if !f.isSet("log-level") && file.level != nil {
		level, levelSrc = *file.level, "log_level in -config"
	}
	format, formatSrc := lf.format, "-log-format"
	if !f.isSet("log-format") && file.format != nil {
		format, formatSrc = *file.format, "log_format in -config"
	}
	return parseLogSettings(level, levelSrc, format, formatSrc)
}

// loadConfigFile fills cfg from the JSON file at path and reports which
// keys the file set, the file's base64 cluster key (decoded later, so
// that the flag and the environment can override it) and its log settings. Unknown keys are an
// error, so typos do not pass silently.
func loadConfigFile(path string, cfg *server.Config) (map[string]bool, fileGossip, fileLogging, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fileGossip{}, fileLogging{}, &cliError{code: 1, msg: fmt.Sprintf("reading -config: %v", err)}
	}
	fc := configFile{Config: cfg}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return nil, fileGossip{}, fileLogging{}, &cliError{code: 1, msg: fmt.Sprintf("-config %s: %v", path, err)}
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fileGossip{}, fileLogging{}, &cliError{code: 1, msg: fmt.Sprintf("-config %s: %v", path, err)}
	}
	if err := fc.fileSnapshots.apply(path, cfg); err != nil {
		return nil, fileGossip{}, fileLogging{}, err
	}
	set := make(map[string]bool, len(keys))
	for k := range keys {
		set[k] = true
	}
	g := fileGossip{join: fc.Join, key: fc.ClusterKey, joinSet: set["join"]}
	if fc.GossipAddr != nil {
		g.addr, g.addrSet = *fc.GossipAddr, true
	}
	return set, g, fileLogging{level: fc.LogLevel, format: fc.LogFormat}, nil
}

// clientHint is what a client sets to reach a node: COFFER_ADDR, with
// http:// for a node without TLS (a bare address speaks TLS), and for a
// node with TLS, COFFER_CACERT.
type clientHint struct {
	addr, caCert string
}

// newClientHint is the hint for a node of cfg listening on listen: the
// advertised host when there is one, and loopback for an unspecified
// listen address (0.0.0.0), which clients cannot dial.
func newClientHint(cfg server.Config, listen string) clientHint {
	if host, port, err := net.SplitHostPort(listen); err == nil {
		if cfg.Advertise != "" {
			host = cfg.Advertise
		} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		listen = net.JoinHostPort(host, port)
	}
	if !cfg.TLSEnabled() {
		return clientHint{addr: api.SchemePlaintext + listen}
	}
	ca := cfg.TLSFiles().CA
	if abs, err := filepath.Abs(ca); err == nil {
		ca = abs
	}
	return clientHint{addr: listen, caCert: ca}
}

// lines are the hint's shell lines.
func (h clientHint) lines() []string {
	out := []string{fmt.Sprintf("export %s='%s'", api.EnvAddr, h.addr)}
	if h.caCert != "" {
		out = append(out, fmt.Sprintf("export %s='%s'", api.EnvCACert, h.caCert))
	}
	return out
}

// exports is the hint on one line.
func (h clientHint) exports() string { return strings.Join(h.lines(), "; ") }

// printDevBanner prints how to reach the dev node, its unseal key and its
// root token.
func printDevBanner(e *env, format, addr, httpURL string, hint clientHint, dir string, info *server.DevInfo) error {
	if info == nil {
		return errors.New("dev mode: the server returned no unseal key")
	}
	key := base64.StdEncoding.EncodeToString(info.UnsealKey)
	if format == formatJSON {
		return printJSON(e.stdout, devBannerJSON{APIAddress: addr, HTTPAddress: httpURL, ClientAddr: hint.addr, CACert: hint.caCert, UnsealKeyB64: key, RootToken: info.RootToken, DataDir: dir})
	}
	var exports strings.Builder
	lines := append(hint.lines(), fmt.Sprintf("export %s='%s'", api.EnvToken, info.RootToken))
	if httpURL != "" {
		// The vault CLI and Vault's client libraries, over the HTTP API.
		lines = append(lines, fmt.Sprintf("export VAULT_ADDR='%s'", httpURL), fmt.Sprintf("export VAULT_TOKEN='%s'", info.RootToken))
	}
	for _, l := range lines {
		fmt.Fprintf(&exports, "    $ %s\n", l)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `WARNING! dev mode is enabled! In this mode, coffer runs from a temporary
directory that is removed on exit, starts initialized and unsealed with a
single unseal key, and prints its root token. Never use it in production.

You may need to set the following environment variables:

%s
The unseal key and root token are displayed below in case you want to
seal/unseal the node or re-authenticate.

API Address: %s
HTTP Address: %s
Unseal Key: %s
Root Token: %s

Development mode should NOT be used in production installations!
`, exports.String(), addr, httpOrNone(httpURL), key, info.RootToken)
	_, err := fmt.Fprint(e.stdout, b.String())
	return err
}

// httpOrNone names the HTTP API's URL, or says there is none.
func httpOrNone(url string) string {
	if url == "" {
		return "none (-http-addr is empty)"
	}
	return url
}
