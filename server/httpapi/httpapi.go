package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/internal/grpcutil"
)

// Caller is who made an HTTP request: the Backend turns it into what the
// gateway reads of a gRPC call (the token, the TLS state with a verified
// client certificate, the client's address).
type Caller struct {
	// Token is the X-Vault-Token (or Authorization: Bearer) header's value.
	Token string
	// TLS is the connection's TLS state, nil on a plaintext node.
	TLS *tls.ConnectionState
	// RemoteAddr is the client's host:port.
	RemoteAddr string
}

// Backend runs a call of the node's gRPC services in process, through
// the same gateway a call over the network goes through.
type Backend interface {
	// Invoke calls the gRPC method (a full name, "/coffer.v1.KV/Get") with
	// req on behalf of c. Its errors are gRPC status errors with coffer's
	// reasons.
	Invoke(ctx context.Context, c Caller, method string, req proto.Message) (proto.Message, error)
	// AppliedIndex is the index of the last entry this node applied.
	AppliedIndex() uint64
	// Reserve takes n bytes of the node's request-byte budget for a
	// request body, waiting a moment when it is spent, and refuses (a
	// status error, OVERLOADED) when it stays spent.
	Reserve(ctx context.Context, n int64) (release func(), err error)
	// Authenticate makes the gateway's checks of a call that needs a
	// token (the node unsealed, the token valid) before a body is read.
	Authenticate(ctx context.Context, c Caller) error
}

// Config configures the handler.
type Config struct {
	Backend Backend
	Logger  hclog.Logger
	// NodeID names the node in X-Coffer-Node.
	NodeID string
	// Version is the coffer version the node runs (seal status answers).
	Version string
	// URL is this node's HTTP API as a client reaches it
	// (https://host:8200), for sys/leader.
	URL string
	// MaxBodyBytes bounds a request body (0: DefaultMaxBodyBytes); a
	// larger one is refused with 413.
	MaxBodyBytes int64
	// Timeout bounds one request (0: DefaultTimeout).
	Timeout time.Duration
}

// DefaultMaxBodyBytes is the largest request body by default (the server
// sets twice its largest gRPC request: room for JSON's quoting).
const DefaultMaxBodyBytes = 2 << 20

// bodyStep is how much of the node's budget a body takes at a time as it
// is read: a client that announces a large body and sends little holds
// little.
const bodyStep = 64 << 10

// bodyReadTimeout bounds the reading of a body: a client that stops
// sending is cut off.
const bodyReadTimeout = 10 * time.Second

// DefaultTimeout bounds a request: a write's commit, a read's wait for its
// index, a forward to the leader.
const DefaultTimeout = 30 * time.Second

// Handler serves Vault's HTTP API under /v1/.
type Handler struct {
	cfg       Config
	endpoints []endpoint
	// exact indexes the exact endpoints by path and prefixes holds the
	// prefix endpoints longest first, both built once by New: a request
	// finds its endpoint without walking the whole table.
	exact    map[string]*endpoint
	prefixes []*endpoint
}

// op is what a request asks, in Vault's terms: the HTTP method, with LIST
// (or GET ?list=true) as its own.
type op string

const (
	opGet    op = "GET"
	opHead   op = "HEAD"
	opPut    op = "PUT"
	opPost   op = "POST"
	opPatch  op = "PATCH"
	opDelete op = "DELETE"
	opList   op = "LIST"
)

// endpointFunc serves one operation on one endpoint.
type endpointFunc func(ctx context.Context, rq *request) (*reply, error)

// endpoint is a path (exact, or every path under a prefix ending in "/")
// and the operations it serves.
type endpoint struct {
	path   string
	prefix bool
	ops    map[op]endpointFunc
	// open: its calls need no token (init, unseal, generate-root,
	// logins), so its body is read before any token is checked.
	open bool
}

