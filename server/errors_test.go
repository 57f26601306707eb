package server

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/internal/grpcutil"
	"coffer/replication"
	"coffer/seal"
	"coffer/server/lease"
)

// sentinels is every sentinel error of the layers a request reaches, with
// the code and reason a client must see. TestCodeTableKnowsEverySentinel
// fails when a package gains a sentinel that is missing here.
var sentinels = map[string]struct {
	err    error
	code   codes.Code
	reason pb.ErrorReason
}{
	"fsm.ErrCompacted":               {fsm.ErrCompacted, codes.FailedPrecondition, pb.ErrorReason_COMPACTED},
	"fsm.ErrNotFound":                {fsm.ErrNotFound, codes.NotFound, pb.ErrorReason_NOT_FOUND},
	"fsm.ErrCASMismatch":             {fsm.ErrCASMismatch, codes.FailedPrecondition, pb.ErrorReason_CAS_MISMATCH},
	"fsm.ErrCASRequired":             {fsm.ErrCASRequired, codes.FailedPrecondition, pb.ErrorReason_CAS_REQUIRED},
	"fsm.ErrAlreadyExists":           {fsm.ErrAlreadyExists, codes.AlreadyExists, pb.ErrorReason_ALREADY_EXISTS},
	"fsm.ErrInvalidCommand":          {fsm.ErrInvalidCommand, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	"fsm.ErrRequestIDConflict":       {fsm.ErrRequestIDConflict, codes.InvalidArgument, pb.ErrorReason_REQUEST_ID_CONFLICT},
	"fsm.ErrVersionConflict":         {fsm.ErrVersionConflict, codes.Unavailable, pb.ErrorReason_LEADERSHIP_LOST},
	"fsm.ErrStorage":                 {fsm.ErrStorage, codes.Unavailable, pb.ErrorReason_STORAGE_FAILED},
	"fsm.ErrClosed":                  {fsm.ErrClosed, codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN},
	"fsm.ErrInvalidSnapshot":         {fsm.ErrInvalidSnapshot, codes.InvalidArgument, pb.ErrorReason_INVALID_SNAPSHOT},
	"fsm.ErrInvalidOptions":          {fsm.ErrInvalidOptions, codes.Internal, pb.ErrorReason_INTERNAL},
	"seal.ErrSealed":                 {seal.ErrSealed, codes.Unavailable, pb.ErrorReason_SEALED},
	"seal.ErrNotInitialized":         {seal.ErrNotInitialized, codes.FailedPrecondition, pb.ErrorReason_NOT_INITIALIZED},
	"seal.ErrInvalidConfig":          {seal.ErrInvalidConfig, codes.InvalidArgument, pb.ErrorReason_INVALID_SEAL_CONFIG},
	"seal.ErrInvalidSplit":           {seal.ErrInvalidSplit, codes.InvalidArgument, pb.ErrorReason_INVALID_SEAL_CONFIG},
	"seal.ErrInvalidShare":           {seal.ErrInvalidShare, codes.InvalidArgument, pb.ErrorReason_INVALID_SHARE},
	"seal.ErrDuplicateShare":         {seal.ErrDuplicateShare, codes.InvalidArgument, pb.ErrorReason_DUPLICATE_SHARE},
	"seal.ErrWrongShares":            {seal.ErrWrongShares, codes.InvalidArgument, pb.ErrorReason_WRONG_SHARES},
	"seal.ErrInvalidStaticKey":       {seal.ErrInvalidStaticKey, codes.FailedPrecondition, pb.ErrorReason_STATIC_SEAL_KEY},
	"seal.ErrWrongStaticKey":         {seal.ErrWrongStaticKey, codes.FailedPrecondition, pb.ErrorReason_STATIC_SEAL_KEY},
	"seal.ErrUnknownTerm":            {seal.ErrUnknownTerm, codes.Unavailable, pb.ErrorReason_KEY_TERM_UNKNOWN},
	"seal.ErrDecrypt":                {seal.ErrDecrypt, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	"seal.ErrInvalidKeyring":         {seal.ErrInvalidKeyring, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	"seal.ErrInvalidStored":          {seal.ErrInvalidStored, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	"seal.ErrTermsExhausted":         {seal.ErrTermsExhausted, codes.ResourceExhausted, pb.ErrorReason_TERMS_EXHAUSTED},
	"fsm.ErrCorrupt":                 {fsm.ErrCorrupt, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	"server.errBadData":              {errBadData, codes.DataLoss, pb.ErrorReason_DATA_CORRUPT},
	"replication.ErrNotLeader":       {replication.ErrNotLeader, codes.Unavailable, pb.ErrorReason_NOT_LEADER},
	"replication.ErrNoLeader":        {replication.ErrNoLeader, codes.Unavailable, pb.ErrorReason_NO_LEADER},
	"replication.ErrLeadershipLost":  {replication.ErrLeadershipLost, codes.Unavailable, pb.ErrorReason_LEADERSHIP_LOST},
	"replication.ErrShutdown":        {replication.ErrShutdown, codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN},
	"replication.ErrTimeout":         {replication.ErrTimeout, codes.Unavailable, pb.ErrorReason_COMMIT_TIMEOUT},
	"replication.ErrUnknownServer":   {replication.ErrUnknownServer, codes.NotFound, pb.ErrorReason_PEER_NOT_FOUND},
	"server.ErrNotInitialized":       {ErrNotInitialized, codes.FailedPrecondition, pb.ErrorReason_NOT_INITIALIZED},
	"server.ErrCatchingUp":           {ErrCatchingUp, codes.Unavailable, pb.ErrorReason_CATCHING_UP},
	"server.ErrAlreadyInitialized":   {ErrAlreadyInitialized, codes.FailedPrecondition, pb.ErrorReason_ALREADY_INITIALIZED},
	"server.ErrSealMigration":        {ErrSealMigration, codes.FailedPrecondition, pb.ErrorReason_SEAL_MIGRATION},
	"server.ErrAutoUnseal":           {ErrAutoUnseal, codes.FailedPrecondition, pb.ErrorReason_STATIC_SEAL_KEY},
	"server.ErrInvalidArgument":      {ErrInvalidArgument, codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	"server.ErrTooLarge":             {ErrTooLarge, codes.ResourceExhausted, pb.ErrorReason_TOO_LARGE},
	"server.ErrUnauthenticated":      {ErrUnauthenticated, codes.Unauthenticated, pb.ErrorReason_UNAUTHENTICATED},
	"server.ErrPermissionDenied":     {ErrPermissionDenied, codes.PermissionDenied, pb.ErrorReason_PERMISSION_DENIED},
	"server.ErrNoRoute":              {ErrNoRoute, codes.Unimplemented, pb.ErrorReason_NO_ROUTE},
	"server.ErrNodeOnly":             {ErrNodeOnly, codes.PermissionDenied, pb.ErrorReason_PERMISSION_DENIED},
	"server.ErrRateLimited":          {ErrRateLimited, codes.ResourceExhausted, pb.ErrorReason_RATE_LIMITED},
	"server.ErrOverloaded":           {ErrOverloaded, codes.ResourceExhausted, pb.ErrorReason_OVERLOADED},
	"server.ErrClientCertRequired":   {ErrClientCertRequired, codes.PermissionDenied, pb.ErrorReason_PERMISSION_DENIED},
	"server.errAudit":                {errAudit, codes.Unavailable, pb.ErrorReason_AUDIT_FAILED},
	"server.ErrDeleted":              {ErrDeleted, codes.NotFound, pb.ErrorReason_DELETED},
	"server.ErrDestroyed":            {ErrDestroyed, codes.NotFound, pb.ErrorReason_DESTROYED},
	"server.ErrStale":                {ErrStale, codes.Unavailable, pb.ErrorReason_STALE_BOUND},
	"server.ErrMinIndex":             {ErrMinIndex, codes.Unavailable, pb.ErrorReason_MIN_INDEX_NOT_REACHED},
	"server.ErrLeaderUnreachable":    {ErrLeaderUnreachable, codes.Unavailable, pb.ErrorReason_LEADER_UNREACHABLE},
	"server.errShuttingDown":         {errShuttingDown, codes.Unavailable, pb.ErrorReason_SHUTTING_DOWN},
	"server.ErrNotFoundPeer":         {ErrNotFoundPeer, codes.NotFound, pb.ErrorReason_PEER_NOT_FOUND},
	"server.ErrStorage":              {ErrStorage, codes.Unavailable, pb.ErrorReason_STORAGE_FAILED},
	"server.ErrLoginUnavailable":     {ErrLoginUnavailable, codes.Unavailable, pb.ErrorReason_LOGIN_UNAVAILABLE},
	"server.ErrDatabaseUnreachable":  {ErrDatabaseUnreachable, codes.Unavailable, pb.ErrorReason_DATABASE_UNREACHABLE},
	"server.ErrDatabaseError":        {ErrDatabaseError, codes.FailedPrecondition, pb.ErrorReason_DATABASE_ERROR},
	"fsm.ErrQuotaExceeded":           {fsm.ErrQuotaExceeded, codes.ResourceExhausted, pb.ErrorReason_QUOTA_EXCEEDED},
	"lease.ErrIntentLost":            {lease.ErrIntentLost, codes.Unavailable, pb.ErrorReason_LEADERSHIP_LOST},
	"lease.ErrQuotaExceeded":         {lease.ErrQuotaExceeded, codes.ResourceExhausted, pb.ErrorReason_QUOTA_EXCEEDED},
	"server.ErrForeignSnapshot":      {ErrForeignSnapshot, codes.FailedPrecondition, pb.ErrorReason_FOREIGN_SNAPSHOT},
	"context.DeadlineExceeded":       {context.DeadlineExceeded, codes.DeadlineExceeded, pb.ErrorReason_DEADLINE_EXCEEDED},
	"context.Canceled":               {context.Canceled, codes.Canceled, pb.ErrorReason_CANCELED},
	"server.withMessage(ErrStale)":   {withMessage(ErrStale, "x"), codes.Unavailable, pb.ErrorReason_STALE_BOUND},
	"server.invalidf":                {invalidf("field %s", "x"), codes.InvalidArgument, pb.ErrorReason_INVALID_ARGUMENT},
	"wrapped replication.ErrTimeout": {errors.Join(errors.New("x"), replication.ErrTimeout), codes.Unavailable, pb.ErrorReason_COMMIT_TIMEOUT},
}

// TestCodeTable: every sentinel becomes its code with its reason, as an
// ErrorInfo of coffer's domain, and keeps its message; an unknown error
// becomes Internal with a generic message.
func TestCodeTable(t *testing.T) {
	for name, c := range sentinels {
		err := toStatus(c.err)
		st := status.Convert(err)
		if st.Code() != c.code {
			t.Errorf("%s: code %s, want %s", name, st.Code(), c.code)
		}
		if got := reasonOf(err); got != c.reason {
			t.Errorf("%s: reason %s, want %s", name, got, c.reason)
		}
		if c.code != codes.Internal && st.Message() != c.err.Error() {
			t.Errorf("%s: message %q, want %q", name, st.Message(), c.err.Error())
		}
		var info *errdetails.ErrorInfo
		for _, d := range st.Details() {
			info, _ = d.(*errdetails.ErrorInfo)
		}
		if info == nil || info.Domain != grpcutil.ErrorDomain {
			t.Errorf("%s: details %v, want an ErrorInfo of domain %s", name, st.Details(), grpcutil.ErrorDomain)
		}
	}
	err := toStatus(errors.New("disk said: secret-marker"))
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "secret-marker") || reasonOf(err) != pb.ErrorReason_INTERNAL {
		t.Fatalf("an unknown error became %v", err)
	}
	// A status without a reason (gRPC's own, from a call to a peer) gets
	// the reason of its code; one with a reason keeps it.
	if got := reasonOf(withReason(status.Error(codes.Unavailable, "connection refused"))); got != pb.ErrorReason_LEADER_UNREACHABLE {
		t.Fatalf("a reasonless Unavailable got %s", got)
	}
	sealed := toStatus(seal.ErrSealed)
	if got := withReason(sealed); reasonOf(got) != pb.ErrorReason_SEALED {
		t.Fatalf("a sealed status became %v", got)
	}
}

// TestCodeTableKnowsEverySentinel parses the sentinel var blocks of fsm,
// seal, replication and server and fails for any sentinel that neither
// TestCodeTable checks nor is known to stay inside the node.
func TestCodeTableKnowsEverySentinel(t *testing.T) {
	// Errors that never reach a status: wrapped by a sentinel above, or
	// only seen inside gRPC's own connection errors.
	internalOnly := map[string]bool{
		"fsm.errCorruptMeta":          true, // wrapped by fsm.ErrCorrupt
		"replication.ErrIsolated":     true, // a test network's dial error, inside gRPC's status
		"server.errNotHere":           true, // a mark on a login refusal, which carries its own sentinel
		"server.errPasswordUnchanged": true, // a mark on a failed static rotation, which carries its own sentinel
		"server.errLeadershipLost":    true, // ends a scheduled snapshot's writes; logged, never returned to a caller
	}
	for pkg, dir := range map[string]string{"fsm": "../fsm", "seal": "../seal", "replication": "../replication", "server": "."} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range file.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || gd.Tok != token.VAR {
					continue
				}
				for _, spec := range gd.Specs {
					vs := spec.(*ast.ValueSpec)
					for i, name := range vs.Names {
						if !strings.HasPrefix(strings.ToLower(name.Name), "err") || i >= len(vs.Values) || !isErrorsNew(vs.Values[i]) {
							continue
						}
						key := pkg + "." + name.Name
						if _, ok := sentinels[key]; !ok && !internalOnly[key] {
							t.Errorf("%s (%s) has no entry in the status table test: add it to codeTable and to sentinels", key, f)
						}
					}
				}
			}
		}
	}
}

// isErrorsNew reports whether e is a call of errors.New.
func isErrorsNew(e ast.Expr) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "errors" && sel.Sel.Name == "New"
}

// TestAdmitRefusesUnroutedMethods: a method with no route is refused with
// NO_ROUTE before anything else is looked at.
func TestAdmitRefusesUnroutedMethods(t *testing.T) {
	g := &gateway{}
	_, _, err := g.admit(context.Background(), "/coffer.v1.KV/NoSuchMethod")
	if !errors.Is(err, ErrNoRoute) {
		t.Fatalf("admit of an unknown method: %v", err)
	}
	if got := reasonOf(toStatus(err)); got != pb.ErrorReason_NO_ROUTE {
		t.Fatalf("reason %s", got)
	}
}
