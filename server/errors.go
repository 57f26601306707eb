package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/fsm"
	"coffer/replication"
	"coffer/seal"
)

// Errors of the server layer. Each message says what to do about it.
var (
	// ErrNotInitialized means the cluster has no keys yet.
	ErrNotInitialized = errors.New("server: coffer is not initialized: run `coffer operator init`")
	// ErrCatchingUp means this node has not applied the cluster's state far
	// enough to answer (after a restart that rebuilds its state, or when it
	// just joined).
	ErrCatchingUp = errors.New("server: this node is still catching up with the cluster")
	// ErrAlreadyInitialized means init was called on an initialized cluster.
	ErrAlreadyInitialized = errors.New("server: coffer is already initialized: unseal it with the key shares from the first init")
	// ErrInvalidArgument wraps a bad request field; the wrapping message
	// names the field.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrTooLarge means a value or a secret exceeds a size limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnauthenticated means the call carried no token or an unknown one.
	ErrUnauthenticated = errors.New("server: missing or invalid token: set COFFER_TOKEN or -token")
	// ErrPermissionDenied means the token may not make this call.
	ErrPermissionDenied = errors.New("server: permission denied: this call needs the root token")
	// ErrDeleted means the requested version is soft-deleted.
	ErrDeleted = errors.New("deleted")
	// ErrDestroyed means the requested version was destroyed.
	ErrDestroyed = errors.New("destroyed")
	// ErrStale means a stale read exceeded its max_staleness bound.
	ErrStale = errors.New("server: this node has not heard from a leader within max_staleness: try another node or relax max_staleness")
	// errShuttingDown ends streams of a node that is stopping.
	errShuttingDown = errors.New("server: node is shutting down: reconnect to another node")
	// ErrNotFoundPeer means a Raft peer id is not in the configuration.
	ErrNotFoundPeer = errors.New("server: no such raft peer: see `coffer operator raft list-peers`")
	// ErrStorage means the node's state machine failed to persist and the
	// node stopped acknowledging writes.
	ErrStorage = errors.New("server: this node cannot persist writes (disk full or I/O error): use another node and check its disk")
)

// codeTable maps every sentinel the layers below return to one gRPC code.
// It is the only place where errors become status codes.
var codeTable = []struct {
	err  error
	code codes.Code
}{
	{seal.ErrSealed, codes.Unavailable},
	{replication.ErrNotLeader, codes.Unavailable},
	{replication.ErrNoLeader, codes.Unavailable},
	{replication.ErrShutdown, codes.Unavailable},
	{replication.ErrLeadershipLost, codes.Unavailable},
	{replication.ErrTimeout, codes.Unavailable},
	{ErrStale, codes.Unavailable},
	{ErrStorage, codes.Unavailable},
	{errShuttingDown, codes.Unavailable},
	{seal.ErrNotInitialized, codes.FailedPrecondition},
	{ErrNotInitialized, codes.FailedPrecondition},
	{ErrCatchingUp, codes.Unavailable},
	{ErrAlreadyInitialized, codes.FailedPrecondition},
	{fsm.ErrCASMismatch, codes.FailedPrecondition},
	{fsm.ErrCASRequired, codes.FailedPrecondition},
	{fsm.ErrNotFound, codes.NotFound},
	{ErrDeleted, codes.NotFound},
	{ErrDestroyed, codes.NotFound},
	{ErrNotFoundPeer, codes.NotFound},
	{ErrForeignSnapshot, codes.FailedPrecondition},
	{fsm.ErrStorage, codes.Unavailable},
	{fsm.ErrClosed, codes.Unavailable},
	{seal.ErrInvalidShare, codes.InvalidArgument},
	{seal.ErrDuplicateShare, codes.InvalidArgument},
	{seal.ErrWrongShares, codes.InvalidArgument},
	{seal.ErrInvalidConfig, codes.InvalidArgument},
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrTooLarge, codes.ResourceExhausted},
	{ErrUnauthenticated, codes.Unauthenticated},
	{ErrPermissionDenied, codes.PermissionDenied},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// toStatus converts err to a gRPC status error using codeTable. An error
// the table does not know becomes Internal with a generic message, so that
// nothing unexpected (which might carry data) reaches the client.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range codeTable {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Internal, "internal error: see the server log")
}