// New returns the handler of Vault's HTTP API over b.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	h := &Handler{cfg: cfg}
	h.sysRoutes()
	h.kvRoutes()
	h.authRoutes()
	h.open("sys/init", "sys/unseal", "sys/generate-root/attempt", "sys/generate-root/update",
		"sys/rekey/init", "sys/rekey/update",
		"auth/approle/login", "auth/jwt/login", "auth/kubernetes/login", "auth/cert/login")
	h.exact = make(map[string]*endpoint, len(h.endpoints))
	for i := range h.endpoints {
		if e := &h.endpoints[i]; e.prefix {
			h.prefixes = append(h.prefixes, e)
		} else {
			h.exact[e.path] = e
		}
	}
	slices.SortStableFunc(h.prefixes, func(a, b *endpoint) int { return len(b.path) - len(a.path) })
	return h
}

// handle adds an endpoint: path is exact, or with a trailing "*" every
// path under that prefix.
func (h *Handler) handle(path string, ops map[op]endpointFunc) {
	e := endpoint{path: path, ops: ops}
	if p, ok := strings.CutSuffix(path, "*"); ok {
		e.path, e.prefix = p, true
	}
	h.endpoints = append(h.endpoints, e)
}

// open marks endpoints whose calls need no token (their gRPC routes are
// public or logins): their bodies are read without a token check first.
func (h *Handler) open(paths ...string) {
	for _, p := range paths {
		for i := range h.endpoints {
			if h.endpoints[i].path == strings.TrimSuffix(p, "*") {
				h.endpoints[i].open = true
			}
		}
	}
}

// match finds the endpoint of path: an exact one first, then the longest
// prefix.
func (h *Handler) match(path string) (*endpoint, string) {
	if e := h.exact[path]; e != nil {
		return e, ""
	}
	for _, e := range h.prefixes {
		if strings.HasPrefix(path, e.path) {
			return e, path[len(e.path):]
		}
	}
	return nil, ""
}

// request is one HTTP request on its way to a handler.
type request struct {
	r      *http.Request
	w      http.ResponseWriter
	e      *endpoint
	op     op
	path   string // after /v1/
	rest   string // the part after the endpoint's prefix
	caller Caller
	read   *pb.ReadOptions
	h      *Handler
	// forward: X-Vault-Inconsistent: forward-active-node.
	forward bool
	id      string
	// ctx is the request's context; releases give back the budget its
	// body took.
	ctx      context.Context
	releases []func()
}

// releaseBody gives back the budget the body took.
func (rq *request) releaseBody() {
	for _, r := range rq.releases {
		r()
	}
	rq.releases = nil
}

// meteredBody reads a request body taking the node's budget in steps
// before the bytes are read.
type meteredBody struct {
	rq    *request
	avail int64
}

func (m *meteredBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if m.avail == 0 {
		release, err := m.rq.h.cfg.Backend.Reserve(m.rq.ctx, bodyStep)
		if err != nil {
			return 0, err
		}
		m.rq.releases = append(m.rq.releases, release)
		m.avail = bodyStep
	}
	if int64(len(p)) > m.avail {
		p = p[:m.avail]
	}
	n, err := m.rq.r.Body.Read(p)
	m.avail -= int64(n)
	return n, err
}

// ServeHTTP serves one request of Vault's HTTP API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rq := &request{r: r, w: w, h: h, id: newRequestID()}
	w.Header().Set("Cache-Control", "no-store")
	if h.cfg.NodeID != "" {
		w.Header().Set(headerNode, h.cfg.NodeID)
	}
	rep, err := h.serve(rq, w)
	if err != nil {
		h.writeError(w, rq, err)
		return
	}
	h.writeReply(w, rq, rep)
}

// serve checks the request's path, method, body and headers and runs its
// endpoint.
func (h *Handler) serve(rq *request, w http.ResponseWriter) (*reply, error) {
	r := rq.r
	path, ok := strings.CutPrefix(r.URL.Path, "/v1/")
	if !ok {
		return nil, notFound(r.URL.Path)
	}
	if err := checkPath(path); err != nil {
		return nil, err
	}
	rq.path = path
	if r.ContentLength > h.cfg.MaxBodyBytes {
		return nil, tooLarge(h.cfg.MaxBodyBytes)
	}
	r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
	o, err := opOf(r)
	if err != nil {
		return nil, err
	}
	rq.op = o
	e, rest := h.match(path)
	if e == nil {
		return nil, notFound(path)
	}
	fn := e.ops[o]
	if fn == nil && o == opHead {
		fn = e.ops[opGet]
	}
	if fn == nil && o == opPost {
		fn = e.ops[opPut] // Vault takes POST and PUT alike
	}
	if fn == nil && o == opPut {
		fn = e.ops[opPost]
	}
	if fn == nil {
		allowed := make([]op, 0, len(e.ops))
		for o := range e.ops {
			allowed = append(allowed, o)
		}
		return nil, methodNotAllowed(allowed...)
	}
	if err := checkUnsupported(r.Header); err != nil {
		return nil, err
	}
	rq.rest, rq.e = rest, e
	rq.caller = Caller{Token: tokenOf(r), TLS: r.TLS, RemoteAddr: r.RemoteAddr}
	if rq.read, rq.forward, err = readOptions(r.Header); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	rq.ctx = ctx
	defer rq.releaseBody()
	return fn(ctx, rq)
}

