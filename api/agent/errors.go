package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Errors of the agent. Each message says what to do about it.
var (
	// ErrInvalidConfig wraps a Config field that cannot work; the wrapping
	// message names it.
	ErrInvalidConfig = errors.New("agent: invalid configuration")
	// ErrNoCacheKey means a cache directory was given without a key.
	ErrNoCacheKey = errors.New("agent: -cache-dir needs a key to encrypt the cache: set -cache-key-file=FILE (32 bytes, raw or base64) or $" + EnvCacheKey + " (base64), e.g. from `openssl rand -base64 32`")
	// ErrBadCacheKey means the cache key is not 32 bytes; the wrapping
	// message says what it is.
	ErrBadCacheKey = errors.New("agent: the cache key must be 32 bytes, raw or base64 (e.g. `openssl rand -base64 32`)")
	// ErrWrongCacheKey means the cache file was written with another key.
	ErrWrongCacheKey = errors.New("agent: the cache file was written with another key")
	// ErrCorruptCacheFile means the cache file could not be decoded; the
	// agent starts with an empty cache.
	ErrCorruptCacheFile = errors.New("agent: the cache file is corrupt or of an unknown version")
	// ErrNotANode answers the Sys calls that only a node can serve.
	ErrNotANode = errors.New("this is a coffer agent: send it to a node (set COFFER_ADDR or -address to a node's API address)")
	// ErrShuttingDown answers calls while the agent stops.
	ErrShuttingDown = errors.New("coffer agent is shutting down: retry on another endpoint")
	// ErrNoToken means a caller sent no token and the agent does not lend
	// its own.
	ErrNoToken = errors.New("coffer agent: the call carries no token: set COFFER_TOKEN or -token (the agent lends its own token only with -use-agent-token on a unix socket)")
	// ErrBadAuthorization means the caller's authorization header is not
	// "Bearer <token>".
	ErrBadAuthorization = errors.New("coffer agent: the authorization header must be \"Bearer <token>\": set COFFER_TOKEN or -token")
)

// upstreamPrefix starts the message of an Unavailable answer that comes
// from upstream, so that a person does not take it for a failure to reach
// the agent. Programs read the reason, which passes through unchanged.
const upstreamPrefix = "coffer agent: upstream: "

// toStatus turns the error of a call into the status the caller sees. It
// is the only place where the agent's errors become status codes: the
// agent's own errors get their code and reason here; the cluster's answers
// pass through with their code and reason, Unavailable ones with a prefix
// saying they come from upstream.
func (a *Agent) toStatus(method string, err error) error {
	if err == nil {
		return nil
	}
	var stale *api.CacheStaleError
	switch {
	case errors.As(err, &stale):
		return api.StatusError(codes.Unavailable, pb.ErrorReason_CACHE_TOO_STALE, staleMessage(stale, a.cfg.Cache.TTL))
	case errors.Is(err, api.ErrClosed), errors.Is(err, ErrShuttingDown):
		return api.StatusError(codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN, ErrShuttingDown.Error())
	case errors.Is(err, ErrNotANode):
		return api.StatusError(codes.FailedPrecondition, pb.ErrorReason_NOT_A_NODE, ErrNotANode.Error())
	case errors.Is(err, ErrBadAuthorization):
		return api.StatusError(codes.Unauthenticated, pb.ErrorReason_UNAUTHENTICATED, ErrBadAuthorization.Error())
	case errors.Is(err, ErrNoToken):
		return api.StatusError(codes.Unauthenticated, pb.ErrorReason_UNAUTHENTICATED, ErrNoToken.Error())
	case errors.Is(err, context.Canceled):
		if _, ok := status.FromError(err); !ok {
			return api.StatusError(codes.Canceled, pb.ErrorReason_CANCELED, err.Error())
		}
	case errors.Is(err, context.DeadlineExceeded):
		if _, ok := status.FromError(err); !ok {
			return api.StatusError(codes.DeadlineExceeded, pb.ErrorReason_DEADLINE_EXCEEDED, err.Error())
		}
	}
	st, ok := status.FromError(err)
	if !ok {
		a.logger.Error("request failed", "method", method, "error", err)
		return api.StatusError(codes.Internal, pb.ErrorReason_INTERNAL, agentInternal)
	}
	if fromUpstream(err) && st.Code() == codes.Unavailable {
		if api.IsUnreachable(err) {
			// The caller reached the agent; the agent reached no node.
			return api.StatusError(codes.Unavailable, pb.ErrorReason_UPSTREAM_UNREACHABLE, upstreamPrefix+st.Message())
		}
		return restate(st, upstreamPrefix+st.Message())
	}
	return st.Err()
}

// upstreamError marks an error that an upstream call returned, so that
// toStatus can tell it from the agent's own.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string              { return e.err.Error() }
func (e *upstreamError) Unwrap() error              { return e.err }
func (e *upstreamError) GRPCStatus() *status.Status { return status.Convert(e.err) }

// fromUpstream reports whether err came from an upstream call.
func fromUpstream(err error) bool {
	var u *upstreamError
	return errors.As(err, &u)
}

// restate returns st with another message, keeping its code and details
// (the reason).
func restate(st *status.Status, msg string) error {
	p := st.Proto()
	p.Message = msg
	return status.FromProto(p).Err()
}

// staleMessage explains a cached value past its budget.
func staleMessage(e *api.CacheStaleError, ttl time.Duration) string {
	return fmt.Sprintf("coffer agent: the cluster is unreachable and the cached value of %s is past -max-stale (fetched %s ago; served up to -ttl=%s + -max-stale=%s): bring a node back, check COFFER_ADDR, or raise -max-stale; last error: %s",
		e.Path, e.Age.Round(time.Millisecond), ttl, e.MaxStale, status.Convert(e.Err).Message())
}
