package server

import (
	"context"
	"sync"
	"time"

	"coffer/replication"
)

// caughtUpLag is how far behind the leader's applied index a non-voter may
// be and still be promoted to voter.
const caughtUpLag = 64

// provesNode tells the reconciliation whether a gossip member may join
// Raft: its API must answer over mutual TLS with a node certificate of the
// cluster's CA (the peer connection checks it) and name itself as m. A
// member that knows the gossip key but holds no such certificate stays out
// of Raft, where it could count in the quorum.
func (s *Server) provesNode(ctx context.Context, m replication.Member) bool {
	if m.APIAddr == "" {
		return false
	}
	st, err := s.link.peerStatus(ctx, m.APIAddr)
	return err == nil && st.NodeId == m.ID
}

// caughtUp tells the reconciliation whether a non-voter has caught up: it
// asks the member's API for its applied index.
func (s *Server) caughtUp(ctx context.Context, m replication.Member) bool {
	if m.APIAddr == "" {
		return false
	}
	st, err := s.link.peerStatus(ctx, m.APIAddr)
	if err != nil {
		return false
	}
	return st.AppliedIndex+caughtUpLag >= s.fsm.AppliedIndex()
}

// leaderDuties runs while this node is a ready leader (ctx ends with the
// leadership). It first loads the newest replicated keyring, so that new
// writes use the newest term (a node that cannot open it seals itself).
// Then its duties: a sealed node must not stay leader while an unsealed
// voter exists, since a sealed leader can neither encrypt writes nor
// decrypt reads; scheduled snapshots are taken (skipped while sealed);
// once unsealed, it seals token records an older version
// stored in plaintext (once per leadership).
func (s *Server) leaderDuties(ctx context.Context) {
	if !s.keys.Sealed() {
		if err := s.keys.reloadKeyring(); err != nil {
			s.logger.Error("the replicated keyring does not open with this node's keys; sealing", "error", err)
			s.keys.sealNode()
		}
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	migrated := false
	// A new leadership scans the tokens once to index them by expiry: a
	// former leader's writes are in the state, not in this node's queue.
	s.tokenExpiry.invalidate()
	var lastExpiry, lastTidy time.Time
	salted := false
	// The lease worker and the database rotations run for the whole
	// leadership once the node is unsealed: the worker starts from the due
	// index, loading nothing.
	var worker sync.WaitGroup
	defer worker.Wait()
	if s.snapshots != nil {
		worker.Go(func() { s.snapshots.run(ctx, s.life.stop) })
	}
	leasesStarted := false
	for {
		if !s.keys.Sealed() && !leasesStarted {
			leasesStarted = true
			worker.Go(func() {
				if err := s.leaseWorker.Run(ctx); err != nil && ctx.Err() == nil {
					s.logger.Error("the lease expiry worker stopped", "error", err)
				}
			})
			worker.Go(func() { s.db.rotationLoop(ctx, s.life.stop) })
		}
		if s.keys.Sealed() {
			s.handOffSealedLeadership(ctx)
		} else if !migrated {
			n, err := migrateTokenRecords(ctx, s.fsm, s.sys.props, s.keys, s.logger)
			if err != nil {
				s.logger.Warn("sealing plaintext token records failed; retrying", "sealed", n, "error", err)
			} else {
				migrated = true
				if n > 0 {
					s.logger.Info("sealed token records stored in plaintext by an older version", "count", n)
				}
			}
		}
		if !s.keys.Sealed() && !salted {
			if err := ensureClusterSalt(ctx, s.fsm, s.keys, s.sys.props); err != nil {
				s.logger.Warn("making the audit salt failed; retrying", "error", err)
			} else {
				salted = true
			}
		}
		if !s.keys.Sealed() && time.Since(lastExpiry) >= tokenExpiryInterval {
			lastExpiry = time.Now()
			if n, err := s.tokens.expire(ctx, time.Now()); err != nil {
				s.logger.Warn("removing expired tokens failed; retrying", "error", err)
			} else if n > 0 {
				s.logger.Info("removed expired tokens", "count", n)
			}
		}
		if !s.keys.Sealed() && time.Since(lastTidy) >= secretIDTidyInterval {
			lastTidy = time.Now()
			if n, err := tidySecretIDs(ctx, s.logins.approle.store, s.sys.props, time.Now()); err != nil {
				s.logger.Warn("removing expired secret_ids failed; retrying", "error", err)
			} else if n > 0 {
				s.logger.Info("removed expired secret_ids", "count", n)
			}
		}
		if !s.keys.Sealed() {
			if err := s.sys.migrateRecord(ctx); err != nil && ctx.Err() == nil {
				s.logger.Warn("writing the migrated seal record failed; retrying", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.life.stop:
			return
		case <-tick.C:
		case <-s.keys.nudge:
		}
	}
}

// tokenExpiryInterval is how often the leader removes expired tokens
// (every node refuses them from the moment they expire).
const tokenExpiryInterval = 5 * time.Second

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
