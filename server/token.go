package server

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/server/acl"
)

// Keys of the token indexes (sys table, sealed like the records):
// token-accessor/<accessor> → the token's hash; token-parent/<parent
// hash>/<child hash> → the child's hash, for revoking a parent's children.
const (
	sysAccessorPref = "token-accessor/"
	sysParentPref   = "token-parent/"
)

// Token lifetimes: the longest a token may live without renewal (Vault's
// default max_lease_ttl), and the bounds of what a request may ask.
const (
	maxTokenTTL      = 32 * 24 * time.Hour
	maxTokenPolicies = 64
	maxDisplayName   = 128
	// maxRevokeTree bounds the tokens one revocation removes in one
	// command; a larger tree is revoked in several.
	maxRevokeTree = 4096
)

// tokenInfo describes rec for the API, with its time left at now.
func tokenInfo(rec *tokenRecord, now time.Time) *pb.TokenInfo {
	info := &pb.TokenInfo{
		Accessor:              rec.Accessor,
		Policies:              append([]string(nil), rec.Policies...),
		Renewable:             rec.renewable(),
		Type:                  rec.tokenType(),
		ExpireTimeUnix:        rec.Expire,
		CreationTimeUnix:      rec.Created,
		CreationTtlSeconds:    rec.TTL,
		ExplicitMaxTtlSeconds: rec.ExplicitMax,
		PeriodSeconds:         rec.Period,
		Orphan:                rec.Parent == "",
		DisplayName:           rec.DisplayName,
		NumUses:               rec.NumUses,
		BoundCidrs:            append([]string(nil), rec.BoundCIDRs...),
	}
	if rec.Expire != 0 {
		info.TtlSeconds = max(0, rec.Expire-now.Unix())
	}
	return info
}

// clone copies the record's stored fields (for a changed record).
func (r *tokenRecord) clone() *tokenRecord {
	return &tokenRecord{
		Hash: r.Hash, Policies: slices.Clone(r.Policies), Created: r.Created, Accessor: r.Accessor,
		Expire: r.Expire, TTL: r.TTL, ExplicitMax: r.ExplicitMax, Period: r.Period, Parent: r.Parent,
		DisplayName: r.DisplayName, NoRenew: r.NoRenew, NumUses: r.NumUses, batch: r.batch,
		BoundCIDRs: slices.Clone(r.BoundCIDRs), cidrs: slices.Clone(r.cidrs),
	}
}

// isRoot reports whether the token holds the root policy (every
// capability on every path).
func (r *tokenRecord) isRoot() bool { return slices.Contains(r.Policies, rootPolicy) }

// tokenType is "batch" or "service".
func (r *tokenRecord) tokenType() string {
	if r.batch {
		return "batch"
	}
	return "service"
}

// renewable: a token that expires and was not made unrenewable.
func (r *tokenRecord) renewable() bool { return r.Expire != 0 && !r.NoRenew && !r.batch }

// expired reports whether the token's time is over at now.
func (r *tokenRecord) expired(now time.Time) bool {
	return r.Expire != 0 && now.Unix() >= r.Expire
}

// tokenServer is the Token service.
type tokenServer struct {
	pb.UnimplementedTokenServer
	state    sysLister
	keys     entryKeys
	props    proposer
	policies *policyStore
	logger   hclog.Logger
	now      func() time.Time
	// expiry indexes the service tokens by expiry time (leader).
	expiry *expiryQueue
	// mu makes the leader's changes of token records one at a time: a
	// child is never written after its parent's revocation listed the
	// children, and a renewal or a use never writes back a record a
	// revocation removed.
	mu sync.Mutex
}

// caller returns the record of the call's token.
func caller(ctx context.Context) (*tokenRecord, error) {
	rec, _ := ctx.Value(tokenCtxKey{}).(*tokenRecord)
	if rec == nil {
		return nil, ErrUnauthenticated
	}
	return rec, nil
}

// errNoSuchToken answers a lookup, renewal or revocation of a token that
// is not there.
var errNoSuchToken = withMessage(fsm.ErrNotFound, "no such token (revoked, expired or never created)")

