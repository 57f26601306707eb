package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"coffer/api/route"
	"coffer/fsm"
	"coffer/internal/tlsutil"
	"coffer/seal"
	"coffer/server/acl"
	"coffer/server/auth"
)

// Keys of the sys table (replicated through Raft, never holding a secret in
// clear).
const (
	sysSealKey    = "core/seal"    // seal.Stored: shares, threshold, wrapped root key
	sysKeyringKey = "core/keyring" // keyring wrapped by the root key
	sysTokenPref  = "token/"       // token/<sha256 hex> → tokenRecord
)

// rootPolicy is the policy of the root token: every call.
const rootPolicy = "root"

// tokenPrefix starts every generated token so it is recognisable in a
// secret scanner.
const tokenPrefix = "cof."

// tokenRecord is what the cluster stores about a token: never the token.
type tokenRecord struct {
	Hash     string   `json:"hash"`
	Policies []string `json:"policies"`
	Created  int64    `json:"created_unix"`
	// Accessor names the token for lookup and revocation without it.
	Accessor string `json:"accessor,omitempty"`
	// Expire is when the token stops working (Unix seconds); 0: never.
	Expire int64 `json:"expire_unix,omitempty"`
	// TTL is the lifetime it was created with (renewals extend by it).
	TTL int64 `json:"ttl_seconds,omitempty"`
	// ExplicitMax caps its life from creation, renewals included.
	ExplicitMax int64 `json:"explicit_max_ttl_seconds,omitempty"`
	// Period: a periodic token gets this much time at each renewal.
	Period int64 `json:"period_seconds,omitempty"`
	// Parent is the hash of the token that created it; empty for an
	// orphan (root tokens, -orphan).
	Parent      string `json:"parent,omitempty"`
	DisplayName string `json:"display_name,omitempty"`
	// NoRenew: created with renewable=false.
	NoRenew bool `json:"no_renew,omitempty"`
	// NumUses is how many calls the token may still make; 0: no limit.
	// Each call takes one on the leader (a follower forwards the call);
	// the last one revokes the token.
	NumUses int64 `json:"num_uses,omitempty"`
	// BoundCIDRs: the token works only from these client addresses (a
	// login's role set them); none: from anywhere.
	BoundCIDRs []string `json:"bound_cidrs,omitempty"`

	// cidrs are BoundCIDRs parsed (set where a record is decoded).
	cidrs []netip.Prefix

	// gone: only the index entry of this token was found (revocation).
	gone bool
	// batch: a batch token's record, decoded from the token itself.
	batch bool
	// compiled is the token's ACL as last compiled, with the sys
	// generation it was compiled at (records are shared: atomic).
	compiled atomic.Pointer[compiledACL]
}

// compiledACL is an ACL and the sys generation it holds for.
type compiledACL struct {
	gen uint64
	acl *acl.ACL
}

// newToken returns a fresh random token.
func newToken() string { return tokenPrefix + rand.Text() }

// hashToken is the storage form of a token.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// entrySealer seals a system entry's value for its key (the barrier).
type entrySealer interface {
	SealEntry(key string, plaintext []byte) ([]byte, error)
}

// tokenEntry returns the sys entry that stores token: its record, sealed
// by the barrier for its key, so that only a holder of the keys can make
// one (the state machine stores no other kind of value there).
func tokenEntry(b entrySealer, token string, policies []string, now time.Time) (key string, value []byte, err error) {
	h := hashToken(token)
	rec, err := json.Marshal(tokenRecord{Hash: h, Policies: policies, Created: now.Unix()})
	if err != nil {
		return "", nil, err
	}
	key = sysTokenPref + h
	value, err = b.SealEntry(key, rec)
	return key, value, err
}

// openTokenRecord decodes the stored record of a token. A record sealed
// by the barrier must open at its key; a plaintext record can only have
// been stored by a version of coffer from before records were sealed (the
// state machine refuses to store one now), and the leader seals those
// again once it is unsealed (migrateTokenRecords).
func openTokenRecord(keys entryOpener, key string, raw []byte) (*tokenRecord, error) {
	if fsm.IsSealedValue(raw) {
		pt, err := keys.OpenEntry(key, raw)
		if err != nil {
			return nil, err
		}
		defer clear(pt)
		raw = pt
	}
	var rec tokenRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("server: token record is corrupt: %w", err)
	}
	if err := rec.parseCIDRs(); err != nil {
		return nil, err
	}
	return &rec, nil
}

