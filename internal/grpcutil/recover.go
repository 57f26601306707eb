// Package grpcutil holds the gRPC plumbing that the node and the agent
// share: the recovery interceptors and the status errors that carry a
// coffer reason.
package grpcutil

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	pb "coffer/api/cofferpb"
)

// describe says what panicked without the panic's value, which may hold
// request data (a secret): a runtime error's own message (an index out of
// range, a nil dereference), else only the value's type.
func describe(r any) string {
	if err, ok := r.(runtime.Error); ok {
		return err.Error()
	}
	return fmt.Sprintf("panic value of type %T", r)
}

// RecoverUnary returns an interceptor that turns a panic in the rest of
// the chain into an Internal error with msg, and logs the panic with its
// stack. Chain it first.
func RecoverUnary(logger hclog.Logger, msg string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				logger.Error("panic in handler", "method", info.FullMethod, "panic", describe(r), "stack", string(debug.Stack()))
				resp, err = nil, StatusError(codes.Internal, pb.ErrorReason_INTERNAL, msg)
			}
		}()
		return handler(ctx, req)
	}
}

// RecoverStream is RecoverUnary for streaming calls.
func RecoverStream(logger hclog.Logger, msg string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				logger.Error("panic in stream handler", "method", info.FullMethod, "panic", describe(r), "stack", string(debug.Stack()))
				err = StatusError(codes.Internal, pb.ErrorReason_INTERNAL, msg)
			}
		}()
		return handler(srv, ss)
	}
}
