package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/internal/grpcutil"
	"coffer/internal/tlsutil"
	"coffer/replication"
	"coffer/seal"
	"coffer/server/audit"
	"coffer/server/database"
	"coffer/server/lease"
)

// Version is the coffer version reported by Status.
const Version = "0.1.0"

// Server is one coffer node: it wires the seal, the state machine, the
// Raft node and the gRPC services together. Create it with New, start it
// with Start and stop it with Shutdown.
type Server struct {
	cfg    Config
	logger hclog.Logger
	fsm    *fsm.FSM
	raft   *replication.Node
	keys   *keys
	link   *leaderLink
	sys    *sysServer
	tokens *tokenServer
	logins *loginMethods
	audit  *auditor
	// tokenExpiry is the leader's index of tokens by expiry time.
	tokenExpiry *expiryQueue
	// metrics are the node's Prometheus metrics; metricsAddr the address
	// of their listener ("" when off).
	metrics     *nodeMetrics
	metricsAddr string
	// db is the database engine's service; leaseWorker the leader's
	// expiry worker over its lease table.
	db          *databaseServer
	leaseWorker *lease.Worker
	// snapshots takes the scheduled snapshots while this node leads (nil
	// when none are scheduled).
	snapshots *snapshotScheduler
	health    *health.Server
	grpc      *grpc.Server
	lis       net.Listener
	// httpLis and http serve the Vault-compatible HTTP API (nil: none);
	// inproc is how its handlers call the services.
	httpLis net.Listener
	http    *http.Server
	inproc  *inproc
	// tls is the node's certificates, nil for a plaintext node.
	tls *tlsutil.Reloader
	// inflight is the node's request-byte budget.
	inflight *inflight
	// pprofAddr is where pprof listens, once started.
	pprofAddr string
	life      lifecycle
}

// lifecycle is what starting and stopping the node keeps.
type lifecycle struct {
	bg   sync.WaitGroup
	stop chan struct{}
	// stopCtx is cancelled when the node stops (ends long waits).
	stopCtx    context.Context
	stopCancel context.CancelFunc
	serveErr   chan error
	once       sync.Once
	err        error
	// failed is closed, and failure set, when the node stopped itself
	// because its disk failed (storageFailed).
	failOnce sync.Once
	failed   chan struct{}
	failure  error
}

// streamWorkers is how many goroutines serve gRPC calls (more calls in
// flight start goroutines of their own).
const streamWorkers = 64

// maxStreamsPerConn bounds the calls one connection carries at once (gRPC
// sets no bound): a client past it waits for a call to end. Generous,
// because every watch holds a stream for as long as it lives, and an agent
// passes its callers' watches upstream over one connection; the memory of
// the calls is bounded by the request-byte budget, and the unread bytes of
// a connection by its flow-control window (4 MiB).
const maxStreamsPerConn = 1024

