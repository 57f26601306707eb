package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/internal/grpcutil"
	"coffer/replication"
	"coffer/seal"
	"coffer/server/lease"
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
	ErrPermissionDenied = errors.New("server: permission denied: the token's policies do not allow this call")
	// ErrNoRoute means the method has no entry in the route table: it is
	// refused rather than routed by accident.
	ErrNoRoute = errors.New("server: this node does not serve that method: check the client's version against the server's (`coffer status`)")
	// ErrNodeOnly means a node-to-node call came from a caller without a
	// node certificate.
	ErrNodeOnly = errors.New("server: this call is for the cluster's nodes only: it needs a node certificate of the cluster's CA")
	// ErrClientCertRequired means a call that needs a certificate of the
	// cluster's CA came without one.
	ErrClientCertRequired = errors.New("server: this call needs a client certificate of the cluster's CA: make one with `coffer cert create-client` and pass -certs-dir")
	// ErrRateLimited means a caller made too many calls of a kind.
	ErrRateLimited = errors.New("server: too many unseal attempts from this address: wait a second and retry")
	// ErrOverloaded means the node's request-byte budget
	// (-max-inflight-bytes) stayed spent while the call waited.
	ErrOverloaded = errors.New("server: this node holds as many requests as its -max-inflight-bytes allows: retry after a back-off, or on another node")
	// ErrDeleted means the requested version is soft-deleted.
	ErrDeleted = errors.New("deleted")
	// ErrDestroyed means the requested version was destroyed.
	ErrDestroyed = errors.New("destroyed")
	// ErrStale means a stale read exceeded its max_staleness bound.
	ErrStale = errors.New("server: this node has not heard from a leader within max_staleness: try another node or relax max_staleness")
	// ErrMinIndex means the node has not applied a read's min_index within
	// the wait it allows.
	ErrMinIndex = errors.New("server: this node has not applied the index the read asks for yet: retry, or read from another node")
	// ErrLeaderUnreachable means a follower could not reach the leader to
	// forward a call or to learn a read index.
	ErrLeaderUnreachable = errors.New("server: the leader could not be reached: retry, or read with -consistency=stale")
	// errShuttingDown ends calls and streams of a node that is stopping.
	errShuttingDown = errors.New("server: node is shutting down: reconnect to another node")
	// ErrNotFoundPeer means a Raft peer id is not in the configuration.
	ErrNotFoundPeer = errors.New("server: no such raft peer: see `coffer operator raft list-peers`")
	// ErrLoginUnavailable means a login method could not get what checks
	// the credentials (a JWT issuer's key set did not download): nothing
	// is wrong with the credentials, and another node may have it.
	ErrLoginUnavailable = errors.New("server: the login method's keys could not be fetched: retry, or check the method's configuration")
	// ErrDatabaseUnreachable means the database of a connection could not
	// be reached; the wrapping message names the connection.
	ErrDatabaseUnreachable = errors.New("server: the database could not be reached: check that it runs and the connection's URL")
	// ErrDatabaseError means the database refused a statement; the
	// wrapping message carries its error.
	ErrDatabaseError = errors.New("server: the database refused a statement: fix the role's statements")
	// ErrSealMigration means an unseal's -migrate does not match the
	// node: a migration is pending and the share came without it, or none
	// is and it came with it. The wrapping message says which.
	ErrSealMigration = errors.New("server: seal migration: the node's seal and the cluster's seal record differ: unseal with `coffer operator unseal -migrate`")
	// ErrAutoUnseal means shares were sent to unseal a node that unseals
	// itself with its static seal key.
	ErrAutoUnseal = errors.New("server: this node unseals itself with its static seal key: shares do not unseal it (recovery shares serve generate-root, rekey and `coffer operator unseal -migrate`)")
	// ErrStorage means the node's state machine failed to persist and the
	// node stopped acknowledging writes.
	ErrStorage = errors.New("server: this node cannot persist writes (disk full or I/O error): use another node and check its disk")
)

