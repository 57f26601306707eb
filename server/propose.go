package server

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

// raftProposer proposes commands through the Raft node: the one place a
// command gets its leader time and is encoded.
type raftProposer struct {
	raft    applier
	state   storageHealth
	logger  hclog.Logger
	metrics *nodeMetrics
}

// applier proposes encoded commands (the Raft node).
type applier interface {
	Apply(ctx context.Context, cmd []byte) (any, uint64, error)
}

// storageHealth reports a state machine that can no longer persist.
type storageHealth interface {
	Err() error
}

// propose stamps cmd with the leader's time, proposes it through Raft and
// returns the FSM result. A deterministic failure of the command (CAS
// mismatch, not found) comes back as the error, with the result still set.
func (p *raftProposer) propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error) {
	if err := p.state.Err(); err != nil {
		p.logger.Error("state machine cannot persist; refusing writes", "error", err)
		return nil, ErrStorage
	}
	cmd.LeaderTimeUnixNano = time.Now().UnixNano()
	data, err := fsm.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	// The call's bytes stay counted until Raft lets go of the command.
	began := time.Now()
	resp, _, err := p.raft.Apply(holdGrant(ctx), data)
	if err != nil {
		return nil, err
	}
	p.metrics.applied(time.Since(began))
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