// parseCIDRs parses the record's bound CIDRs; one that does not parse
// (only a damaged record holds one: logins check them) refuses the token.
func (r *tokenRecord) parseCIDRs() error {
	if len(r.BoundCIDRs) == 0 {
		return nil
	}
	cidrs, err := auth.ParseCIDRs(r.BoundCIDRs)
	if err != nil {
		return fmt.Errorf("%w: a token's bound CIDRs do not parse: %v", errBadData, err)
	}
	r.cidrs = cidrs
	return nil
}

// checkBound refuses a token bound to CIDR blocks when the call does not
// come from one of them. The address is the client's: the peer's, or for
// a call a node forwarded, the one that node names; a read-index round a
// node asks for a client (no address named) is the node's own call, and
// the node checked its client itself.
func (g *gateway) checkBound(ctx context.Context, rec *tokenRecord) error {
	if len(rec.cidrs) == 0 {
		return nil
	}
	addr, named := clientAddr(ctx, g.tls)
	if !named && forwardedByNode(ctx, g.tls) {
		return nil
	}
	if !auth.AddrAllowed(rec.cidrs, addr) {
		return withMessage(ErrPermissionDenied, "permission denied: this token is bound to CIDR blocks, and the call does not come from one of them (%s)", addrString(addr))
	}
	return nil
}

// entryOpener opens a system entry's value (the barrier).
type entryOpener interface {
	OpenEntry(key string, ciphertext []byte) ([]byte, error)
}

// gateway admits every call before its handler runs: it looks the method
// up in the route table, refuses calls while sealed, authenticates the
// token against the replicated token table, forwards a leader-only call
// from a follower to the leader, and maps every error through the status
// table.
type gateway struct {
	raft  gatewayRaft
	state tokenState
	keys  gatewayKeys
	link  *leaderLink
	// tls: the node runs TLS, so peer routes demand a node certificate.
	tls    bool
	tokens tokenCache
	// policies compiles the caller's policies; exists tells create from
	// update for a write (nil: always create).
	policies *policyStore
	exists   func(req proto.Message) bool
	// useToken takes one use of a token limited in uses (leader).
	useToken func(ctx context.Context, hash string) error
	// audit records every call this node serves (nil: no devices).
	audit  *auditor
	logger hclog.Logger
}

// gatewayRaft is what admission needs to know of the Raft node.
type gatewayRaft interface {
	IsLeader() bool
	ReadyLeader() bool
}

// gatewayKeys is what admission needs of the barrier: whether the node is
// sealed, and opening token records.
type gatewayKeys interface {
	Sealed() bool
	entryOpener
}

// tokenState reads the replicated token table.
type tokenState interface {
	SysGet(key string) ([]byte, error)
	SysGeneration() uint64
}

type tokenCtxKey struct{}

// authenticate finds the caller's token in the replicated token table.
func (g *gateway) authenticate(ctx context.Context) (*tokenRecord, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return nil, ErrUnauthenticated
	}
	token, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok || token == "" || len(token) > maxBatchTokenLen {
		return nil, ErrUnauthenticated
	}
	if isBatchToken(token) {
		return g.authenticateBatch(ctx, token)
	}
	if len(token) > 512 {
		return nil, ErrUnauthenticated
	}
	h := hashToken(token)
	gen := g.state.SysGeneration()
	if rec := g.tokens.get(gen, h); rec != nil {
		return g.live(ctx, rec)
	}
	// A token created a moment ago may not have reached this follower
	// yet (the read-index round goes to the leader, which checks the token
	// itself).
	raw, err := g.sysGetCaughtUp(ctx, sysTokenPref+h)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, ErrUnauthenticated
	}
	if err != nil {
		return nil, err
	}
	rec, err := openTokenRecord(g.keys, sysTokenPref+h, raw)
	if errors.Is(err, seal.ErrDecrypt) {
		// Only a forged log entry or a damaged state makes a record that
		// is laid out as sealed but does not open.
		g.logger.Warn("a token record does not open with the cluster's keys: refusing the token", "token_hash_prefix", h[:8])
		return nil, ErrUnauthenticated
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(rec.Hash), []byte(h)) != 1 {
		return nil, ErrUnauthenticated
	}
	// An expired record is refused by live, here and from the cache, until
	// the leader removes it (tokenServer.expire).
	g.tokens.put(gen, h, rec)
	return g.live(ctx, rec)
}