// New opens the node's state under cfg.DataDir and starts Raft. The node
// comes up sealed; the API listens after Start.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Network == nil {
		cfg.Network = &replication.Network{}
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	if cfg.MaxInflightBytes == 0 {
		cfg.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if cfg.MaxLeases == 0 {
		cfg.MaxLeases = DefaultMaxLeases
	}
	if cfg.LeaseIntentWindow <= 0 {
		cfg.LeaseIntentWindow = DefaultLeaseIntentWindow
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: create data directory %s: %w", cfg.DataDir, err)
	}
	s := &Server{cfg: cfg, logger: cfg.Logger}
	if cfg.Insecure {
		cfg.Logger.Warn("running WITHOUT TLS (-insecure): API and node-to-node traffic, tokens and key shares travel in clear, and anyone who reaches this node first may initialize it; use -certs-dir for anything but a test")
	}
	if cfg.TLSEnabled() {
		tlsFiles, err := tlsutil.Load(cfg.TLSFiles())
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		if !tlsutil.IsNode(tlsFiles.Leaf()) {
			return nil, fmt.Errorf("server: %s is not a node certificate (%s): make one with `coffer cert create-node`", cfg.TLSFiles().Cert, tlsutil.Describe(tlsFiles.Leaf()))
		}
		tlsFiles.OnError = func(err error) {
			cfg.Logger.Error("changed TLS files did not load; keeping the previous certificate", "error", err)
		}
		s.tls = tlsFiles
	}
	s.life.stop = make(chan struct{})
	s.life.serveErr = make(chan error, 1)
	s.life.failed = make(chan struct{})
	s.life.stopCtx, s.life.stopCancel = context.WithCancel(context.Background())
	s.keys = &keys{seal: seal.New(seal.Options{}), logger: cfg.Logger, nudge: make(chan struct{}, 1), resealed: make(chan struct{}, 1)}
	s.tokenExpiry = &expiryQueue{}
	s.metrics = newNodeMetrics()
	var err error
	s.fsm, err = fsm.Open(filepath.Join(cfg.DataDir, "fsm.db"), fsm.Options{
		Logger:            cfg.Logger, // the fsm names its logger
		IdempotencyWindow: cfg.IdempotencyWindow,
		OnApply:           s.metrics.fsmApplied,
		OnFailure:         func(err error) { s.storageFailed("the state database", err) },
		OnSnapshot:        s.metrics.snapshotPersisted,
		OnRestore: func() {
			s.metrics.snapshotRestored()
			s.keys.stateRestored()
			// The tokens may be others now: the leader scans them again.
			s.tokenExpiry.invalidate()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("server: open state: %w", err)
	}
	s.keys.sys = s.fsm

	// Listen first, so that the advertised API address (gossiped to
	// peers for forwarding) has its real port even when asked for :0.
	s.lis, err = net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		s.fsm.Close()
		return nil, fmt.Errorf("server: listen on %s: %w (is another coffer running? pick another -api-addr)", cfg.APIAddr, err)
	}
	if err := s.listenHTTP(); err != nil {
		s.lis.Close()
		s.fsm.Close()
		return nil, err
	}

	rc := cfg.Config
	rc.MaxAppendEntries = replicationBatch(rc.MaxAppendEntries, cfg.MaxInflightBytes)
	if s.tls != nil {
		rc.TLS = &replication.TransportTLS{Server: s.tls.PeerServerConfig(), Client: s.tls.PeerClientConfig()}
	}
	if rc.AdvertiseAddr == "" && cfg.Advertise != "" {
		rc.AdvertiseAddr = advertiseAddr(rc.BindAddr, cfg.Advertise)
	}
	rc.APIAdvertise = s.advertisedAPI()
	rc.HTTPAdvertise = s.HTTPURL()
	rc.Version = Version
	rc.Sealed = true
	if next := rc.OnStorageFailure; next != nil {
		rc.OnStorageFailure = func(err error) { s.storageFailed("the Raft log", err); next(err) }
	} else {
		rc.OnStorageFailure = func(err error) { s.storageFailed("the Raft log", err) }
	}
	if cfg.Clustered() {
		g := *cfg.Gossip
		if g.AdvertiseAddr == "" && cfg.Advertise != "" {
			g.AdvertiseAddr = advertiseAddr(g.BindAddr, cfg.Advertise)
		}
		rc.Gossip = &g
		rc.CaughtUp = s.caughtUp
		if s.tls != nil {
			rc.Admit = s.provesNode
		}
	} else {
		rc.Bootstrap = true
	}
	s.raft, err = replication.New(rc, s.fsm)
	if err != nil {
		s.lis.Close()
		s.stopHTTP(nil)
		s.fsm.Close()
		return nil, err
	}
	s.audit, err = openAudit(cfg, s.fsm, s.keys)
	if err != nil {
		s.raft.Shutdown()
		s.lis.Close()
		s.stopHTTP(nil)
		s.fsm.Close()
		return nil, err
	}
	s.keys.onSeal = s.audit.forget
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(kvHealthName, healthpb.HealthCheckResponse_NOT_SERVING)
	s.keys.health, s.keys.gossip = s.health, s.raft
	if err := s.wire(); err != nil {
		s.raft.Shutdown()
		s.lis.Close()
		s.stopHTTP(nil)
		s.fsm.Close()
		s.audit.close()
		return nil, fmt.Errorf("server: %w", err)
	}
	s.raft.OnReadyLeader(s.leaderDuties)
	return s, nil
}

// sysExists reports whether the system entry key is stored.
func (s *Server) sysExists(key string) bool {
	_, err := s.fsm.SysGet(key)
	return err == nil
}

// exists tells the gateway whether a write creates or updates what it
// names (Vault asks create for the one, update for the other).
func (s *Server) exists(policies *policyStore) func(proto.Message) bool {
	return func(req proto.Message) bool {
		switch r := req.(type) {
		case *pb.PutRequest:
			v, err := s.fsm.CurrentVersion(r.GetPath())
			return err == nil && v > 0
		case *pb.WriteMetadataRequest:
			_, err := s.fsm.Metadata(r.GetPath())
			return err == nil
		case *pb.WritePolicyRequest:
			return policies.exists(r.GetName())
		case *pb.AppRole:
			return s.logins.approle.exists(r.GetName())
		case *pb.JWTRole:
			return s.logins.jwt.exists(r.GetName())
		case *pb.DatabaseConfig:
			return s.sysExists(sysDBConfigPref + r.GetName())
		case *pb.DatabaseRole:
			return s.sysExists(sysDBRolePref + r.GetName())
		case *pb.DatabaseStaticRole:
			return s.sysExists(sysDBStaticPref + r.GetName())
		case *pb.CertRole:
			return s.logins.cert.exists(r.GetName())
		}
		return false
	}
}

// loginMethods are the node's login methods.
type loginMethods struct {
	approle *appRoles
	jwt     *jwtRoles
	cert    *certRoles
}

// wire builds the services over their narrow dependencies and registers
// them with a gRPC server whose interceptors are the gateway's.
func (s *Server) wire() error {
	id, logger := s.cfg.NodeID, s.logger
	s.link = &leaderLink{
		nodeID: id, self: s.advertisedAPI(), raft: s.raft, state: s.fsm,
		conns: peerConns{dial: s.cfg.Network.DialContext, creds: s.peerCreds()}, logger: logger, stopCtx: s.life.stopCtx,
		metrics: s.metrics,
	}
	props := &raftProposer{raft: s.raft, state: s.fsm, logger: logger, metrics: s.metrics}
	reads := &readGate{nodeID: id, sealed: s.keys, raft: s.raft, state: s.fsm, index: s.link, metrics: s.metrics}
	policies := &policyStore{state: s.fsm, keys: s.keys, logger: logger}
	gw := &gateway{raft: s.raft, state: s.fsm, keys: s.keys, link: s.link, tls: s.tls != nil, policies: policies, exists: s.exists(policies), audit: s.audit, logger: logger}
	s.tokens = &tokenServer{state: s.fsm, keys: s.keys, props: props, policies: policies, logger: logger, now: time.Now, expiry: s.tokenExpiry}
	gw.useToken = s.tokens.useToken
	store := sealedJSON{state: s.fsm, keys: s.keys}
	s.logins = &loginMethods{
		approle: &appRoles{store: store, props: props, locks: &keyLocks{}, logger: logger.Named("approle"), now: time.Now},
		jwt:     &jwtRoles{store: store, props: props, insecure: s.tls == nil, logger: logger.Named("jwt")},
		cert:    &certRoles{store: store, props: props, logger: logger.Named("cert")},
	}
	login := &loginServer{
		methods: map[string]loginMethod{"approle": s.logins.approle, "jwt": s.logins.jwt, "cert": s.logins.cert},
		tokens:  s.tokens, raft: s.raft, link: s.link, tls: s.tls != nil, logger: logger.Named("login"),
	}
	leases, err := lease.New(s.fsm, leaseProposer{props}, s.keys, lease.Options{
		Logger: logger, // the lease table names its logger
		Limits: lease.Limits{MaxTotal: leaseLimit(s.cfg.MaxLeases), IntentWindow: s.cfg.LeaseIntentWindow},
	})
	if err != nil {
		return err
	}
	s.db = &databaseServer{store: store, props: props, locks: &keyLocks{}, conns: &connLocks{}, engine: database.New(logger.Named("database")),
		leases: leases, logger: logger.Named("database"), now: time.Now}
	leases.RegisterRevoker(dbLeaseKind, lease.RevokerFunc(s.db.revokeLease))
	leaseSvc := &leaseServer{table: leases, renew: map[string]lease.RenewHook{dbLeaseKind: s.db.renewLease}, now: time.Now}
	s.leaseWorker = lease.NewWorker(leases, lease.WorkerOptions{})
	pol := &policyServer{store: policies, keys: s.keys, props: props, logger: logger}
	s.sys = &sysServer{nodeID: id, keys: s.keys, store: s.fsm, props: props, raft: s.raft, link: s.link, logger: logger, unseals: newUnsealLimiter(), insecure: s.tls == nil, audit: s.audit}
	s.sys.rootGen.limit = newUnsealLimiter()
	s.sys.rekey.limit = newUnsealLimiter()
	s.sys.nseal = newNodeSeal(s.cfg)
	// The key's text is in nseal now (parsed); no second copy stays.
	clear(s.cfg.SealKey)
	s.cfg.SealKey = nil
	kv := &kvServer{nodeID: id, store: s.fsm, props: props, keys: s.keys, reads: reads, leader: s.link, stopCtx: s.life.stopCtx}
	op := &operatorServer{nodeID: id, dataDir: s.cfg.DataDir, raft: s.raft, state: s.fsm, keys: s.keys, link: s.link, logger: logger}
	cluster := &clusterServer{nodeID: id, raft: s.raft, state: s.fsm, link: s.link}

	s.inflight = newInflight(s.cfg.MaxInflightBytes)
	// One chain for a call over gRPC and one made in process (the HTTP API).
	s.metrics.observeNode(s)
	s.sys.metrics = func() ([]byte, error) { return s.metrics.text(s) }
	if s.cfg.Snapshots.Enabled() {
		s.snapshots = newSnapshotScheduler(s.cfg.Snapshots, id, op.writeSnapshot, s.keys.Sealed, logger.Named("snapshots"))
		s.metrics.reg.MustRegister(s.snapshots.collectors()...)
		s.snapshots.prepare()
	}
	// The metrics are outermost, so that a call whose handler panicked is
	// counted with the Internal code the recovery answers it with.
	unary := []grpc.UnaryServerInterceptor{s.metrics.unary, grpcutil.RecoverUnary(logger, internalMessage), s.inflight.unary, gw.unaryInterceptor}

	s.grpc = grpc.NewServer(
		grpc.Creds(s.apiCreds()),
		// The budget comes before the gateway, so that it also counts
		// calls forwarded to the leader (while they are forwarded) and
		// calls that fail authentication (whose messages are in memory
		// all the same).
		grpc.InTapHandle(s.inflight.tap),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(grpcutil.RecoverStream(logger, internalMessage), s.inflight.stream, gw.streamInterceptor),
		grpc.MaxRecvMsgSize(MaxRequestSize),
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		// Reused handler goroutines keep their grown stacks: with one new
		// goroutine per call, growing its stack cost 10 % of a node's CPU
		// under a read load. Calls beyond the workers get a goroutine.
		grpc.NumStreamWorkers(streamWorkers),
		// Fixed flow-control windows (1 MiB a stream, 4 MiB a connection)
		// turn off gRPC's bandwidth probing, whose pings and window updates
		// add frames to every burst of small calls.
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	// The HTTP API calls the same services through the same interceptors.
	s.inproc = &inproc{
		methods: map[string]inprocMethod{},
		chain:   chainUnary(unary...),
		state:   s.fsm,
		budget:  s.inflight,
		gw:      gw,
	}
	reg := registrar{grpc: s.grpc, in: s.inproc}
	pb.RegisterSysServer(reg, s.sys)
	pb.RegisterKVServer(reg, kv)
	pb.RegisterClusterServer(reg, cluster)
	pb.RegisterOperatorServer(reg, op)
	pb.RegisterPolicyServer(reg, pol)
	pb.RegisterTokenServer(reg, s.tokens)
	pb.RegisterLoginServer(reg, login)
	pb.RegisterAppRoleAuthServer(reg, s.logins.approle)
	pb.RegisterJWTAuthServer(reg, s.logins.jwt)
	pb.RegisterCertAuthServer(reg, s.logins.cert)
	pb.RegisterDatabaseServer(reg, s.db)
	pb.RegisterLeaseServer(reg, leaseSvc)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return nil
}

// leaseProposer lets the lease table propose through the node's proposer.
type leaseProposer struct{ p proposer }

// Propose proposes cmd.
func (l leaseProposer) Propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error) {
	return l.p.propose(ctx, cmd)
}

// leaseLimit is -max-leases as the lease table takes it (0: no bound).
func leaseLimit(n int64) uint64 {
	if n < 0 {
		return 0
	}
	return uint64(n)
}

// apiCreds is the API's transport security: TLS with the node certificate
// (client certificates verified when given, or required), or none.
func (s *Server) apiCreds() credentials.TransportCredentials {
	if s.tls == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(s.tls.ServerConfig(s.cfg.TLSRequireClientCert))
}

// peerCreds is the security of this node's calls to other nodes' APIs:
// mutual TLS with its node certificate, accepting only a node of the CA.
func (s *Server) peerCreds() credentials.TransportCredentials {
	if s.tls == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(s.tls.PeerClientConfig())
}

// ReloadTLS reads the node's certificates again (SIGHUP); a handshake
// also does when the files changed.
func (s *Server) ReloadTLS() error {
	if s.tls == nil {
		return nil
	}
	return s.tls.Reload()
}

// Start serves the API (and pprof, when configured) in the background.
func (s *Server) Start() error {
	if s.cfg.PprofAddr != "" {
		if err := s.startPprof(); err != nil {
			return err
		}
	}
	if s.cfg.MetricsAddr != "" {
		if err := s.startMetrics(); err != nil {
			return err
		}
	}
	s.life.bg.Add(1)
	go func() {
		defer s.life.bg.Done()
		s.metrics.watchLeader(s)
	}()
	s.logger.Info("serving", "node_id", s.cfg.NodeID, "api_addr", s.lis.Addr().String(), "raft_addr", s.raft.Addr(), "seal", s.sys.nseal.typ)
	if s.sys.nseal.static() {
		if p := s.sys.nseal.keyProblem(); p != "" {
			s.sys.note(p)
		}
		s.life.bg.Add(1)
		go func() {
			defer s.life.bg.Done()
			s.sys.autoUnseal(s.life.stopCtx)
		}()
	}
	s.startHTTP()
	s.life.bg.Add(1)
	go func() {
		defer s.life.bg.Done()
		s.life.serveErr <- s.grpc.Serve(s.lis)
	}()
	return nil
}

// advertisedAPI is the API address peers and clients should dial.
func (s *Server) advertisedAPI() string {
	return advertiseAddr(s.lis.Addr().String(), s.cfg.Advertise)
}

// APIAddr is the address the API listens on (after Start), or the
// configured one.
func (s *Server) APIAddr() string {
	if s.lis != nil {
		return s.lis.Addr().String()
	}
	return s.cfg.APIAddr
}

// Inflight returns the figures of the node's request-byte budget.
func (s *Server) Inflight() InflightStats { return s.inflight.stats() }

// ReopenAudit reopens the audit files (SIGHUP, after logrotate moved
// them).
func (s *Server) ReopenAudit() error {
	if !s.audit.on() {
		return nil
	}
	return s.audit.broker.Reopen()
}

// AuditStats reports what the audit devices recorded and refused.
func (s *Server) AuditStats() audit.Stats {
	if !s.audit.on() {
		return audit.Stats{}
	}
	return s.audit.broker.Stats()
}

// LiveTokens is how many service tokens this node's replicated state
// holds (expired ones stay until the leader removes them).
func (s *Server) LiveTokens() (int, error) {
	keys, err := s.fsm.SysList(sysTokenPref)
	return len(keys), err
}

// RaftAddr is the address of the node's Raft transport.
func (s *Server) RaftAddr() string { return s.raft.Addr() }

// NodeID is the node's id.
func (s *Server) NodeID() string { return s.cfg.NodeID }

// Shutdown stops the node: a leader hands leadership to another voter,
// the API stops taking calls (in-flight ones may finish within the
// shutdown timeout or ctx), the keys are dropped, then Raft and the state
// database close. It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.life.once.Do(func() {
		close(s.life.stop)
		s.life.stopCancel()
		s.health.Shutdown()
		// 1. Hand leadership over first, so that writes go on without
		// waiting for an election, nor for this node's calls in flight
		// (step 2 may wait for them up to ShutdownTimeout, and a leader
		// whose API is closed commits nothing: no write could commit
		// meanwhile). The API still answers while the transfer runs: a
		// write then fails with LEADERSHIP_LOST, which clients and
		// forwarding followers retry with its request id, and afterwards
		// this node forwards to the new leader like any follower.
		if s.raft.IsLeader() && s.cfg.Clustered() {
			tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if err := s.raft.TransferLeadership(tctx); err != nil {
				s.logger.Warn("leadership transfer before shutdown failed", "error", err)
			} else {
				s.logger.Info("transferred leadership before shutdown")
			}
			cancel()
		}
		// 2. Stop taking API calls; in-flight ones may finish.
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		hctx, hcancel := context.WithTimeout(ctx, s.cfg.ShutdownTimeout)
		s.stopHTTP(hctx)
		hcancel()
		timer := time.NewTimer(s.cfg.ShutdownTimeout)
		select {
		case <-stopped:
		case <-ctx.Done():
			s.grpc.Stop()
		case <-timer.C:
			s.grpc.Stop()
		}
		timer.Stop()
		<-stopped
		// 3. Drop the keys, 4. leave gossip and stop Raft, 5. close bbolt.
		s.keys.seal.Seal()
		s.sys.nseal.zero()
		s.audit.forget()
		s.link.conns.close()
		s.logins.jwt.close()
		errs := []error{s.raft.Shutdown(), s.fsm.Close(), s.audit.close()}
		s.db.engine.CloseAll()
		s.life.bg.Wait()
		s.life.err = errors.Join(errs...)
		s.logger.Info("stopped", "node_id", s.cfg.NodeID)
	})
	return s.life.err
}