// opOf is the request's operation: LIST for the LIST method or a GET
// with list=true.
func opOf(r *http.Request) (op, error) {
	switch m := op(r.Method); m {
	case opGet:
		if r.URL.RawQuery == "" {
			return m, nil
		}
		if v := r.URL.Query().Get("list"); v == "true" || v == "1" {
			return opList, nil
		}
		return m, nil
	case opHead, opPut, opPost, opPatch, opDelete, opList:
		return m, nil
	}
	return "", methodNotAllowed()
}

// checkPath refuses a path with an empty, "." or ".." segment, a NUL or
// another control character: no path names a secret in two ways.
func checkPath(path string) error {
	if path == "" {
		return notFound(path)
	}
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if s == "" && i == len(segs)-1 {
			continue // a trailing slash (LIST secret/metadata/app/)
		}
		if s == "" || s == "." || s == ".." {
			return badRequest("invalid path %q: it has an empty, \".\" or \"..\" segment; name the path without them", path)
		}
	}
	for _, c := range path {
		if c < 0x20 || c == 0x7f {
			return badRequest("invalid path: it has a control character (NUL or another); name the path without it")
		}
	}
	return nil
}

// checkUnsupported refuses what a client asks of Vault that coffer does
// not do, rather than answer as if it had: a response-wrapped answer would
// otherwise come back unwrapped, and a namespace's request would reach the
// root.
func checkUnsupported(h http.Header) error {
	if h.Get("X-Vault-Wrap-TTL") != "" {
		return badRequest("response wrapping (X-Vault-Wrap-TTL) is not supported by coffer: send the request without it")
	}
	if ns := strings.Trim(h.Get("X-Vault-Namespace"), "/ "); ns != "" && ns != "root" {
		return badRequest("namespaces are not supported by coffer: send the request without X-Vault-Namespace (%q)", clip(ns))
	}
	return nil
}

// tokenOf is the client token: X-Vault-Token, or Authorization: Bearer.
func tokenOf(r *http.Request) string {
	if t := r.Header.Get("X-Vault-Token"); t != "" {
		return t
	}
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// query is a query parameter of the request ("" when absent), without
// parsing a query the request does not have.
func (rq *request) query(name string) string {
	if rq.r.URL.RawQuery == "" {
		return ""
	}
	return rq.r.URL.Query().Get(name)
}

// call runs method with req for the request's caller.
func (rq *request) call(ctx context.Context, method string, req proto.Message) (proto.Message, error) {
	return rq.h.cfg.Backend.Invoke(ctx, rq.caller, method, req)
}

// newRequestID is a request_id of Vault's envelope (a UUID's form).
func newRequestID() string {
	// Unique, not secret: a random prefix per process and a counter, in
	// a UUID's form (crypto/rand per request cost 1 % of a read).
	var b [16]byte
	copy(b[:8], idPrefix[:])
	binary.BigEndian.PutUint64(b[8:], idCounter.Add(1))
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}

// idPrefix and idCounter make request ids.
var (
	idPrefix = func() (p [8]byte) {
		_, _ = rand.Read(p[:])
		return p
	}()
	idCounter atomic.Uint64
)

// reasonOf is the coffer reason of a gRPC status error.
func reasonOf(err error) pb.ErrorReason {
	st, ok := statusOf(err)
	if !ok {
		return pb.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return grpcutil.ReasonOf(st)
}

// isReason reports whether err carries reason.
func isReason(err error, reason pb.ErrorReason) bool { return reasonOf(err) == reason }
