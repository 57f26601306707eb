package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// reply is what an endpoint answers.
type reply struct {
	// status is the HTTP status (0: 200 with a body, 204 without).
	status int
	// data goes in Vault's envelope ("data"); raw, when set, is the whole
	// body instead (sys/health, sys/seal-status, sys/init answer bare).
	data any
	raw  any
	// auth is the envelope's "auth" (a login's or a token's).
	auth any
	// leaseDuration and renewable fill the envelope's fields of the same
	// names.
	leaseDuration int64
	renewable     bool
	// leaseID is the envelope's lease_id (dynamic credentials); leaseOnly
	// answers the envelope without data (a lease's renewal).
	leaseID   string
	leaseOnly bool
	// warnings are the envelope's warnings.
	warnings []string
	// text, when set, is the whole body as is, of contentType (metrics).
	text        []byte
	contentType string
	// mountType names the engine that answered ("kv", "token", ...).
	mountType string
	// meta describes the read (X-Coffer-* headers), index a write's Raft
	// index (X-Vault-Index).
	meta  *pb.ReadMeta
	index uint64
}

// envelope is Vault's response body.
type envelope struct {
	RequestID     string   `json:"request_id"`
	LeaseID       string   `json:"lease_id"`
	Renewable     bool     `json:"renewable"`
	LeaseDuration int64    `json:"lease_duration"`
	Data          any      `json:"data"`
	WrapInfo      any      `json:"wrap_info"`
	Warnings      []string `json:"warnings"`
	Auth          any      `json:"auth"`
	MountType     string   `json:"mount_type"`
}

// noContent is the reply of a write that answers nothing (204).
func noContent() *reply { return &reply{status: http.StatusNoContent} }

func (h *Handler) writeReply(w http.ResponseWriter, rq *request, rep *reply) {
	setConsistencyHeaders(w.Header(), rep)
	status := rep.status
	if rep.text != nil {
		h := w.Header()
		h["Content-Type"] = []string{rep.contentType}
		h["Content-Length"] = []string{strconv.Itoa(len(rep.text))}
		w.WriteHeader(http.StatusOK)
		if rq.op != opHead {
			_, _ = w.Write(rep.text)
		}
		return
	}
	var body any
	switch {
	case rep.raw != nil:
		body = rep.raw
	case rep.data != nil || rep.auth != nil || rep.leaseOnly:
		body = envelope{RequestID: rq.id, Data: rep.data, Auth: rep.auth, LeaseID: rep.leaseID, LeaseDuration: rep.leaseDuration,
			Renewable: rep.renewable, MountType: rep.mountType, Warnings: rep.warnings}
	}
	if body == nil {
		if status == 0 {
			status = http.StatusNoContent
		}
		w.WriteHeader(status)
		return
	}
	if status == 0 {
		status = http.StatusOK
	}
	writeJSON(w, status, body, rq.op == opHead)
}

