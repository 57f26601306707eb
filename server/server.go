package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/internal/grpcutil"
	"coffer/replication"
	"coffer/seal"
)

// Version is the coffer version reported by Status.
const Version = "0.1.0"

// kvService is the name the health service reports for the KV API: it is
// SERVING only while the node is unsealed.
const kvService = "coffer.v1.KV"

// Server is one coffer node. Create it with New, start it with Start and
// stop it with Shutdown.
type Server struct {
	pb.UnimplementedSysServer
	pb.UnimplementedKVServer

	cfg    Config
	logger hclog.Logger
	fsm    *fsm.FSM
	raft   *replication.Node
	seal   *seal.Seal
	grpc   *grpc.Server
	health *health.Server

	lis       net.Listener
	pprofAddr string
	serveErr  chan error
	peers     peerConns
	rounds    readRounds
	tokens    tokenCache

	// dutyNudge wakes the leader duties loop.
	dutyNudge chan struct{}

	// restoring is set while this node runs an operator's restore.
	restoring atomic.Bool

	rotateMu sync.Mutex
	initMu   sync.Mutex

	bg   sync.WaitGroup
	stop chan struct{}
	// stopCtx is cancelled when the node stops (ends long waits).
	stopCtx      context.Context
	stopCancel   context.CancelFunc
	shutdownOnce sync.Once
	shutdownErr  error
}

// streamWorkers is how many goroutines serve gRPC calls (more calls in
// flight start goroutines of their own).
const streamWorkers = 64

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
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: create data directory %s: %w", cfg.DataDir, err)
	}
	s := &Server{
		cfg:       cfg,
		logger:    cfg.Logger,
		seal:      seal.New(seal.Options{}),
		serveErr:  make(chan error, 1),
		stop:      make(chan struct{}),
		dutyNudge: make(chan struct{}, 1),
		peers:     peerConns{dial: cfg.Network.DialContext},
	}
	s.stopCtx, s.stopCancel = context.WithCancel(context.Background())
	var err error
	s.fsm, err = fsm.Open(filepath.Join(cfg.DataDir, "fsm.db"), fsm.Options{
		Logger:            cfg.Logger.Named("fsm"),
		IdempotencyWindow: cfg.IdempotencyWindow,
		OnRestore:         s.stateRestored,
	})
	if err != nil {
		return nil, fmt.Errorf("server: open state: %w", err)
	}

	// Listen first, so that the advertised API address (gossiped to
	// peers for forwarding) has its real port even when asked for :0.
	s.lis, err = net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		s.fsm.Close()
		return nil, fmt.Errorf("server: listen on %s: %w (is another coffer running? pick another -api-addr)", cfg.APIAddr, err)
	}

	rc := cfg.Config
	if rc.AdvertiseAddr == "" && cfg.Advertise != "" {
		rc.AdvertiseAddr = advertiseAddr(rc.BindAddr, cfg.Advertise)
	}
	rc.APIAdvertise = s.advertisedAPI()
	rc.Version = Version
	rc.Sealed = true
	if cfg.Clustered() {
		g := *cfg.Gossip
		if g.AdvertiseAddr == "" && cfg.Advertise != "" {
			g.AdvertiseAddr = advertiseAddr(g.BindAddr, cfg.Advertise)
		}
		rc.Gossip = &g
		rc.CaughtUp = s.caughtUp
	} else {
		rc.Bootstrap = true
	}
	s.raft, err = replication.New(rc, s.fsm)
	if err != nil {
		s.lis.Close()
		s.fsm.Close()
		return nil, err
	}
	s.raft.SetSealed(true)
	s.raft.OnReadyLeader(s.leaderDuties)

	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(kvService, healthpb.HealthCheckResponse_NOT_SERVING)
	s.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(grpcutil.RecoverUnary(s.logger, internalMessage), s.unaryInterceptor),
		grpc.ChainStreamInterceptor(grpcutil.RecoverStream(s.logger, internalMessage), s.streamInterceptor),
		grpc.MaxRecvMsgSize(4<<20),
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
	pb.RegisterSysServer(s.grpc, s)
	pb.RegisterKVServer(s.grpc, s)
	pb.RegisterClusterServer(s.grpc, &clusterService{s: s})
	pb.RegisterOperatorServer(s.grpc, &operatorService{s: s})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s, nil
}