// Create makes a service token, a child of the caller's unless no_parent.
func (s *tokenServer) Create(ctx context.Context, req *pb.CreateTokenRequest) (*pb.TokenInfo, error) {
	parent, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	isRoot := parent.isRoot()
	batch := false
	switch req.GetType() {
	case "", "service":
	case "batch":
		batch = true
	default:
		return nil, invalidf("token type %q is unknown: use service or batch", req.GetType())
	}
	if req.GetNumUses() < 0 {
		return nil, invalidf("num uses must not be negative (0: no limit)")
	}
	if req.GetTtlSeconds() < 0 || req.GetExplicitMaxTtlSeconds() < 0 || req.GetPeriodSeconds() < 0 {
		return nil, invalidf("ttl, explicit max ttl and period must not be negative")
	}
	if max(req.GetTtlSeconds(), req.GetExplicitMaxTtlSeconds(), req.GetPeriodSeconds()) > maxDurationSeconds {
		return nil, invalidf("ttl, explicit max ttl and period must be at most 100 years (%d seconds)", maxDurationSeconds)
	}
	if len(req.GetDisplayName()) > maxDisplayName {
		return nil, invalidf("display name is longer than %d bytes", maxDisplayName)
	}
	if parent.batch {
		return nil, withMessage(ErrPermissionDenied, "permission denied: a batch token cannot create tokens")
	}
	if parent.NumUses > 0 {
		// Its child would not be limited, and could outlive the last use.
		return nil, withMessage(ErrPermissionDenied, "permission denied: a token limited in uses cannot create tokens")
	}
	policies, err := s.childPolicies(parent, req, isRoot)
	if err != nil {
		return nil, err
	}
	if batch {
		switch {
		case slices.Contains(policies, rootPolicy):
			return nil, invalidf("a batch token cannot be a root token: create a service token")
		case req.GetPeriodSeconds() != 0 || (req.GetRenewableSet() && req.GetRenewable()):
			return nil, invalidf("a batch token cannot be renewed or periodic: create a service token")
		case req.GetNumUses() != 0:
			return nil, invalidf("a batch token cannot be limited in uses (nothing is stored to count them): create a service token")
		}
	}
	spec := tokenSpec{
		policies:    policies,
		ttl:         time.Duration(req.GetTtlSeconds()) * time.Second,
		explicitMax: req.GetExplicitMaxTtlSeconds(),
		period:      req.GetPeriodSeconds(),
		noRenew:     req.GetRenewableSet() && !req.GetRenewable(),
		numUses:     req.GetNumUses(),
		batch:       batch,
		displayName: "token",
		// Without a TTL asked, a root child of root may live for ever.
		eternal: isRoot && slices.Contains(policies, rootPolicy),
		// A token bound to client addresses makes tokens bound alike, so
		// that it cannot hand its rights to a caller elsewhere.
		boundCIDRs: parent.BoundCIDRs,
	}
	if n := req.GetDisplayName(); n != "" {
		spec.displayName = "token-" + n
	}
	if !req.GetNoParent() {
		spec.parent = parent
	}
	return s.mint(ctx, spec, nil)
}

// maxDurationSeconds bounds every duration a token request names (100
// years): past it, times in seconds since 1970 overflow when added.
const maxDurationSeconds = 100 * 365 * 24 * 3600

// tokenSpec is what a new token is made of: Token.Create and every login
// describe the token they want, and mint applies the one set of lifetime
// rules.
type tokenSpec struct {
	// policies are the token's, final (mint adds none).
	policies []string
	// ttl asked (0: the default, the system's maximum); period (seconds)
	// makes a periodic token; explicitMax (seconds) caps its life from
	// creation.
	ttl         time.Duration
	period      int64
	explicitMax int64
	noRenew     bool
	batch       bool
	// numUses limits the calls of a service token (0: no limit).
	numUses int64
	// parent: nil for an orphan.
	parent      *tokenRecord
	displayName string
	// boundCIDRs: the client addresses the token works from (none: any).
	boundCIDRs []string
	// eternal: without a TTL the token never expires (a root child of
	// root).
	eternal bool
}

// credentialUse is a login's spend of one use of a credential (an AppRole
// secret_id limited in uses), made in the same command as the token it
// pays for: the change applies only while the credential's entry still
// holds exactly the bytes the leader read (OP_SYS_CAS), so one use is
// never spent twice, on any node.
type credentialUse struct {
	expect *fsmpb.SysEntry
	put    []*fsmpb.SysEntry
	del    []string
}

// command is the conditional change spending the use, writing entries
// with it.
func (u *credentialUse) command(entries []*fsmpb.SysEntry) *fsmpb.Command {
	return &fsmpb.Command{
		Op:        fsmpb.Op_OP_SYS_CAS,
		SysExpect: []*fsmpb.SysEntry{u.expect},
		Sys:       append(append([]*fsmpb.SysEntry(nil), u.put...), entries...),
		SysKeys:   u.del,
	}
}

