package server

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/server/auth"
)

// Limits of a login request and of the roles.
const (
	maxLoginData      = 8
	maxLoginValue     = auth.MaxTokenSize
	maxRoleName       = 128
	maxRoleListLength = 64
	// maxLoginAttempts bounds how often the leader checks a login again
	// after the credential changed under it (another leader's spend).
	maxLoginAttempts = 3
)

// loginCertKey carries, on a certificate login a follower forwards to the
// leader, the client certificate the follower verified in its TLS
// handshake (DER, base64): the leader sees only the follower's.
const loginCertKey = "x-coffer-login-cert"

// errNotHere marks a login refused because this node's state does not
// hold the credential (a role or secret_id made a moment ago may not have
// reached it yet): a follower asks the leader before it refuses.
var errNotHere = errors.New("server: the credential is not in this node's state")

// notHere is a refusal that a follower passes on to the leader first.
type notHere struct{ err error }

func (e *notHere) Error() string { return e.err.Error() }

func (e *notHere) Unwrap() []error { return []error{e.err, errNotHere} }

// deniedf refuses a login: the credentials do not grant a token.
func deniedf(format string, args ...any) error {
	return withMessage(ErrPermissionDenied, format, args...)
}

// loginMethod checks the credentials of one login method against the
// node's own replicated state.
type loginMethod interface {
	// login checks call and returns the token it grants, with the use of
	// a credential to spend when there is one. On the leader (call.leader)
	// it holds what it must until the grant's done.
	login(ctx context.Context, call *loginCall) (*loginGrant, error)
}

// loginCall is one login as a method sees it.
type loginCall struct {
	data map[string]string
	// addr is the client's address (invalid when unknown).
	addr netip.Addr
	// cert is the client's certificate, verified against the cluster's
	// CA (nil: none).
	cert *x509.Certificate
	// leader: this node leads, so it may spend uses.
	leader bool
	now    time.Time
}

// loginGrant is what a method grants: a token made by the role's rules.
type loginGrant struct {
	method, role string
	// display is the token's display name.
	display string
	token   roleToken
	// use is the credential use to spend with the token (nil: none).
	use *credentialUse
	// release lets go of what the method held (nil: nothing).
	release func()
}

// writes reports whether minting the grant writes to the state.
func (g *loginGrant) writes() bool { return g.use != nil || g.token.Type != tokenTypeBatch }

// done releases what the method held.
func (g *loginGrant) done() {
	if g.release != nil {
		g.release()
		g.release = nil
	}
}

// loginLink is what logins need of the link to the leader.
type loginLink interface {
	forward(ctx context.Context, r route.Route, req proto.Message) (any, bool, error)
	leaderKnown() bool
}

// loginServer is the Login service: it finds the method, has it check the
// credentials on this node, and mints the token here when that writes
// nothing or this node leads; otherwise it forwards the login to the
// leader, which checks everything again.
type loginServer struct {
	pb.UnimplementedLoginServer
	methods map[string]loginMethod
	tokens  *tokenServer
	raft    interface{ IsLeader() bool }
	link    loginLink
	// tls: the node runs TLS (client certificates and forwarded calls
	// are verified).
	tls    bool
	logger hclog.Logger
}

// loginRoute is the route of Login.Login (forwarded to the leader).
var loginRoute, _ = route.Lookup(pb.Login_Login_FullMethodName)

// Login exchanges credentials for a token.
func (s *loginServer) Login(ctx context.Context, req *pb.LoginRequest) (*pb.TokenInfo, error) {
	m, ok := s.methods[req.GetMethod()]
	if !ok {
		return nil, invalidf("login method %q is unknown: use approle, jwt or cert", clipName(req.GetMethod()))
	}
	if len(req.GetData()) > maxLoginData {
		return nil, invalidf("a login carries at most %d data fields", maxLoginData)
	}
	for k, v := range req.GetData() {
		if len(v) > maxLoginValue || len(k) > maxRoleName {
			return nil, invalidf("login field %q is longer than %d bytes", clipName(k), maxLoginValue)
		}
	}
	call, err := s.callOf(ctx, req)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		call.leader, call.now = s.raft.IsLeader(), s.tokens.now()
		g, err := m.login(ctx, call)
		if err != nil {
			if errors.Is(err, errNotHere) && !call.leader && !wasForwarded(ctx) && s.link.leaderKnown() {
				if reply, done, ferr := s.forward(ctx, call, req); done {
					return reply, ferr
				}
				continue // this node leads now
			}
			return nil, err
		}
		if g.writes() && !call.leader {
			g.done()
			if reply, done, ferr := s.forward(ctx, call, req); done {
				return reply, ferr
			}
			continue
		}
		info, err := s.tokens.mint(ctx, g.spec(), g.use)
		g.done()
		if errors.Is(err, fsm.ErrCASMismatch) && attempt < maxLoginAttempts {
			// The credential changed between the check and the spend (a
			// use spent under another leader): check it again.
			continue
		}
		if errors.Is(err, fsm.ErrCASMismatch) {
			return nil, withMessage(ErrPermissionDenied, "%s: the credential changed while logging in (used or destroyed meanwhile): log in again", g.method)
		}
		if err != nil {
			return nil, err
		}
		s.logger.Info("login", "method", g.method, "role", g.role, "type", info.GetType(), "accessor", info.GetAccessor())
		return info, nil
	}
}