// Start serves the API (and pprof, when configured) in the background.
func (s *Server) Start() error {
	if s.cfg.PprofAddr != "" {
		if err := s.startPprof(); err != nil {
			return err
		}
	}
	s.logger.Info("serving", "node_id", s.cfg.NodeID, "api_addr", s.lis.Addr().String(), "raft_addr", s.raft.Addr())
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.serveErr <- s.grpc.Serve(s.lis)
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

// RaftAddr is the address of the node's Raft transport.
func (s *Server) RaftAddr() string { return s.raft.Addr() }

// NodeID is the node's id.
func (s *Server) NodeID() string { return s.cfg.NodeID }

// Shutdown stops the node: the API stops taking calls (in-flight ones may
// finish within the shutdown timeout or ctx), the keys are dropped, then
// Raft and the state database close. It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		close(s.stop)
		s.stopCancel()
		s.health.Shutdown()
		// 1. Stop taking API calls; in-flight ones may finish.
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
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
		// 2. Hand leadership over so that writes go on without waiting
		// for an election.
		if s.raft.IsLeader() && s.cfg.Clustered() {
			tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if err := s.raft.TransferLeadership(tctx); err != nil {
				s.logger.Warn("leadership transfer before shutdown failed", "error", err)
			} else {
				s.logger.Info("transferred leadership before shutdown")
			}
			cancel()
		}
		// 3. Drop the keys, 4. leave gossip and stop Raft, 5. close bbolt.
		s.seal.Seal()
		s.peers.close()
		errs := []error{s.raft.Shutdown(), s.fsm.Close()}
		s.bg.Wait()
		s.shutdownErr = errors.Join(errs...)
		s.logger.Info("stopped", "node_id", s.cfg.NodeID)
	})
	return s.shutdownErr
}

// Kill stops the node the way a crash would look to its peers and
// clients: its network is cut, calls in flight fail, there is no
// leadership transfer and no goodbye. The data directory is kept, so the
// node can be started again. For tests and chaos drills.
func (s *Server) Kill() {
	s.shutdownOnce.Do(func() {
		s.cfg.Network.Isolate()
		close(s.stop)
		s.stopCancel()
		s.grpc.Stop()
		s.health.Shutdown()
		s.seal.Seal()
		s.peers.close()
		errs := []error{s.raft.Shutdown(), s.fsm.Close()}
		s.bg.Wait()
		s.shutdownErr = errors.Join(errs...)
		s.logger.Info("killed", "node_id", s.cfg.NodeID)
	})
}

// WaitLeaderReady blocks until this node is a leader ready to serve (see
// replication.Node.ReadyLeader), or ctx ends.
func (s *Server) WaitLeaderReady(ctx context.Context) error {
	return s.raft.WaitReadyLeader(ctx)
}

// apply encodes cmd, proposes it through Raft and returns the FSM result.
// A deterministic failure of the command (CAS mismatch, not found) comes
// back as the error, with the result still set.
func (s *Server) apply(ctx context.Context, cmd *fsmCommand) (*fsm.Result, error) {
	if err := s.fsm.Err(); err != nil {
		s.logger.Error("state machine cannot persist; refusing writes", "error", err)
		return nil, ErrStorage
	}
	cmd.LeaderTimeUnixNano = time.Now().UnixNano()
	data, err := fsm.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	resp, _, err := s.raft.Apply(ctx, data)
	if err != nil {
		return nil, err
	}
	var r *fsm.Result
	switch v := resp.(type) {
	case fsm.Result:
		r = &v
	case *fsm.Result:
		r = v
	}
	if r == nil {
		return nil, fmt.Errorf("server: unexpected apply response %T", resp)
	}
	return r, r.Err
}