// mint makes the token spec describes: a batch token sealed by the
// barrier, or a service token whose record it writes. With use, the
// write also spends the credential's use, and a batch token is handed
// out only once the use is spent. It is the one place where a token's
// lifetime is decided.
func (s *tokenServer) mint(ctx context.Context, spec tokenSpec, use *credentialUse) (*pb.TokenInfo, error) {
	if spec.explicitMax > maxDurationSeconds || spec.period > maxDurationSeconds || spec.ttl < 0 {
		// A role's settings are checked when written; this keeps the
		// times below from overflowing whatever the source.
		return nil, invalidf("a token's ttl, explicit max ttl and period must be at most 100 years")
	}
	now := s.now()
	rec := &tokenRecord{
		Policies:    spec.policies,
		Created:     now.Unix(),
		ExplicitMax: spec.explicitMax,
		Period:      spec.period,
		DisplayName: spec.displayName,
		NoRenew:     spec.noRenew,
		NumUses:     spec.numUses,
		BoundCIDRs:  spec.boundCIDRs,
	}
	if spec.parent != nil {
		rec.Parent = spec.parent.Hash
	}
	// Without a TTL asked, a token lives as long as the system allows, as
	// in Vault, unless it may be eternal.
	ttl := spec.ttl
	if rec.Period != 0 {
		ttl = time.Duration(rec.Period) * time.Second
	}
	if ttl == 0 && !spec.eternal {
		ttl = maxTokenTTL
	}
	if ttl > maxTokenTTL {
		ttl = maxTokenTTL
	}
	if ttl != 0 {
		rec.TTL = int64(ttl / time.Second)
		rec.Expire = now.Add(ttl).Unix()
		if rec.ExplicitMax != 0 {
			rec.Expire = min(rec.Expire, rec.Created+rec.ExplicitMax)
		}
		// A child never outlives its parent: the parent's expiry revokes it.
		if spec.parent != nil && spec.parent.Expire != 0 {
			rec.Expire = min(rec.Expire, spec.parent.Expire)
		}
	} else if rec.ExplicitMax != 0 {
		rec.Expire = rec.Created + rec.ExplicitMax
		rec.TTL = rec.ExplicitMax
	}

	if spec.parent != nil {
		// The leader changes a parent's family one change at a time, and
		// reads the parent as stored now, not as the call's authentication
		// read it: a revocation may have removed it meanwhile, and a child
		// written after it listed the children would never be revoked.
		s.mu.Lock()
		defer s.mu.Unlock()
		p, err := s.record(rec.Parent)
		if errors.Is(err, fsm.ErrNotFound) || (err == nil && p.expired(now)) {
			return nil, withMessage(ErrUnauthenticated, "server: the creating token was revoked or has expired")
		}
		if err != nil {
			return nil, err
		}
	}
	if spec.batch {
		info, err := s.createBatch(rec, now)
		if err != nil {
			return nil, err
		}
		if use != nil {
			res, err := s.props.propose(ctx, use.command(nil))
			if err != nil {
				return nil, err
			}
			info.RaftIndex = res.Index
		}
		return info, nil
	}
	token := newToken()
	rec.Hash = hashToken(token)
	rec.Accessor = rand.Text()
	entries, err := s.recordEntries(rec, true)
	if err != nil {
		return nil, err
	}
	cmd := &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: entries}
	if use != nil {
		cmd = use.command(entries)
	}
	res, err := s.props.propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	s.expiry.push(rec.Hash, rec.Expire)
	info := tokenInfo(rec, now)
	info.Token, info.RaftIndex = token, res.Index
	return info, nil
}

// createBatch seals rec into a batch token: nothing is written.
func (s *tokenServer) createBatch(rec *tokenRecord, now time.Time) (*pb.TokenInfo, error) {
	if rec.Expire == 0 {
		rec.Expire = now.Add(maxTokenTTL).Unix()
	}
	token, err := encodeBatchToken(s.keys, &batchRecord{
		Policies: rec.Policies, Created: rec.Created, Expire: rec.Expire, Parent: rec.Parent, DisplayName: rec.DisplayName,
		BoundCIDRs: rec.BoundCIDRs,
	})
	if err != nil {
		return nil, err
	}
	rec.batch, rec.NoRenew = true, true
	info := tokenInfo(rec, now)
	info.Token = token
	return info, nil
}

