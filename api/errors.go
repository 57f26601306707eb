package api

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/internal/grpcutil"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of coffer's reasons.
const ErrorDomain = grpcutil.ErrorDomain

// Reason returns the machine-readable reason an error carries: the
// ErrorInfo a node (or this client, or an agent) attached to its status.
// It is ERROR_REASON_UNSPECIFIED for nil, for an error that is no status,
// and for a status gRPC made itself (a connection that failed). A
// CacheStaleError is CACHE_TOO_STALE. Decide on reasons, never on message
// text: messages are for people and change.
func Reason(err error) pb.ErrorReason {
	if err == nil {
		return pb.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	var stale *CacheStaleError
	if errors.As(err, &stale) {
		return pb.ErrorReason_CACHE_TOO_STALE
	}
	st, ok := status.FromError(err)
	if !ok {
		return pb.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return grpcutil.ReasonOf(st)
}

// StatusError returns a status error with code, message and reason, in the
// form nodes send: for the client's own errors and the agent's.
func StatusError(code codes.Code, reason pb.ErrorReason, msg string) error {
	return grpcutil.StatusError(code, reason, msg)
}

// retryableReasons are the reasons of errors that another node, or the
// same one a moment later, may not have: the client moves on to the next
// endpoint. Each is sent with codes.Unavailable, except OVERLOADED
// (ResourceExhausted: the node refused the call for its load, see
// IsOverloaded).
var retryableReasons = map[pb.ErrorReason]bool{
	pb.ErrorReason_OVERLOADED:            true,
	pb.ErrorReason_SEALED:                true,
	pb.ErrorReason_NO_LEADER:             true,
	pb.ErrorReason_NOT_LEADER:            true,
	pb.ErrorReason_LEADERSHIP_LOST:       true,
	pb.ErrorReason_COMMIT_TIMEOUT:        true,
	pb.ErrorReason_SHUTTING_DOWN:         true,
	pb.ErrorReason_CATCHING_UP:           true,
	pb.ErrorReason_STALE_BOUND:           true,
	pb.ErrorReason_MIN_INDEX_NOT_REACHED: true,
	pb.ErrorReason_LEADER_UNREACHABLE:    true,
	pb.ErrorReason_STORAGE_FAILED:        true,
	pb.ErrorReason_KEY_TERM_UNKNOWN:      true,
	pb.ErrorReason_AUDIT_FAILED:          true,
	pb.ErrorReason_LOGIN_UNAVAILABLE:     true,
	pb.ErrorReason_ENDPOINT_UNREACHABLE:  true,
	pb.ErrorReason_ATTEMPT_TIMEOUT:       true,
	pb.ErrorReason_LEADER_UNRESPONSIVE:   true,
	pb.ErrorReason_CACHE_TOO_STALE:       true,
	pb.ErrorReason_UPSTREAM_UNREACHABLE:  true,
}

// Retryable reports whether a call that failed with err may succeed on
// another node or a moment later: its reason says so (sealed, no leader,
// stale bound, min_index not reached, overloaded, …), or it carries no
// reason and is Unavailable (gRPC could not reach the node).
func Retryable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return false
	}
	if r := grpcutil.ReasonOf(st); r != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		return retryableReasons[r]
	}
	return st.Code() == codes.Unavailable
}

// IsUnreachable reports whether err means no node was reached: the
// endpoint did not connect, or gRPC failed the call before any node
// answered (no reason attached).
func IsUnreachable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return false
	}
	switch grpcutil.ReasonOf(st) {
	case pb.ErrorReason_ENDPOINT_UNREACHABLE:
		return true
	case pb.ErrorReason_ERROR_REASON_UNSPECIFIED:
		return st.Code() == codes.Unavailable
	}
	return false
}

// IsOverloaded reports whether the node refused the call because it holds
// as many request bytes as its budget allows: nothing was done, and the
// same call may succeed after a back-off.
func IsOverloaded(err error) bool { return Reason(err) == pb.ErrorReason_OVERLOADED }

// IsQuotaExceeded reports whether a lease quota refused the call
// (-max-leases, a role's max_leases).
func IsQuotaExceeded(err error) bool { return Reason(err) == pb.ErrorReason_QUOTA_EXCEEDED }

// IsDatabaseUnreachable reports whether the database behind a
// connection could not be reached (every node would reach the same one).
func IsDatabaseUnreachable(err error) bool {
	return Reason(err) == pb.ErrorReason_DATABASE_UNREACHABLE
}

// IsSealed reports whether the node answered that it is sealed.
func IsSealed(err error) bool { return Reason(err) == pb.ErrorReason_SEALED }

// IsNotInitialized reports whether the cluster has no keys yet.
func IsNotInitialized(err error) bool { return Reason(err) == pb.ErrorReason_NOT_INITIALIZED }

// IsAlreadyInitialized reports whether init found the cluster initialized.
func IsAlreadyInitialized(err error) bool {
	return Reason(err) == pb.ErrorReason_ALREADY_INITIALIZED
}

// IsNoLeader reports whether no leader could take the call: none is known,
// the node asked is not it, or it could not be reached.
func IsNoLeader(err error) bool {
	switch Reason(err) {
	case pb.ErrorReason_NO_LEADER, pb.ErrorReason_NOT_LEADER, pb.ErrorReason_LEADER_UNREACHABLE:
		return true
	}
	return false
}

// IsNotFound reports whether the secret or version does not exist, or the
// version is deleted or destroyed.
func IsNotFound(err error) bool {
	switch Reason(err) {
	case pb.ErrorReason_NOT_FOUND, pb.ErrorReason_DELETED, pb.ErrorReason_DESTROYED, pb.ErrorReason_PEER_NOT_FOUND:
		return true
	}
	return false
}

// IsCASMismatch reports whether a check-and-set write found another
// version (or the secret requires check-and-set).
func IsCASMismatch(err error) bool {
	switch Reason(err) {
	case pb.ErrorReason_CAS_MISMATCH, pb.ErrorReason_CAS_REQUIRED:
		return true
	}
	return false
}

// IsStale reports whether a stale read was refused for its max_staleness.
func IsStale(err error) bool { return Reason(err) == pb.ErrorReason_STALE_BOUND }

// IsMinIndexNotReached reports whether the node had not applied the read's
// min_index in time.
func IsMinIndexNotReached(err error) bool {
	return Reason(err) == pb.ErrorReason_MIN_INDEX_NOT_REACHED
}

// IsPermissionDenied reports whether the token may not make the call.
func IsPermissionDenied(err error) bool { return Reason(err) == pb.ErrorReason_PERMISSION_DENIED }

// IsUnauthenticated reports whether the call had no valid token.
func IsUnauthenticated(err error) bool { return Reason(err) == pb.ErrorReason_UNAUTHENTICATED }

// IsInvalidArgument reports whether the request itself was refused (bad
// field, bad share, request id reused, …): sending it again cannot help.
func IsInvalidArgument(err error) bool {
	st, ok := status.FromError(err)
	return ok && err != nil && st.Code() == codes.InvalidArgument
}

// IsAttemptTimeout reports whether an endpoint did not answer within the
// client's AttemptTimeout.
func IsAttemptTimeout(err error) bool { return Reason(err) == pb.ErrorReason_ATTEMPT_TIMEOUT }
