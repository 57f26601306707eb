package grpcutil

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRecoverUnary: a panicking handler gives the caller Internal with the
// INTERNAL reason and the given message, never the panic's text, and the
// log names the panic and the method but not the panic's value.
func TestRecoverUnary(t *testing.T) {
	var log strings.Builder
	logger := hclog.New(&hclog.LoggerOptions{Output: &log})
	ic := RecoverUnary(logger, "internal error: see the log")
	_, err := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, func(context.Context, any) (any, error) {
		panic("secret-marker-123")
	})
	st := status.Convert(err)
	if st.Code() != codes.Internal || st.Message() != "internal error: see the log" || strings.Contains(err.Error(), "secret-marker") {
		t.Fatalf("got %v", err)
	}
	if len(st.Details()) != 1 || st.Details()[0].(*errdetails.ErrorInfo).GetReason() != "INTERNAL" {
		t.Fatalf("details %v", st.Details())
	}
	if strings.Contains(log.String(), "secret-marker-123") || !strings.Contains(log.String(), "/x/Y") || !strings.Contains(log.String(), "panic value of type string") {
		t.Fatalf("the log should name the panic without its value: %q", log.String())
	}
	resp, err := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, func(context.Context, any) (any, error) { return "ok", nil })
	if resp != "ok" || err != nil {
		t.Fatalf("a call that does not panic: %v %v", resp, err)
	}
}

// TestRecoverStream does the same for streams.
func TestRecoverStream(t *testing.T) {
	ic := RecoverStream(hclog.NewNullLogger(), "boom")
	err := ic(nil, nil, &grpc.StreamServerInfo{FullMethod: "/x/S"}, func(any, grpc.ServerStream) error { panic("x") })
	if status.Code(err) != codes.Internal || status.Convert(err).Message() != "boom" {
		t.Fatalf("got %v", err)
	}
}