// childPolicies are the policies of a new token: those asked (or the
// parent's), with default unless left out. A token that is not root may
// only pass on policies it holds.
func (s *tokenServer) childPolicies(parent *tokenRecord, req *pb.CreateTokenRequest, isRoot bool) ([]string, error) {
	asked := req.GetPolicies()
	if len(asked) > maxTokenPolicies {
		return nil, invalidf("a token has at most %d policies", maxTokenPolicies)
	}
	out, err := policyNames(asked)
	if err != nil {
		return nil, invalidf("%v", err)
	}
	for _, p := range out {
		if !isRoot && !slices.Contains(parent.Policies, p) {
			return nil, withMessage(ErrPermissionDenied, "permission denied: a child token may only hold policies its parent holds, and %q is not among them", p)
		}
	}
	if len(asked) == 0 {
		out = append(out, parent.Policies...)
	}
	if slices.Contains(out, rootPolicy) {
		if !isRoot {
			return nil, withMessage(ErrPermissionDenied, "permission denied: only a root token may create a root token")
		}
		return []string{rootPolicy}, nil
	}
	if !req.GetNoDefaultPolicy() && !slices.Contains(out, defaultPolicy) {
		out = append(out, defaultPolicy)
	}
	if req.GetNoDefaultPolicy() {
		out = slices.DeleteFunc(out, func(p string) bool { return p == defaultPolicy })
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}

// policyNames trims names, drops empty ones, checks that each (root
// aside) can name a policy, and returns them sorted without repeats.
func policyNames(names []string) ([]string, error) {
	var out []string
	for _, p := range names {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if p != rootPolicy {
			if err := acl.ValidName(p); err != nil {
				return nil, err
			}
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}

// recordEntries seals a token's record and, when fresh, its accessor and
// parent index entries.
func (s *tokenServer) recordEntries(rec *tokenRecord, fresh bool) ([]*fsmpb.SysEntry, error) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	var entries []*fsmpb.SysEntry
	add := func(key string, value []byte) error {
		sealed, err := s.keys.SealEntry(key, value)
		if err != nil {
			return err
		}
		entries = append(entries, &fsmpb.SysEntry{Key: key, Value: sealed})
		return nil
	}
	if err := add(sysTokenPref+rec.Hash, raw); err != nil {
		return nil, err
	}
	if fresh && rec.Accessor != "" {
		if err := add(sysAccessorPref+rec.Accessor, []byte(rec.Hash)); err != nil {
			return nil, err
		}
	}
	if fresh && rec.Parent != "" {
		if err := add(sysParentPref+rec.Parent+"/"+rec.Hash, []byte(rec.Hash)); err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// record reads a token's record by its hash.
func (s *tokenServer) record(hash string) (*tokenRecord, error) {
	raw, err := s.state.SysGet(sysTokenPref + hash)
	if err != nil {
		return nil, err
	}
	return openTokenRecord(s.keys, sysTokenPref+hash, raw)
}

// target finds the token a call names: by token, by accessor, or the
// caller's own.
func (s *tokenServer) target(ctx context.Context, token, accessor string) (*tokenRecord, error) {
	me, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	var hash string
	switch {
	case token != "" && accessor != "":
		return nil, invalidf("name a token or an accessor, not both")
	case token != "" && isBatchToken(token):
		rec, err := openBatchToken(s.keys, token)
		if err != nil || rec.expired(s.now()) {
			return nil, errNoSuchToken
		}
		return rec, nil
	case token != "":
		hash = hashToken(token)
	case accessor != "":
		if len(accessor) > 128 {
			return nil, withMessage(fsm.ErrNotFound, "no token has that accessor")
		}
		raw, err := s.state.SysGet(sysAccessorPref + accessor)
		if errors.Is(err, fsm.ErrNotFound) {
			return nil, withMessage(fsm.ErrNotFound, "no token has that accessor")
		}
		if err != nil {
			return nil, err
		}
		pt, err := s.keys.OpenEntry(sysAccessorPref+accessor, raw)
		if err != nil {
			return nil, err
		}
		hash = string(pt)
	default:
		return me, nil
	}
	rec, err := s.record(hash)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, errNoSuchToken
	}
	if err != nil {
		return nil, err
	}
	if rec.expired(s.now()) {
		return nil, errNoSuchToken
	}
	return rec, nil
}

// Lookup describes a token; the token itself only to its own holder.
func (s *tokenServer) Lookup(ctx context.Context, req *pb.LookupTokenRequest) (*pb.TokenInfo, error) {
	rec, err := s.target(ctx, req.GetToken(), req.GetAccessor())
	if err != nil {
		return nil, err
	}
	info := tokenInfo(rec, s.now())
	if req.GetAccessor() == "" {
		info.Token = req.GetToken()
	}
	return info, nil
}

// Renew extends a token's life by increment (its creation TTL when 0),
// within its explicit maximum and the system's, as Vault does; a periodic
// token gets its period again.
func (s *tokenServer) Renew(ctx context.Context, req *pb.RenewTokenRequest) (*pb.TokenInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, err := s.target(ctx, req.GetToken(), req.GetAccessor())
	if err != nil {
		return nil, err
	}
	if !rec.renewable() {
		return nil, invalidf("this token is not renewable")
	}
	if req.GetIncrementSeconds() < 0 || req.GetIncrementSeconds() > maxDurationSeconds {
		return nil, invalidf("increment must be from 0 to 100 years (%d seconds)", maxDurationSeconds)
	}
	now := s.now()
	inc := req.GetIncrementSeconds()
	if inc == 0 {
		inc = rec.TTL
	}
	if rec.Period != 0 {
		inc = rec.Period
	}
	next := rec.clone()
	next.Expire = now.Unix() + min(inc, int64(maxTokenTTL/time.Second))
	if rec.ExplicitMax != 0 {
		next.Expire = min(next.Expire, rec.Created+rec.ExplicitMax)
	}
	if rec.Period == 0 {
		next.Expire = min(next.Expire, rec.Created+int64(maxTokenTTL/time.Second))
	}
	if rec.Parent != "" {
		if p, err := s.record(rec.Parent); err == nil && p.Expire != 0 {
			next.Expire = min(next.Expire, p.Expire)
		}
	}
	next.Expire = max(next.Expire, rec.Expire)
	entries, err := s.recordEntries(next, false)
	if err != nil {
		return nil, err
	}
	res, err := s.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: entries})
	if err != nil {
		return nil, err
	}
	s.expiry.push(next.Hash, next.Expire)
	info := tokenInfo(next, now)
	info.RaftIndex = res.Index
	return info, nil
}

// Revoke removes a token and its children (not its orphans).
func (s *tokenServer) Revoke(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, err := s.target(ctx, req.GetToken(), req.GetAccessor())
	if errors.Is(err, fsm.ErrNotFound) && req.GetToken() != "" {
		// Revoking what is gone succeeds, as in Vault.
		return &pb.RevokeTokenResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if rec.batch {
		return nil, invalidf("a batch token cannot be revoked: it ends at its expiry, or when its parent is revoked")
	}
	n, index, err := s.revokeTree(ctx, []*tokenRecord{rec})
	if err != nil {
		return nil, err
	}
	s.logger.Info("token revoked", "accessor", rec.Accessor, "revoked", n)
	return &pb.RevokeTokenResponse{Revoked: uint32(n), RaftIndex: index}, nil
}

// revokeTree deletes the tokens roots and every descendant (children
// made without no_parent), with their index entries, in commands of at
// most maxRevokeTree tokens, children first so that no child is ever left
// without the index that leads to it. It returns how many it removed.
func (s *tokenServer) revokeTree(ctx context.Context, roots []*tokenRecord) (int, uint64, error) {
	var order []*tokenRecord
	seen := map[string]bool{}
	queue := append([]*tokenRecord(nil), roots...)
	for len(queue) > 0 {
		rec := queue[0]
		queue = queue[1:]
		if seen[rec.Hash] {
			continue
		}
		seen[rec.Hash] = true
		order = append(order, rec)
		kids, err := s.state.SysList(sysParentPref + rec.Hash + "/")
		if err != nil {
			return 0, 0, err
		}
		for _, k := range kids {
			h := strings.TrimPrefix(k, sysParentPref+rec.Hash+"/")
			child, err := s.record(h)
			if errors.Is(err, fsm.ErrNotFound) {
				// Its record is gone: drop the index entry with the parent.
				order = append(order, &tokenRecord{Hash: h, Parent: rec.Hash, gone: true})
				continue
			}
			if err != nil {
				return 0, 0, err
			}
			queue = append(queue, child)
		}
	}
	slices.Reverse(order)
	removed, index := 0, uint64(0)
	for start := 0; start < len(order); start += maxRevokeTree {
		var del []string
		for _, rec := range order[start:min(len(order), start+maxRevokeTree)] {
			if !rec.gone {
				del = append(del, sysTokenPref+rec.Hash)
				removed++
			}
			if rec.Accessor != "" {
				del = append(del, sysAccessorPref+rec.Accessor)
			}
			if rec.Parent != "" {
				del = append(del, sysParentPref+rec.Parent+"/"+rec.Hash)
			}
		}
		res, err := s.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: del})
		if err != nil {
			return removed, index, err
		}
		index = res.Index
	}
	return removed, index, nil
}