// forward sends the login to the leader, with the client's certificate
// for a certificate login. done false: this node became the leader.
func (s *loginServer) forward(ctx context.Context, call *loginCall, req *pb.LoginRequest) (*pb.TokenInfo, bool, error) {
	if call.cert != nil {
		ctx = withForwardMetadata(ctx, map[string]string{loginCertKey: base64.StdEncoding.EncodeToString(call.cert.Raw)})
	}
	reply, done, err := s.link.forward(ctx, loginRoute, req)
	if !done {
		return nil, false, nil
	}
	if err != nil {
		return nil, true, err
	}
	info, _ := reply.(*pb.TokenInfo)
	if info == nil {
		return nil, true, fmt.Errorf("server: the leader answered a login with %T", reply)
	}
	return info, true, nil
}

// callOf gathers what the methods check: the data, the client's address
// and certificate. For a login a node forwarded, they are the ones that
// node names (it verified them); a certificate is taken from a node only
// over TLS, where the node proved itself.
func (s *loginServer) callOf(ctx context.Context, req *pb.LoginRequest) (*loginCall, error) {
	call := &loginCall{data: req.GetData()}
	call.addr, _ = clientAddr(ctx, s.tls)
	if !wasForwarded(ctx) {
		call.cert = callerCert(ctx)
		return call, nil
	}
	if !s.tls || !forwardedByNode(ctx, true) {
		return call, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(loginCertKey); len(v) == 1 {
		der, err := base64.StdEncoding.DecodeString(v[0])
		if err != nil {
			return nil, invalidf("the forwarded client certificate is not base64")
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, invalidf("the forwarded client certificate does not parse")
		}
		call.cert = cert
	}
	return call, nil
}

// clipName cuts a name quoted in an error.
func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// Token types a role names.
const (
	tokenTypeService = "service"
	tokenTypeBatch   = "batch"
)

// roleToken is what a role says of its tokens, as stored.
type roleToken struct {
	Policies        []string `json:"token_policies,omitempty"`
	TTL             int64    `json:"token_ttl,omitempty"`
	MaxTTL          int64    `json:"token_max_ttl,omitempty"`
	Type            string   `json:"token_type,omitempty"`
	BoundCIDRs      []string `json:"token_bound_cidrs,omitempty"`
	NoDefaultPolicy bool     `json:"token_no_default_policy,omitempty"`
}

// roleTokenOf validates a role's token settings.
func roleTokenOf(t *pb.RoleToken) (roleToken, error) {
	out := roleToken{
		TTL: t.GetTtlSeconds(), MaxTTL: t.GetMaxTtlSeconds(), Type: t.GetType(),
		NoDefaultPolicy: t.GetNoDefaultPolicy(),
	}
	if len(t.GetPolicies()) > maxTokenPolicies {
		return out, invalidf("a role gives at most %d policies", maxTokenPolicies)
	}
	policies, err := policyNames(t.GetPolicies())
	if err != nil {
		return out, invalidf("token_policies: %v", err)
	}
	if slices.Contains(policies, rootPolicy) {
		return out, invalidf("a login never makes a root token: leave root out of token_policies")
	}
	out.Policies = policies
	switch {
	case out.TTL < 0 || out.MaxTTL < 0:
		return out, invalidf("token_ttl and token_max_ttl must not be negative")
	case out.TTL > int64(maxTokenTTL/time.Second) || out.MaxTTL > int64(maxTokenTTL/time.Second):
		return out, invalidf("token_ttl and token_max_ttl are at most %s", maxTokenTTL)
	case out.MaxTTL != 0 && out.TTL > out.MaxTTL:
		return out, invalidf("token_ttl (%s) is longer than token_max_ttl (%s): shorten it", time.Duration(out.TTL)*time.Second, time.Duration(out.MaxTTL)*time.Second)
	}
	switch out.Type {
	case "":
		out.Type = tokenTypeService
	case tokenTypeService, tokenTypeBatch:
	default:
		return out, invalidf("token_type %q is unknown: use service or batch", clipName(out.Type))
	}
	if len(out.Policies) == 0 && out.NoDefaultPolicy {
		return out, invalidf("a role without token_policies and without the default policy would make tokens that can do nothing: give token_policies")
	}
	cidrs, err := auth.ParseCIDRs(t.GetBoundCidrs())
	if err != nil {
		return out, invalidf("token_bound_cidrs: %v", strings.TrimPrefix(err.Error(), "auth: "))
	}
	for _, c := range cidrs {
		out.BoundCIDRs = append(out.BoundCIDRs, c.String())
	}
	return out, nil
}

// pb is the settings in the API's form.
func (t roleToken) pb() *pb.RoleToken {
	return &pb.RoleToken{
		Policies: append([]string(nil), t.Policies...), TtlSeconds: t.TTL, MaxTtlSeconds: t.MaxTTL,
		Type: t.Type, BoundCidrs: append([]string(nil), t.BoundCIDRs...), NoDefaultPolicy: t.NoDefaultPolicy,
	}
}

// spec is the token a grant mints: an orphan with the role's policies
// (and default unless the role leaves it out), TTLs, type and bound
// CIDRs.
func (g *loginGrant) spec() tokenSpec {
	policies := append([]string(nil), g.token.Policies...)
	if !g.token.NoDefaultPolicy && !slices.Contains(policies, defaultPolicy) {
		policies = append(policies, defaultPolicy)
	}
	sort.Strings(policies)
	display := g.display
	if len(display) > maxDisplayName {
		display = display[:maxDisplayName]
	}
	return tokenSpec{
		policies:    policies,
		ttl:         time.Duration(g.token.TTL) * time.Second,
		explicitMax: g.token.MaxTTL,
		batch:       g.token.Type == tokenTypeBatch,
		displayName: display,
		boundCIDRs:  g.token.BoundCIDRs,
	}
}

// validRoleName refuses a role name that is empty, long, holds a slash
// or a control character (names are parts of keys and paths).
func validRoleName(kind, name string) error {
	switch {
	case name == "":
		return invalidf("%s: the role name is empty", kind)
	case len(name) > maxRoleName:
		return invalidf("%s: the role name is longer than %d bytes", kind, maxRoleName)
	case !utf8.ValidString(name):
		return invalidf("%s: the role name is not valid UTF-8", kind)
	}
	for _, r := range name {
		if r == '/' || r < 0x20 || r == 0x7f {
			return invalidf("%s: the role name %q may not hold a slash or a control character", kind, clipName(name))
		}
	}
	return nil
}

// sealedJSON reads and writes the JSON records of the login methods:
// system entries sealed by the barrier for their keys.
type sealedJSON struct {
	state sysLister
	keys  entryKeys
}

// get decodes the record at key into v and returns its stored bytes (a
// conditional change expects them).
func (s sealedJSON) get(key string, v any) ([]byte, error) {
	raw, err := s.state.SysGet(key)
	if err != nil {
		return nil, err
	}
	pt, err := s.keys.OpenEntry(key, raw)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	if err := json.Unmarshal(pt, v); err != nil {
		return nil, fmt.Errorf("%w: the record at %s does not decode: %v", errBadData, key, err)
	}
	return raw, nil
}

// entry seals v as the record at key.
func (s sealedJSON) entry(key string, v any) (*fsmpb.SysEntry, error) {
	pt, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	sealed, err := s.keys.SealEntry(key, pt)
	if err != nil {
		return nil, err
	}
	return &fsmpb.SysEntry{Key: key, Value: sealed}, nil
}

// names lists the names directly under prefix (no deeper keys).
func (s sealedJSON) names(prefix string) ([]string, error) {
	keys, err := s.state.SysList(prefix)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, k := range keys {
		if n := strings.TrimPrefix(k, prefix); n != "" && !strings.Contains(n, "/") {
			out = append(out, n)
		}
	}
	return out, nil
}

// keyLocks are per-key locks of the leader: two logins spending a use of
// the same credential, or two writes of one role, take turns, so the
// second reads what the first wrote.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	mu      sync.Mutex
	waiters int
}

// lock takes the lock of key and returns its release.
func (l *keyLocks) lock(key string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*keyLock)
	}
	k := l.m[key]
	if k == nil {
		k = &keyLock{}
		l.m[key] = k
	}
	k.waiters++
	l.mu.Unlock()
	k.mu.Lock()
	return func() {
		k.mu.Unlock()
		l.mu.Lock()
		k.waiters--
		if k.waiters == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
}

// roleNotFound is the error of a role that does not exist.
func roleNotFound(kind, name, list string) error {
	return withMessage(fsm.ErrNotFound, "%s: no role named %q: list them with `%s`", kind, clipName(name), list)
}

// deleteKeys removes keys in commands of at most maxRevokeTree keys.
func deleteKeys(ctx context.Context, props proposer, keys []string) (uint64, error) {
	var index uint64
	for start := 0; start < len(keys); start += maxRevokeTree {
		res, err := props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: keys[start:min(len(keys), start+maxRevokeTree)]})
		if err != nil {
			return index, err
		}
		index = res.Index
	}
	return index, nil
}