// live admits the record of the caller's token: not expired, and used
// from an address it is bound to.
func (g *gateway) live(ctx context.Context, rec *tokenRecord) (*tokenRecord, error) {
	if rec.expired(time.Now()) {
		return nil, errTokenExpired
	}
	if err := g.checkBound(ctx, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// authenticateBatch opens a batch token with the node's keys and checks
// its expiry and, unless it is an orphan, that its parent still exists.
func (g *gateway) authenticateBatch(ctx context.Context, token string) (*tokenRecord, error) {
	h := hashToken(token)
	gen := g.state.SysGeneration()
	rec := g.tokens.get(gen, h)
	if rec == nil {
		var err error
		if rec, err = openBatchToken(g.keys, token); err != nil {
			return nil, ErrUnauthenticated
		}
		if rec.Parent != "" {
			// The parent may be younger than what this follower applied.
			_, err := g.sysGetCaughtUp(ctx, sysTokenPref+rec.Parent)
			if errors.Is(err, fsm.ErrNotFound) {
				// Revoked with its parent.
				return nil, ErrUnauthenticated
			}
			if err != nil {
				return nil, err
			}
		}
		g.tokens.put(gen, h, rec)
	}
	return g.live(ctx, rec)
}

// sysGetCaughtUp reads a system entry; on a follower that does not hold
// it, after a read-index round with the leader brought the follower up to
// date (a token or parent created a moment ago), before it says it is not
// there.
func (g *gateway) sysGetCaughtUp(ctx context.Context, key string) ([]byte, error) {
	raw, err := g.state.SysGet(key)
	if errors.Is(err, fsm.ErrNotFound) && !g.raft.IsLeader() && !wasForwarded(ctx) {
		if rerr := g.link.readIndex(ctx, false); rerr == nil {
			raw, err = g.state.SysGet(key)
		}
	}
	return raw, err
}

// configReadIndexWait bounds how long a configuration read on a follower
// waits for the leader's read index before it answers from its own state.
const configReadIndexWait = 2 * time.Second

// errTokenExpired refuses a token whose time is over.
var errTokenExpired = withMessage(ErrUnauthenticated, "server: the token has expired: log in again or ask for a new token")

// authorize checks the caller's policies against the path and
// capabilities the route names for req. Create|Update becomes create for
// what does not exist yet and update for what does, as in Vault; sudo is
// needed on top of the rest where the route names it.
func (g *gateway) authorize(ctx context.Context, r route.Route, req proto.Message) error {
	if r.Policy == nil || r.Access != route.Token {
		return nil
	}
	rec, err := caller(ctx)
	if err != nil {
		return err
	}
	if rec.isRoot() {
		return nil // root: every capability on every path
	}
	a, err := g.aclOf(rec)
	if err != nil {
		return err
	}
	path, need := r.Policy(req)
	have := capabilitiesFor(a, path, need&route.List != 0)
	want := aclCapabilities(need &^ (route.Create | route.Update))
	switch need & (route.Create | route.Update) {
	case route.Create | route.Update:
		switch {
		case r.Forwarded(req) && !g.raft.IsLeader():
			// A follower may not have seen the thing created a moment ago;
			// either capability passes here and the leader, which forwards
			// nothing, decides.
			if have&acl.Deny == 0 && have&(acl.Create|acl.Update) != 0 {
				want |= have & (acl.Create | acl.Update)
			} else {
				want |= acl.Create
			}
		case g.exists != nil && g.exists(req):
			want |= acl.Update
		default:
			want |= acl.Create
		}
	case route.Create:
		want |= acl.Create
	case route.Update:
		want |= acl.Update
	}
	if have&acl.Deny == 0 && have&want == want {
		return nil
	}
	missing := want
	if have&acl.Deny == 0 {
		missing = want &^ have
	}
	return withMessage(ErrPermissionDenied, "permission denied: %s on %s", strings.Join(missing.Names(), ", "), path)
}

// capabilitiesFor is what a's deciding rule grants on path; a list of a
// folder ("…/") follows Vault's order for lists (acl.Decide: an exact rule
// on the bare path, a deny there included, before the wildcards).
func capabilitiesFor(a *acl.ACL, path string, list bool) acl.Capability {
	if list && strings.HasSuffix(path, "/") {
		return a.Decide(path, acl.List).Granted
	}
	return a.Capabilities(path)
}

// aclOf returns the ACL of rec's policies, kept on the record while the
// policies (the sys generation) are unchanged: a read costs no lookup.
func (g *gateway) aclOf(rec *tokenRecord) (*acl.ACL, error) {
	gen := g.state.SysGeneration()
	if c := rec.compiled.Load(); c != nil && c.gen == gen {
		return c.acl, nil
	}
	a, err := g.policies.aclFor(rec.Policies)
	if err != nil {
		return nil, err
	}
	rec.compiled.Store(&compiledACL{gen: gen, acl: a})
	return a, nil
}

// aclCapabilities translates the route table's capabilities.
func aclCapabilities(c route.Capability) acl.Capability {
	var out acl.Capability
	for _, m := range []struct {
		r route.Capability
		a acl.Capability
	}{{route.Read, acl.Read}, {route.Create, acl.Create}, {route.Update, acl.Update}, {route.Delete, acl.Delete}, {route.List, acl.List}, {route.Sudo, acl.Sudo}, {route.Patch, acl.Patch}} {
		if c&m.r != 0 {
			out |= m.a
		}
	}
	return out
}

// tokenCacheMax bounds the token cache; it starts over when full.
const tokenCacheMax = 1024

// tokenCache keeps token records read from the replicated table, by token
// hash, while the FSM's system keys are unchanged (fsm.SysGeneration):
// a token created, changed or removed, or a snapshot restored, empties it.
// Only tokens that exist are kept. Records are shared: never modify one.
type tokenCache struct {
	mu   sync.RWMutex
	gen  uint64
	recs map[string]*tokenRecord
}

// get returns the record of hash h cached under generation gen, or nil.
func (c *tokenCache) get(gen uint64, h string) *tokenRecord {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.gen != gen {
		return nil
	}
	return c.recs[h]
}

// put caches rec, read from the table after generation gen was current.
func (c *tokenCache) put(gen uint64, h string, rec *tokenRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen < c.gen {
		return // read before a newer change: do not keep it
	}
	if gen != c.gen || c.recs == nil || len(c.recs) >= tokenCacheMax {
		c.gen, c.recs = gen, make(map[string]*tokenRecord)
	}
	c.recs[h] = rec
}

// admitSealed refuses every authenticated call while the node is sealed,
// before looking at the token, so that clients move on to another node
// (Unavailable) or learn that the cluster needs init. Only a ready leader,
// or the leader asked by a follower that has no seal configuration (it may
// not have caught up yet), says "not initialized".
func (g *gateway) admitSealed(ctx context.Context) error {
	if !g.keys.Sealed() {
		return nil
	}
	if _, err := g.state.SysGet(sysSealKey); !errors.Is(err, fsm.ErrNotFound) {
		return seal.ErrSealed
	}
	if g.raft.ReadyLeader() {
		return ErrNotInitialized
	}
	if st, err := g.link.leaderStatus(ctx); err == nil && !st.Seal.GetInitialized() {
		return ErrNotInitialized
	}
	return seal.ErrSealed
}

// requireCaller fails unless the call came through the gateway with a
// token (whose policies the gateway checked against the route): handlers
// that change the cluster check it again, so that no path reaches them
// unauthenticated.
func requireCaller(ctx context.Context) error {
	_, err := caller(ctx)
	return err
}

// admit looks the method up in the route table and admits the call: a
// method without a route is refused; any but a public one needs the node
// unsealed and a valid token, whose record the returned context carries.
func (g *gateway) admit(ctx context.Context, method string) (route.Route, context.Context, error) {
	r, ok := route.Lookup(method)
	if !ok {
		return r, ctx, withMessage(ErrNoRoute, "%s has no route on this node: check the client's version against the server's (`coffer status`)", method)
	}
	if r.ClientCert && g.tls && !callerHasCert(ctx) {
		return r, ctx, withMessage(ErrClientCertRequired, "%s needs a client certificate of the cluster's CA: make one with `coffer cert create-client -certs-dir=DIR -ca-key=FILE root` and pass -certs-dir=DIR", method)
	}
	if r.Access == route.Public {
		return r, ctx, nil
	}
	if r.Access == route.Login {
		// No token: the credentials are the handler's to check, on an
		// unsealed node.
		return r, ctx, g.admitSealed(ctx)
	}
	if r.Access == route.Peer && g.tls && !callerIsNode(ctx) {
		return r, ctx, withMessage(ErrNodeOnly, "%s is for the cluster's nodes only: it needs a node certificate of the cluster's CA", method)
	}
	if err := g.admitSealed(ctx); err != nil {
		return r, ctx, err
	}
	rec, err := g.authenticate(ctx)
	if err != nil {
		return r, ctx, err
	}
	return r, context.WithValue(ctx, tokenCtxKey{}, rec), nil
}

// callerCert returns the caller's certificate, verified against the
// cluster's CA, or nil.
func callerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

// callerIsNode reports whether the call came over TLS with a verified node
// certificate of the cluster's CA.
func callerIsNode(ctx context.Context) bool { return tlsutil.IsNode(callerCert(ctx)) }

// callerHasCert reports whether the call came with any certificate of the
// cluster's CA (a client's or a node's).
func callerHasCert(ctx context.Context) bool { return callerCert(ctx) != nil }

// unaryInterceptor admits the call by its route, forwards a leader-only
// call from a follower to the leader, and maps the handler's error through
// the status table. Panics are recovered by the interceptor before it.
func (g *gateway) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	msg, _ := req.(proto.Message)
	r, actx, err := g.admit(ctx, info.FullMethod)
	if err == nil {
		err = g.authorize(actx, r, msg)
	}
	// The request is recorded before anything is served, refused calls
	// too; a request no device could record is not served (fail closed).
	var call *auditCall
	if g.audit.on() && r.Method != "" && audited(r) {
		rec, _ := actx.Value(tokenCtxKey{}).(*tokenRecord)
		call = g.audit.begin(ctx, r, rec)
		if aerr := call.request(ctx, r, msg); aerr != nil {
			return nil, g.statusError(info.FullMethod, aerr)
		}
	}
	var resp any
	if err == nil {
		resp, err = g.serve(actx, r, msg, req, handler)
	}
	if call != nil {
		var out proto.Message
		if err == nil {
			out, _ = resp.(proto.Message)
		}
		if aerr := call.response(ctx, out, err); aerr != nil && err == nil {
			return nil, g.statusError(info.FullMethod, aerr)
		}
	}
	return resp, g.statusError(info.FullMethod, err)
}

// serve forwards a leader-only call from a follower to the leader, or
// runs its handler.
//
// A token limited in uses makes every call a leader's call: the leader
// takes one use (a Raft write) before it serves, so that the uses are
// counted once for the whole cluster.
func (g *gateway) serve(ctx context.Context, r route.Route, msg proto.Message, req any, handler grpc.UnaryHandler) (any, error) {
	rec, _ := ctx.Value(tokenCtxKey{}).(*tokenRecord)
	// A node-to-node call (read index) made for a limited token's call
	// does not spend a use of its own.
	limited := rec != nil && rec.NumUses > 0 && r.Access == route.Token
	if msg != nil && (limited || r.Forwarded(msg)) && !g.raft.IsLeader() {
		reply, done, err := g.link.forward(ctx, r, msg)
		if done {
			return reply, err
		}
		// This node became the leader meanwhile and serves the call: check
		// it again with the leader's exact rules (create versus update).
		if err := g.authorize(ctx, r, msg); err != nil {
			return nil, err
		}
	}
	if r.Consistent && !g.raft.IsLeader() && !wasForwarded(ctx) {
		// A read of configuration sees what was acknowledged before it;
		// without a leader, the node's own state answers.
		rctx, cancel := context.WithTimeout(ctx, configReadIndexWait)
		err := g.link.readIndex(rctx, false)
		cancel()
		if err != nil {
			g.logger.Debug("no read index for a configuration read; answering from this node's state", "method", r.Method, "error", err)
		}
	}
	if limited {
		if g.useToken == nil {
			return nil, ErrUnauthenticated
		}
		if err := g.useToken(ctx, rec.Hash); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// streamInterceptor admits streaming calls by their route, checks the
// caller's policies (for a server stream, on its request message) and
// records the call in the audit log.
func (g *gateway) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	r, ctx, err := g.admit(ss.Context(), info.FullMethod)
	var call *auditCall
	if g.audit.on() && r.Method != "" && audited(r) {
		rec, _ := ctx.Value(tokenCtxKey{}).(*tokenRecord)
		call = g.audit.begin(ss.Context(), r, rec)
	}
	finish := func(err error) error {
		if call != nil {
			if aerr := call.response(ctx, nil, err); aerr != nil && err == nil {
				err = aerr
			}
		}
		return g.statusError(info.FullMethod, err)
	}
	if err != nil {
		if call != nil {
			if aerr := call.request(ctx, r, nil); aerr != nil {
				return g.statusError(info.FullMethod, aerr)
			}
		}
		return finish(err)
	}
	if rec, _ := ctx.Value(tokenCtxKey{}).(*tokenRecord); rec != nil && rec.NumUses > 0 {
		return finish(invalidf("a token limited in uses cannot open a stream (watch, snapshot): use a token without -num-uses"))
	}
	if r.Access != route.Public {
		if info.IsClientStream {
			// The route's path does not depend on the stream's messages
			// (a snapshot upload): check it before the first one.
			if call != nil {
				if aerr := call.request(ctx, r, nil); aerr != nil {
					return g.statusError(info.FullMethod, aerr)
				}
			}
			if err := g.authorize(ctx, r, nil); err != nil {
				return finish(err)
			}
			ss = &authedStream{ServerStream: ss, ctx: ctx}
		} else {
			if rec, _ := ctx.Value(tokenCtxKey{}).(*tokenRecord); rec != nil {
				ctx = context.WithValue(ctx, streamGuardKey{}, g.guard(rec))
			}
			ss = &authedStream{ServerStream: ss, ctx: ctx, check: func(m proto.Message) error {
				if call != nil {
					if aerr := call.request(ctx, r, m); aerr != nil {
						return aerr
					}
				}
				return g.authorize(ctx, r, m)
			}}
		}
	}
	return finish(handler(srv, ss))
}

// streamGuard is what a long stream (a watch) asks, as it goes, of the
// token that opened it: whether it still stands, and whether an event's
// path is the token's to see.
type streamGuard struct {
	allowed func(path string) bool
	valid   func() error
}

type streamGuardKey struct{}

// guard builds the stream guard of rec: an event's path needs list on its
// folder's metadata path or read on its own (as a list or a read would),
// without deny; the token must not have expired, and its record (for a
// batch token, its parent's) must still be in the state, checked again
// whenever the system entries change.
func (g *gateway) guard(rec *tokenRecord) *streamGuard {
	isRoot := rec.isRoot()
	var checkedGen atomic.Uint64
	checkedGen.Store(g.state.SysGeneration())
	return &streamGuard{
		allowed: func(path string) bool {
			if isRoot {
				return true
			}
			a, err := g.aclOf(rec)
			if err != nil {
				return false
			}
			may := func(p string, c acl.Capability) bool {
				have := capabilitiesFor(a, p, c&acl.List != 0)
				return have&acl.Deny == 0 && have&c != 0
			}
			dir := path[:strings.LastIndex(path, "/")+1]
			return may(route.KVPolicyPath(dir, "metadata"), acl.List) || may(route.KVPolicyPath(path, "metadata"), acl.Read)
		},
		valid: func() error {
			if rec.expired(time.Now()) {
				return errTokenExpired
			}
			gen := g.state.SysGeneration()
			if checkedGen.Load() == gen {
				return nil
			}
			key := sysTokenPref + rec.Hash
			if rec.batch {
				if rec.Parent == "" {
					checkedGen.Store(gen)
					return nil
				}
				key = sysTokenPref + rec.Parent
			}
			if _, err := g.state.SysGet(key); errors.Is(err, fsm.ErrNotFound) {
				return withMessage(ErrUnauthenticated, "server: the token that opened this stream was revoked")
			} else if err != nil {
				return err
			}
			checkedGen.Store(gen)
			return nil
		},
	}
}

// statusError maps err to a status and logs what the client will not see.
func (g *gateway) statusError(method string, err error) error {
	if err == nil {
		return nil
	}
	st := withReason(toStatus(err))
	if status.Code(st) == codes.Internal {
		g.logger.Error("request failed", "method", method, "error", err)
	}
	return st
}

// authedStream carries the caller's token record in its context and,
// for a server stream, checks the caller's policies against the request
// (its first and only message) as it is received.
type authedStream struct {
	grpc.ServerStream
	ctx     context.Context
	check   func(proto.Message) error
	checked bool
}

// RecvMsg receives the request and checks it before the handler sees it.
func (a *authedStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if a.check != nil && !a.checked {
		a.checked = true
		msg, _ := m.(proto.Message)
		return a.check(msg)
	}
	return nil
}

// Context returns the stream's context with the token record.
func (a *authedStream) Context() context.Context { return a.ctx }