// Kill stops the node the way a crash would look to its peers and
// clients: its network is cut, calls in flight fail, there is no
// leadership transfer and no goodbye. The data directory is kept, so the
// node can be started again. For tests and chaos drills.
func (s *Server) Kill() {
	s.life.once.Do(func() {
		s.cfg.Network.Isolate()
		close(s.life.stop)
		s.life.stopCancel()
		s.grpc.Stop()
		s.stopHTTP(nil)
		s.health.Shutdown()
		s.keys.seal.Seal()
		s.sys.nseal.zero()
		s.audit.forget()
		s.link.conns.close()
		s.logins.jwt.close()
		errs := []error{s.raft.Shutdown(), s.fsm.Close(), s.audit.close()}
		s.db.engine.CloseAll()
		s.life.bg.Wait()
		s.life.err = errors.Join(errs...)
		s.logger.Info("killed", "node_id", s.cfg.NodeID)
	})
}

// storageFailed stops the node because what could not be written to its
// disk (full, or failing). A node that cannot persist must acknowledge
// nothing, and must not lead: Raft refuses the entries it cannot store,
// and the state machine every command after a failed commit, but the node
// would stay a member that takes calls, and a leader whose state machine
// failed would refuse every write of the cluster. So it stops the way a
// shutdown does (a leader hands over first), and its caller (the coffer
// command) exits with the error. Every file stays as it was last
// committed: once space is freed, the node starts again and catches up
// from the others. Called on Raft's goroutines, it must not block.
func (s *Server) storageFailed(what string, err error) {
	s.life.failOnce.Do(func() {
		s.life.failure = fmt.Errorf("server: %s could not be written (%v): node %s stopped so that it acknowledges nothing it did not persist; free space or fix the disk under %s, then start it again (it catches up from the other nodes)", what, err, s.cfg.NodeID, s.cfg.DataDir)
		s.logger.Error("storage failure: stopping the node", "what", what, "data_dir", s.cfg.DataDir, "error", err)
		close(s.life.failed)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout+10*time.Second)
			defer cancel()
			s.Shutdown(ctx)
		}()
	})
}

