package server

import (
	"context"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"coffer/replication"
)

// caughtUpLag is how far behind the leader's applied index a non-voter may
// be and still be promoted to voter.
const caughtUpLag = 64

// caughtUp tells the reconciliation whether a non-voter has caught up: it
// asks the member's API for its applied index.
func (s *Server) caughtUp(ctx context.Context, m replication.Member) bool {
	if m.APIAddr == "" {
		return false
	}
	st, err := s.peerStatus(ctx, m.APIAddr)
	if err != nil {
		return false
	}
	return st.AppliedIndex+caughtUpLag >= s.fsm.AppliedIndex()
}

// sealNode drops the keys and tells clients and peers.
func (s *Server) sealNode() {
	s.seal.Seal()
	s.health.SetServingStatus(kvService, healthpb.HealthCheckResponse_NOT_SERVING)
	s.raft.SetSealed(true)
	s.nudgeLeaderDuties()
}

// unsealedNode tells clients and peers that the node serves again.
func (s *Server) unsealedNode() {
	s.health.SetServingStatus(kvService, healthpb.HealthCheckResponse_SERVING)
	s.raft.SetSealed(false)
}

// nudgeLeaderDuties wakes the leader duties loop (e.g. after a seal).
func (s *Server) nudgeLeaderDuties() {
	select {
	case s.dutyNudge <- struct{}{}:
	default:
	}
}

// leaderDuties runs while this node is a ready leader (ctx ends with the
// leadership). It first loads the newest replicated keyring, so that new
// writes use the newest term (a node that cannot open it seals itself).
// Then its one duty for now: a sealed node must not stay leader while an
// unsealed voter exists, since a sealed leader can neither encrypt writes
// nor decrypt reads.
func (s *Server) leaderDuties(ctx context.Context) {
	if !s.seal.Sealed() {
		if err := s.reloadKeyring(); err != nil {
			s.logger.Error("the replicated keyring does not open with this node's keys; sealing", "error", err)
			s.sealNode()
		}
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.seal.Sealed() {
			s.handOffSealedLeadership(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-tick.C:
		case <-s.dutyNudge:
		}
	}
}

// handOffSealedLeadership transfers leadership to an alive, unsealed voter.
func (s *Server) handOffSealedLeadership(ctx context.Context) {
	peers, err := s.raft.Configuration()
	if err != nil {
		return
	}
	for _, p := range peers {
		if !p.Voter || p.ID == s.cfg.NodeID {
			continue
		}
		m, ok := s.raft.MemberByID(p.ID)
		if !ok || m.Sealed || m.Status != replication.StatusAlive {
			continue
		}
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := s.raft.TransferLeadershipTo(tctx, p.ID)
		cancel()
		if err != nil {
			s.logger.Warn("sealed leader could not hand over leadership", "to", p.ID, "error", err)
			continue
		}
		s.logger.Info("sealed leader handed over leadership", "to", p.ID)
		return
	}
}