func writeJSON(w http.ResponseWriter, status int, body any, head bool) {
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // a large answer's buffer is not kept
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	if err := json.NewEncoder(buf).Encode(body); err != nil { // one line, with its newline
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"errors":["internal error: the answer could not be encoded"]}` + "\n")
	}
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(buf.Len())}
	w.WriteHeader(status)
	if !head {
		_, _ = w.Write(buf.Bytes())
	}
}

// bufPool keeps the buffers answers are encoded into.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// httpError is an error the handler makes itself, with its status.
type httpError struct {
	status int
	msgs   []string
}

func (e *httpError) Error() string { return strings.Join(e.msgs, "; ") }

func badRequest(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, msgs: []string{fmt.Sprintf(format, args...)}}
}

func notFound(path string) error {
	return &httpError{status: http.StatusNotFound, msgs: []string{fmt.Sprintf("no handler for route %q. route entry not found.", path)}}
}

// notFoundEmpty is Vault's answer to a read of nothing: 404 with no
// message.
func notFoundEmpty() error { return &httpError{status: http.StatusNotFound, msgs: []string{}} }

// methodNotAllowed refuses an operation the path does not serve, naming
// those it does (none for an unknown method).
func methodNotAllowed(allowed ...op) error {
	msg := "unsupported operation"
	if len(allowed) > 0 {
		names := make([]string, len(allowed))
		for i, o := range allowed {
			names[i] = string(o)
		}
		slices.Sort(names)
		msg += ": this path takes " + strings.Join(names, ", ")
	}
	return &httpError{status: http.StatusMethodNotAllowed, msgs: []string{msg}}
}

func tooLarge(limit int64) error {
	return &httpError{status: http.StatusRequestEntityTooLarge, msgs: []string{fmt.Sprintf("request body too large: the limit is %d bytes; send less (a secret's values in several secrets)", limit)}}
}

func (h *Handler) writeError(w http.ResponseWriter, rq *request, err error) {
	status, msgs := h.errorOf(err)
	writeJSON(w, status, struct {
		Errors []string `json:"errors"`
	}{msgs}, rq.op == opHead)
}

// statusOf finds the gRPC status in err.
func statusOf(err error) (*status.Status, bool) {
	var he *httpError
	if errors.As(err, &he) {
		return nil, false
	}
	return status.FromError(err)
}

// errorOf is the HTTP status and messages of err: Vault's status for the
// same failure, coffer's message (which says what to do).
func (h *Handler) errorOf(err error) (int, []string) {
	var he *httpError
	if errors.As(err, &he) {
		return he.status, he.msgs
	}
	st, ok := status.FromError(err)
	if !ok {
		h.cfg.Logger.Error("an HTTP request failed with an error that is not a status", "error", err)
		return http.StatusInternalServerError, []string{"internal error: see the node's log"}
	}
	msg := strings.TrimPrefix(st.Message(), "server: ")
	// Vault's exact words first (tools compare errors[0] with them), then
	// coffer's, which say what to do.
	say := func(vaultWords string) []string {
		if msg == "" || msg == vaultWords {
			return []string{vaultWords}
		}
		return []string{vaultWords, msg}
	}
	switch reasonOf(err) {
	case pb.ErrorReason_UNAUTHENTICATED:
		// The gRPC API's hint names its own variable; Vault's clients send
		// the token in X-Vault-Token.
		msg = strings.Replace(msg, "set COFFER_TOKEN or -token", "send it in X-Vault-Token (VAULT_TOKEN for the vault CLI)", 1)
		return http.StatusForbidden, say("permission denied")
	case pb.ErrorReason_PERMISSION_DENIED:
		return http.StatusForbidden, say("permission denied")
	case pb.ErrorReason_NOT_FOUND, pb.ErrorReason_NO_ROUTE, pb.ErrorReason_PEER_NOT_FOUND:
		return http.StatusNotFound, []string{msg}
	case pb.ErrorReason_DELETED, pb.ErrorReason_DESTROYED:
		return http.StatusNotFound, []string{}
	case pb.ErrorReason_CAS_MISMATCH:
		return http.StatusBadRequest, say("check-and-set parameter did not match the current version")
	case pb.ErrorReason_CAS_REQUIRED:
		return http.StatusBadRequest, say("check-and-set parameter required for this call")
	case pb.ErrorReason_SEALED:
		return http.StatusServiceUnavailable, say("Vault is sealed")
	case pb.ErrorReason_NOT_INITIALIZED:
		return http.StatusServiceUnavailable, say("Vault is not initialized")
	case pb.ErrorReason_ALREADY_INITIALIZED:
		return http.StatusBadRequest, say("Vault is already initialized")
	case pb.ErrorReason_MIN_INDEX_NOT_REACHED:
		// Vault's answer to a node behind the client's X-Vault-Index: the
		// client retries (here or elsewhere).
		return http.StatusPreconditionFailed, []string{msg}
	case pb.ErrorReason_TOO_LARGE:
		return http.StatusRequestEntityTooLarge, []string{msg}
	case pb.ErrorReason_RATE_LIMITED, pb.ErrorReason_QUOTA_EXCEEDED:
		return http.StatusTooManyRequests, []string{msg}
	case pb.ErrorReason_DATABASE_ERROR:
		// Vault answers a statement the database refused with 500.
		return http.StatusInternalServerError, []string{msg}
	case pb.ErrorReason_AUDIT_FAILED, pb.ErrorReason_INTERNAL, pb.ErrorReason_DATA_CORRUPT:
		return http.StatusInternalServerError, []string{msg}
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.AlreadyExists, codes.OutOfRange:
		return http.StatusBadRequest, []string{msg}
	case codes.Unauthenticated, codes.PermissionDenied:
		return http.StatusForbidden, say("permission denied")
	case codes.NotFound:
		return http.StatusNotFound, []string{msg}
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return http.StatusServiceUnavailable, []string{msg}
	case codes.DeadlineExceeded, codes.Canceled:
		return http.StatusGatewayTimeout, []string{msg}
	case codes.Unimplemented:
		return http.StatusNotFound, []string{msg}
	}
	return http.StatusInternalServerError, []string{msg}
}

// decode reads the request's JSON body into v. An empty body leaves v as
// it is. A body of another content type, one that is not JSON, or one
// with data after the JSON value is refused with 400 (415 for the type).
func (rq *request) decode(v any) error {
	body, err := rq.readBody()
	if err != nil {
		return err
	}
	trimmed := bytes.TrimSpace(body)
	if ct := rq.r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		// As Vault does, a body that starts as a JSON object is read as
		// JSON whatever its type says (curl -d sends the type of a form).
		if (err != nil || !jsonType(mt)) && !(len(trimmed) > 0 && trimmed[0] == '{') {
			return &httpError{status: http.StatusUnsupportedMediaType, msgs: []string{fmt.Sprintf("unsupported content type %q: send a JSON object (application/json)", clip(ct))}}
		}
	}
	if len(trimmed) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return badRequest("the request body is not valid JSON for this path: %s", jsonError(err))
	}
	if dec.More() {
		return badRequest("the request body has data after its JSON value: send one JSON object")
	}
	return nil
}

// readBody reads the request's body: for a call that needs a token, only
// once the token is known good (a stranger's body costs nothing); within
// bodyReadTimeout; taking the node's budget as it is read.
func (rq *request) readBody() ([]byte, error) {
	if rq.r.ContentLength == 0 {
		return nil, nil
	}
	if rq.e != nil && !rq.e.open {
		if err := rq.h.cfg.Backend.Authenticate(rq.ctx, rq.caller); err != nil {
			return nil, err
		}
	}
	rc := http.NewResponseController(rq.w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyReadTimeout))
	body, err := io.ReadAll(&meteredBody{rq: rq})
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var mbe *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &mbe):
			return nil, tooLarge(mbe.Limit)
		case errors.As(err, &ne) && ne.Timeout():
			return nil, &httpError{status: http.StatusRequestTimeout, msgs: []string{fmt.Sprintf("the request body did not arrive within %s: send it whole", bodyReadTimeout)}}
		}
		if _, ok := statusOf(err); ok {
			return nil, err // the budget is spent: 503
		}
		return nil, badRequest("the request body could not be read: %v", err)
	}
	return body, nil
}

// jsonType reports whether a media type is JSON (application/json,
// application/merge-patch+json, ...). Vault's clients also send bodies
// as text/plain or without a type.
func jsonType(mt string) bool {
	return mt == "application/json" || strings.HasSuffix(mt, "+json") || mt == "text/plain" || mt == "text/json"
}

// jsonError describes a decoding error in one line without echoing the
// body.
func jsonError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type, te.Value)
		}
		return fmt.Sprintf("the body must be %s, not %s", te.Type, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "it ends before the JSON value does"
	}
	return "it does not decode"
}