// Failed is closed when the node stopped itself because its disk could
// not be written (Failure says why); Shutdown then returns once it has
// stopped.
func (s *Server) Failed() <-chan struct{} { return s.life.failed }

// Failure is why the node stopped itself, once Failed is closed; nil
// before.
func (s *Server) Failure() error {
	select {
	case <-s.life.failed:
		return s.life.failure
	default:
		return nil
	}
}

// WaitLeaderReady blocks until this node is a leader ready to serve (see
// replication.Node.ReadyLeader), or ctx ends.
func (s *Server) WaitLeaderReady(ctx context.Context) error {
	return s.raft.WaitReadyLeader(ctx)
}

// DevInfo is what a dev server prints at start: the single unseal key and
// the root token.
type DevInfo struct {
	UnsealKey []byte
	RootToken string
}

// DevInit initializes a fresh dev node with one key share (and rootToken
// when non-empty) and unseals it. It waits for the node to lead first.
func (s *Server) DevInit(ctx context.Context, rootToken string) (*DevInfo, error) {
	if err := s.WaitLeaderReady(ctx); err != nil {
		return nil, err
	}
	res, err := s.sys.Init(ctx, &pb.InitRequest{SecretShares: 1, SecretThreshold: 1, RootToken: rootToken})
	if err != nil {
		return nil, err
	}
	if _, err := s.sys.Unseal(ctx, &pb.UnsealRequest{Key: res.Keys[0]}); err != nil {
		return nil, err
	}
	return &DevInfo{UnsealKey: res.Keys[0], RootToken: res.RootToken}, nil
}
