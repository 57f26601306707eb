package grpcutil

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every coffer reason.
const ErrorDomain = "coffer"

// StatusError returns a status error with code, message and reason carried
// as ErrorInfo: the one form in which nodes, agents and the client say why
// a call failed.
func StatusError(code codes.Code, reason pb.ErrorReason, msg string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain})
	if err != nil {
		return status.Error(code, msg)
	}
	return st.Err()
}

// ReasonOf returns the coffer reason st carries, or
// ERROR_REASON_UNSPECIFIED when it carries none (gRPC made it).
func ReasonOf(st *status.Status) pb.ErrorReason {
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != ErrorDomain {
			continue
		}
		if v, ok := pb.ErrorReason_value[info.GetReason()]; ok {
			return pb.ErrorReason(v)
		}
	}
	return pb.ErrorReason_ERROR_REASON_UNSPECIFIED
}