// Capabilities lists a token's capabilities on paths, in Vault's form.
func (s *tokenServer) Capabilities(ctx context.Context, req *pb.CapabilitiesRequest) (*pb.CapabilitiesResponse, error) {
	rec, err := s.target(ctx, req.GetToken(), "")
	if err != nil {
		return nil, err
	}
	if len(req.GetPaths()) == 0 || len(req.GetPaths()) > 256 {
		return nil, invalidf("name between 1 and 256 paths")
	}
	a, err := s.policies.aclFor(rec.Policies)
	if err != nil {
		return nil, err
	}
	isRoot := rec.isRoot()
	out := &pb.CapabilitiesResponse{}
	for _, p := range req.GetPaths() {
		p = strings.TrimPrefix(p, "/")
		pc := &pb.PathCapabilities{Path: p}
		switch caps := a.Capabilities(p); {
		case isRoot:
			pc.Capabilities = []string{"root"}
		case caps == 0 || caps&acl.Deny != 0:
			pc.Capabilities = []string{"deny"}
		default:
			pc.Capabilities = caps.Names()
		}
		out.Paths = append(out.Paths, pc)
	}
	return out, nil
}

// useToken takes one use of the token with hash, on the leader, before
// the call it authorizes is served: the record is read again from the
// state (not the cache), and the last use revokes the token with its
// children. Uses are taken one at a time, so two calls never share one.
func (s *tokenServer) useToken(ctx context.Context, hash string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, err := s.record(hash)
	if errors.Is(err, fsm.ErrNotFound) {
		return withMessage(ErrUnauthenticated, "server: the token has no uses left (or was revoked): ask for a new token")
	}
	if err != nil {
		return err
	}
	if rec.expired(s.now()) {
		return errTokenExpired
	}
	switch {
	case rec.NumUses <= 0:
		return nil
	case rec.NumUses == 1:
		_, _, err := s.revokeTree(ctx, []*tokenRecord{rec})
		return err
	}
	next := rec.clone()
	next.NumUses--
	entries, err := s.recordEntries(next, false)
	if err != nil {
		return err
	}
	_, err = s.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: entries})
	return err
}

