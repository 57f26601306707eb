package api

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// TestReasonPredicates: the predicates read the reason a status carries,
// never its message.
func TestReasonPredicates(t *testing.T) {
	sealed := StatusError(codes.Unavailable, pb.ErrorReason_SEALED, "anything at all")
	if !IsSealed(sealed) || !Retryable(sealed) || IsUnreachable(sealed) || IsNotFound(sealed) {
		t.Fatalf("sealed: %v", sealed)
	}
	// The word "sealed" in a message means nothing.
	if IsSealed(status.Error(codes.Unavailable, "node is sealed")) {
		t.Fatal("a message that says sealed, without the reason, was taken for SEALED")
	}
	// A status gRPC made itself (no reason) is a node not reached.
	conn := status.Error(codes.Unavailable, "connection error: refused")
	if !IsUnreachable(conn) || !Retryable(conn) || Reason(conn) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Fatalf("connection error: %v", conn)
	}
	// ResourceExhausted without the reason is a limit, not a load: a
	// message too large for the node is refused again anywhere.
	if tooLarge := status.Error(codes.ResourceExhausted, "grpc: received message larger than max"); Retryable(tooLarge) || IsOverloaded(tooLarge) {
		t.Fatalf("a message over the node's limit was taken for a retryable load: %v", tooLarge)
	}
	nf := fmt.Errorf("wrapped: %w", StatusError(codes.NotFound, pb.ErrorReason_DESTROYED, "gone"))
	if !IsNotFound(nf) || Retryable(nf) {
		t.Fatalf("destroyed: %v", nf)
	}
	for _, c := range []struct {
		reason pb.ErrorReason
		code   codes.Code
		is     func(error) bool
		retry  bool
	}{
		{pb.ErrorReason_NO_LEADER, codes.Unavailable, IsNoLeader, true},
		{pb.ErrorReason_LEADER_UNREACHABLE, codes.Unavailable, IsNoLeader, true},
		{pb.ErrorReason_NOT_INITIALIZED, codes.FailedPrecondition, IsNotInitialized, false},
		{pb.ErrorReason_ALREADY_INITIALIZED, codes.FailedPrecondition, IsAlreadyInitialized, false},
		{pb.ErrorReason_CAS_MISMATCH, codes.FailedPrecondition, IsCASMismatch, false},
		{pb.ErrorReason_STALE_BOUND, codes.Unavailable, IsStale, true},
		{pb.ErrorReason_MIN_INDEX_NOT_REACHED, codes.Unavailable, IsMinIndexNotReached, true},
		{pb.ErrorReason_PERMISSION_DENIED, codes.PermissionDenied, IsPermissionDenied, false},
		{pb.ErrorReason_UNAUTHENTICATED, codes.Unauthenticated, IsUnauthenticated, false},
		{pb.ErrorReason_REQUEST_ID_CONFLICT, codes.InvalidArgument, IsInvalidArgument, false},
		{pb.ErrorReason_ATTEMPT_TIMEOUT, codes.Unavailable, IsAttemptTimeout, true},
		{pb.ErrorReason_ENDPOINT_UNREACHABLE, codes.Unavailable, IsUnreachable, true},
		{pb.ErrorReason_OVERLOADED, codes.ResourceExhausted, IsOverloaded, true},
	} {
		err := StatusError(c.code, c.reason, "msg")
		if !c.is(err) || Retryable(err) != c.retry || Reason(err) != c.reason {
			t.Errorf("%s: predicate %v, Retryable %v (want %v), Reason %s", c.reason, c.is(err), Retryable(err), c.retry, Reason(err))
		}
	}
	stale := &CacheStaleError{Path: "secret/x", Age: time.Minute, Err: conn}
	if Reason(stale) != pb.ErrorReason_CACHE_TOO_STALE || !errors.Is(stale, ErrCacheTooStale) || Reason(status.Convert(stale).Err()) != pb.ErrorReason_CACHE_TOO_STALE {
		t.Fatalf("cache stale: %v", stale)
	}
	if Reason(nil) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED || Retryable(nil) || Retryable(errors.New("x")) {
		t.Fatal("nil or plain errors")
	}
}