// codeTable maps every sentinel the layers below return to one gRPC code
// and one machine-readable reason. It is the only place where errors become
// status codes; TestCodeTable checks that it knows every sentinel of fsm,
// seal, replication and server.
var codeTable = []struct {
	err    error
	code   codes.Code
	reason pb.ErrorReason
}{
	{seal.ErrSealed, codes.Unavailable, pb.ErrorReason_SEALED},
	{replication.ErrNotLeader, codes.Unavailable, pb.ErrorReason_NOT_LEADER},
	{replication.ErrNoLeader, codes.Unavailable, pb.ErrorReason_NO_LEADER},
	{replication.ErrShutdown, codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN},
	{replication.ErrLeadershipLost, codes.Unavailable, pb.ErrorReason_LEADERSHIP_LOST},
	{replication.ErrTimeout, codes.Unavailable, pb.ErrorReason_COMMIT_TIMEOUT},
	{replication.ErrUnknownServer, codes.NotFound, pb.ErrorReason_PEER_NOT_FOUND},
	{ErrStale, codes.Unavailable, pb.ErrorReason_STALE_BOUND},
	{ErrMinIndex, codes.Unavailable, pb.ErrorReason_MIN_INDEX_NOT_REACHED},
	{ErrLeaderUnreachable, codes.Unavailable, pb.ErrorReason_LEADER_UNREACHABLE},
	{ErrStorage, codes.Unavailable, pb.ErrorReason_STORAGE_FAILED},
	{ErrLoginUnavailable, codes.Unavailable, pb.ErrorReason_LOGIN_UNAVAILABLE},
	{ErrDatabaseUnreachable, codes.Unavailable, pb.ErrorReason_DATABASE_UNREACHABLE},
	{ErrDatabaseError, codes.FailedPrecondition, pb.ErrorReason_DATABASE_ERROR},
	{fsm.ErrQuotaExceeded, codes.ResourceExhausted, pb.ErrorReason_QUOTA_EXCEEDED},
	{lease.ErrQuotaExceeded, codes.ResourceExhausted, pb.ErrorReason_QUOTA_EXCEEDED},
	// A lease's creation lost its intent (a failover, a revocation): the
	// caller asks again.
	{lease.ErrIntentLost, codes.Unavailable, pb.ErrorReason_LEADERSHIP_LOST},
	{lease.ErrNotFound, codes.NotFound, pb.ErrorReason_NOT_FOUND},
	{lease.ErrConflict, codes.FailedPrecondition, pb.ErrorReason_CAS_MISMATCH},
	{lease.ErrInvalid, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	{lease.ErrNotActive, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	{lease.ErrNotRenewable, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	{lease.ErrExpired, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	{errAudit, codes.Unavailable, pb.ErrorReason_AUDIT_FAILED},
	{errShuttingDown, codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN},
	{ErrCatchingUp, codes.Unavailable, pb.ErrorReason_CATCHING_UP},
	{seal.ErrUnknownTerm, codes.Unavailable, pb.ErrorReason_KEY_TERM_UNKNOWN},
	{seal.ErrNotInitialized, codes.FailedPrecondition, pb.ErrorReason_NOT_INITIALIZED},
	{ErrNotInitialized, codes.FailedPrecondition, pb.ErrorReason_NOT_INITIALIZED},
	{ErrAlreadyInitialized, codes.FailedPrecondition, pb.ErrorReason_ALREADY_INITIALIZED},
	{fsm.ErrCASMismatch, codes.FailedPrecondition, pb.ErrorReason_CAS_MISMATCH},
	{fsm.ErrCASRequired, codes.FailedPrecondition, pb.ErrorReason_CAS_REQUIRED},
	{ErrForeignSnapshot, codes.FailedPrecondition, pb.ErrorReason_FOREIGN_SNAPSHOT},
	{fsm.ErrCompacted, codes.FailedPrecondition, pb.ErrorReason_COMPACTED},
	{fsm.ErrNotFound, codes.NotFound, pb.ErrorReason_NOT_FOUND},
	{ErrDeleted, codes.NotFound, pb.ErrorReason_DELETED},
	{ErrDestroyed, codes.NotFound, pb.ErrorReason_DESTROYED},
	{ErrNotFoundPeer, codes.NotFound, pb.ErrorReason_PEER_NOT_FOUND},
	{fsm.ErrAlreadyExists, codes.AlreadyExists, pb.ErrorReason_ALREADY_EXISTS},
	{fsm.ErrStorage, codes.Unavailable, pb.ErrorReason_STORAGE_FAILED},
	{fsm.ErrClosed, codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN},
	{fsm.ErrInvalidCommand, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	{fsm.ErrRequestIDConflict, codes.InvalidArgument, pb.ErrorReason_REQUEST_ID_CONFLICT},
	// A put sealed again maxVersionConflicts times lost each race to a
	// write of an earlier leader: retryable with the same request id.
	{fsm.ErrVersionConflict, codes.Unavailable, pb.ErrorReason_LEADERSHIP_LOST},
	{fsm.ErrInvalidSnapshot, codes.InvalidArgument, pb.ErrorReason_INVALID_SNAPSHOT},
	{fsm.ErrInvalidOptions, codes.Internal, pb.ErrorReason_INTERNAL},
	{seal.ErrInvalidShare, codes.InvalidArgument, pb.ErrorReason_INVALID_SHARE},
	{seal.ErrDuplicateShare, codes.InvalidArgument, pb.ErrorReason_DUPLICATE_SHARE},
	{seal.ErrWrongShares, codes.InvalidArgument, pb.ErrorReason_WRONG_SHARES},
	{seal.ErrInvalidStaticKey, codes.FailedPrecondition, pb.ErrorReason_STATIC_SEAL_KEY},
	{seal.ErrWrongStaticKey, codes.FailedPrecondition, pb.ErrorReason_STATIC_SEAL_KEY},
	{ErrSealMigration, codes.FailedPrecondition, pb.ErrorReason_SEAL_MIGRATION},
	{ErrAutoUnseal, codes.FailedPrecondition, pb.ErrorReason_STATIC_SEAL_KEY},
	{seal.ErrInvalidConfig, codes.InvalidArgument, pb.ErrorReason_INVALID_SEAL_CONFIG},
	{seal.ErrInvalidSplit, codes.InvalidArgument, pb.ErrorReason_INVALID_SEAL_CONFIG},
	{seal.ErrTermsExhausted, codes.ResourceExhausted, pb.ErrorReason_TERMS_EXHAUSTED},
	{seal.ErrDecrypt, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	{seal.ErrInvalidKeyring, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	{seal.ErrInvalidStored, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	{fsm.ErrCorrupt, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	{errBadData, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	{ErrInvalidArgument, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	{ErrTooLarge, codes.ResourceExhausted, pb.ErrorReason_TOO_LARGE},
	{ErrRateLimited, codes.ResourceExhausted, pb.ErrorReason_RATE_LIMITED},
	{ErrOverloaded, codes.ResourceExhausted, pb.ErrorReason_OVERLOADED},
	{ErrUnauthenticated, codes.Unauthenticated, pb.ErrorReason_UNAUTHENTICATED},
	{ErrPermissionDenied, codes.PermissionDenied, pb.ErrorReason_PERMISSION_DENIED},
	{ErrNodeOnly, codes.PermissionDenied, pb.ErrorReason_PERMISSION_DENIED},
	{ErrClientCertRequired, codes.PermissionDenied, pb.ErrorReason_PERMISSION_DENIED},
	{ErrNoRoute, codes.Unimplemented, pb.ErrorReason_NO_ROUTE},
	{context.DeadlineExceeded, codes.DeadlineExceeded, pb.ErrorReason_DEADLINE_EXCEEDED},
	{context.Canceled, codes.Canceled, pb.ErrorReason_CANCELED},
}

// internalMessage is all a client learns of an error the table does not
// know.
const internalMessage = "internal error: see the server log"

// toStatus converts err to a gRPC status error with an ErrorInfo reason,
// using codeTable. A status error passes through unchanged (a leader's
// answer to a forwarded call keeps its reason). An error the table does not
// know becomes Internal with a generic message, so that nothing unexpected
// (which might carry data) reaches the client.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range codeTable {
		if errors.Is(err, e.err) {
			return grpcutil.StatusError(e.code, e.reason, err.Error())
		}
	}
	return grpcutil.StatusError(codes.Internal, pb.ErrorReason_INTERNAL, internalMessage)
}

// reasonByCode gives a status that a call to another node returned
// without a reason (gRPC made it: a connection that failed, a deadline) the
// reason of its code, so that every status a node sends carries one.
var reasonByCode = map[codes.Code]pb.ErrorReason{
	codes.Unavailable:       pb.ErrorReason_LEADER_UNREACHABLE,
	codes.DeadlineExceeded:  pb.ErrorReason_DEADLINE_EXCEEDED,
	codes.Canceled:          pb.ErrorReason_CANCELED,
	codes.Unimplemented:     pb.ErrorReason_NO_ROUTE,
	codes.ResourceExhausted: pb.ErrorReason_TOO_LARGE,
	codes.InvalidArgument:   pb.ErrorReason_INVALID_ARGUMENT,
	codes.Unauthenticated:   pb.ErrorReason_UNAUTHENTICATED,
	codes.PermissionDenied:  pb.ErrorReason_PERMISSION_DENIED,
	codes.NotFound:          pb.ErrorReason_NOT_FOUND,
}

// withReason returns the status error st with a reason: its own, or the
// one of its code.
func withReason(err error) error {
	if err == nil || hasReason(err) {
		return err
	}
	st := status.Convert(err)
	r, ok := reasonByCode[st.Code()]
	if !ok {
		r = pb.ErrorReason_INTERNAL
	}
	return grpcutil.StatusError(st.Code(), r, st.Message())
}

// reasonOf returns the coffer reason a status error carries.
func reasonOf(err error) pb.ErrorReason {
	return grpcutil.ReasonOf(status.Convert(err))
}

// hasReason reports whether err is a status that carries a coffer reason
// (an answer of a node), as opposed to one made by gRPC itself (a
// connection that failed).
func hasReason(err error) bool {
	return reasonOf(err) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED
}

// messageError gives a sentinel a user-facing message of its own while
// errors.Is still finds the sentinel.
type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.msg }

func (e *messageError) Unwrap() error { return e.err }

// withMessage wraps err with a message that replaces its text.
func withMessage(err error, format string, args ...any) error {
	return &messageError{msg: fmt.Sprintf(format, args...), err: err}
}
