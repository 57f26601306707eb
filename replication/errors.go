package replication

import (
	"errors"

	"github.com/hashicorp/raft"
)

// Errors returned by Node. They are sentinels so the layers above can test
// them with errors.Is and map them to status codes in one place.
var (
	// ErrNotLeader means this node is not the leader; the request belongs
	// on the leader. Always safe to retry there.
	ErrNotLeader = errors.New("replication: this node is not the leader: send the request to the leader")
	// ErrNoLeader means the cluster has no known leader right now (an
	// election is running or quorum is lost). Safe to retry later.
	ErrNoLeader = errors.New("replication: no leader is known: retry shortly, or check that a quorum of nodes is up")
	// ErrLeadershipLost means leadership was lost while a write was in
	// flight: it may or may not have been committed. Retry with the same
	// request id.
	ErrLeadershipLost = errors.New("replication: leadership lost while committing: retry with the same request id")
	// ErrShutdown means the node is shutting down.
	ErrShutdown = errors.New("replication: node is shutting down: use another node")
	// ErrTimeout means the write was not committed in time; it may still
	// commit. Retry with the same request id.
	ErrTimeout = errors.New("replication: timed out waiting for the write to commit: retry with the same request id")
	// ErrUnknownServer means the named server is not another voter in the
	// Raft configuration: check the id with `coffer operator raft list-peers`.
	ErrUnknownServer = errors.New("replication: no such voter in the raft configuration: check the id with `coffer operator raft list-peers`")
)

// translate maps hashicorp/raft's errors to this package's sentinels.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return ErrNotLeader
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return ErrLeadershipLost
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return ErrTimeout
	}
	return err
}