// expire revokes the tokens whose time is over (with their children);
// the leader runs it as a duty. The first pass of a leadership scans every
// token record and builds the expiry queue; later passes open only the
// records the queue says are due. It returns how many it removed.
func (s *tokenServer) expire(ctx context.Context, now time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var due []*tokenRecord
	if !s.expiry.built() {
		names, err := s.state.SysList(sysTokenPref)
		if err != nil {
			return 0, err
		}
		var all []expiryEntry
		for _, k := range names {
			rec, err := s.record(strings.TrimPrefix(k, sysTokenPref))
			if err != nil {
				continue
			}
			if rec.expired(now) && len(due) < maxRevokeTree {
				due = append(due, rec)
			} else if rec.Expire != 0 {
				all = append(all, expiryEntry{expire: rec.Expire, hash: rec.Hash})
			}
		}
		s.expiry.build(all)
	} else {
		for _, e := range s.expiry.due(now.Unix(), maxRevokeTree) {
			rec, err := s.record(e.hash)
			if err != nil {
				continue // revoked meanwhile (or unreadable: the scan of the next leadership sees it)
			}
			if !rec.expired(now) {
				s.expiry.push(rec.Hash, rec.Expire) // renewed since
				continue
			}
			due = append(due, rec)
		}
	}
	if len(due) == 0 {
		return 0, nil
	}
	n, _, err := s.revokeTree(ctx, due)
	if err != nil {
		// What was not removed is due again at the next pass.
		for _, rec := range due {
			s.expiry.push(rec.Hash, rec.Expire)
		}
		return n, fmt.Errorf("server: removing expired tokens: %w", err)
	}
	return n, nil
}
