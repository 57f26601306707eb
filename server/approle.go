package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/server/auth"
)

// Keys of the AppRole method (sys table, every value sealed by the
// barrier). Credentials appear in keys only hashed.
const (
	// auth/approle/role/<name> → appRole
	sysAppRolePref = "auth/approle/role/"
	// auth/approle/role-id/<sha256 of role_id> → the role's name
	sysAppRoleIDPref = "auth/approle/role-id/"
	// auth/approle/secret-id/<role>/<sha256 of secret_id> → secretID
	sysSecretIDPref = "auth/approle/secret-id/"
	// auth/approle/secret-id-accessor/<accessor> → secretIDAccessor
	sysSecretIDAccessorPref = "auth/approle/secret-id-accessor/"
)

// maxCredentialLen bounds a role_id or secret_id a login names.
const maxCredentialLen = 128

// appRole is an AppRole role as stored.
type appRole struct {
	RoleID string `json:"role_id"`
	roleToken
	SecretIDTTL        int64    `json:"secret_id_ttl,omitempty"`
	SecretIDNumUses    int64    `json:"secret_id_num_uses,omitempty"`
	SecretIDBoundCIDRs []string `json:"secret_id_bound_cidrs,omitempty"`
}

// secretID is a secret_id as stored: never the secret_id, only its hash,
// with what the role said when it was made.
type secretID struct {
	Hash     string `json:"hash"`
	Accessor string `json:"accessor"`
	Created  int64  `json:"created_unix"`
	// Expire: 0 never.
	Expire int64 `json:"expire_unix,omitempty"`
	// NumUses as made (0: no limit) and the uses left.
	NumUses    int64    `json:"num_uses,omitempty"`
	Remaining  int64    `json:"remaining_uses,omitempty"`
	BoundCIDRs []string `json:"bound_cidrs,omitempty"`
}

// secretIDAccessor leads from an accessor to its secret_id.
type secretIDAccessor struct {
	Role string `json:"role"`
	Hash string `json:"hash"`
}

// hashCredential is the storage form of a role_id or secret_id.
func hashCredential(v string) string {
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:])
}

func secretIDKey(role, hash string) string { return sysSecretIDPref + role + "/" + hash }

// appRoles is the AppRole method: the AppRoleAuth service and its logins.
type appRoles struct {
	pb.UnimplementedAppRoleAuthServer
	store  sealedJSON
	props  proposer
	locks  *keyLocks
	logger hclog.Logger
	now    func() time.Time
}

// role reads a role.
func (a *appRoles) role(name string) (*appRole, error) {
	var r appRole
	if _, err := a.store.get(sysAppRolePref+name, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// exists reports whether the role is stored (create versus update).
func (a *appRoles) exists(name string) bool {
	_, err := a.store.state.SysGet(sysAppRolePref + name)
	return err == nil
}

// WriteRole creates a role (with a new role_id) or replaces its settings.
func (a *appRoles) WriteRole(ctx context.Context, req *pb.AppRole) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validRoleName("approle", name); err != nil {
		return nil, err
	}
	tok, err := roleTokenOf(req.GetToken())
	if err != nil {
		return nil, err
	}
	r := appRole{roleToken: tok, SecretIDTTL: req.GetSecretIdTtlSeconds(), SecretIDNumUses: req.GetSecretIdNumUses()}
	if r.SecretIDTTL < 0 || r.SecretIDNumUses < 0 {
		return nil, invalidf("secret_id_ttl and secret_id_num_uses must not be negative")
	}
	cidrs, err := auth.ParseCIDRs(req.GetSecretIdBoundCidrs())
	if err != nil {
		return nil, invalidf("secret_id_bound_cidrs: %v", strings.TrimPrefix(err.Error(), "auth: "))
	}
	for _, c := range cidrs {
		r.SecretIDBoundCIDRs = append(r.SecretIDBoundCIDRs, c.String())
	}
	defer a.locks.lock(sysAppRolePref + name)()
	var entries []*fsmpb.SysEntry
	old, err := a.role(name)
	switch {
	case err == nil:
		r.RoleID = old.RoleID
	case errors.Is(err, fsm.ErrNotFound):
		r.RoleID = newRoleID()
		idx, err := a.store.entry(sysAppRoleIDPref+hashCredential(r.RoleID), name)
		if err != nil {
			return nil, err
		}
		entries = append(entries, idx)
	default:
		return nil, err
	}
	e, err := a.store.entry(sysAppRolePref+name, r)
	if err != nil {
		return nil, err
	}
	res, err := a.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: append(entries, e)})
	if err != nil {
		return nil, err
	}
	a.logger.Info("approle role written", "role", name)
	return &pb.AuthWriteResponse{RaftIndex: res.Index}, nil
}

// newRoleID is a fresh role_id: 128 random bits in the form of a UUID, as
// Vault's.
func newRoleID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ReadRole returns a role's settings and role_id.
func (a *appRoles) ReadRole(_ context.Context, req *pb.AuthRoleRequest) (*pb.AppRole, error) {
	r, err := a.named(req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.AppRole{
		Name: req.GetName(), Token: r.roleToken.pb(), SecretIdTtlSeconds: r.SecretIDTTL, SecretIdNumUses: r.SecretIDNumUses,
		SecretIdBoundCidrs: append([]string(nil), r.SecretIDBoundCIDRs...), RoleId: r.RoleID,
	}, nil
}

// named reads the role a request names, or says it does not exist.
func (a *appRoles) named(name string) (*appRole, error) {
	if err := validRoleName("approle", name); err != nil {
		return nil, err
	}
	r, err := a.role(name)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, roleNotFound("approle", name, "coffer approle role list")
	}
	return r, err
}

// ListRoles returns the roles' names.
func (a *appRoles) ListRoles(context.Context, *pb.AuthListRequest) (*pb.AuthListResponse, error) {
	names, err := a.store.names(sysAppRolePref)
	if err != nil {
		return nil, err
	}
	return &pb.AuthListResponse{Names: names}, nil
}

// DeleteRole removes a role, its role_id and every secret_id of it.
func (a *appRoles) DeleteRole(ctx context.Context, req *pb.AuthRoleRequest) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	defer a.locks.lock(sysAppRolePref + name)()
	r, err := a.named(name)
	if err != nil {
		return nil, err
	}
	keys, err := a.secretIDKeys(name)
	if err != nil {
		return nil, err
	}
	// Secret_ids first: a role whose removal fails half-way still
	// exists, and can be deleted again.
	keys = append(keys, sysAppRoleIDPref+hashCredential(r.RoleID), sysAppRolePref+name)
	index, err := deleteKeys(ctx, a.props, keys)
	if err != nil {
		return nil, err
	}
	a.logger.Info("approle role deleted", "role", name)
	return &pb.AuthWriteResponse{RaftIndex: index}, nil
}

// secretIDKeys lists the entries of a role's secret_ids and of their
// accessors.
func (a *appRoles) secretIDKeys(role string) ([]string, error) {
	keys, err := a.store.state.SysList(sysSecretIDPref + role + "/")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		var s secretID
		if _, err := a.store.get(k, &s); err == nil && s.Accessor != "" {
			out = append(out, sysSecretIDAccessorPref+s.Accessor)
		}
		out = append(out, k)
	}
	return out, nil
}

// ReadRoleID returns a role's role_id.
func (a *appRoles) ReadRoleID(_ context.Context, req *pb.AuthRoleRequest) (*pb.RoleIDResponse, error) {
	r, err := a.named(req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.RoleIDResponse{RoleId: r.RoleID}, nil
}

// GenerateSecretID makes a secret_id with the role's TTL, use limit and
// CIDR binding. The secret_id is in the answer only; the state keeps its
// hash.
func (a *appRoles) GenerateSecretID(ctx context.Context, req *pb.AuthRoleRequest) (*pb.SecretIDResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	r, err := a.named(name)
	if err != nil {
		return nil, err
	}
	now := a.now()
	secret := rand.Text()
	s := secretID{
		Hash: hashCredential(secret), Accessor: rand.Text(), Created: now.Unix(),
		NumUses: r.SecretIDNumUses, Remaining: r.SecretIDNumUses, BoundCIDRs: r.SecretIDBoundCIDRs,
	}
	if r.SecretIDTTL > 0 {
		s.Expire = now.Unix() + r.SecretIDTTL
	}
	rec, err := a.store.entry(secretIDKey(name, s.Hash), s)
	if err != nil {
		return nil, err
	}
	acc, err := a.store.entry(sysSecretIDAccessorPref+s.Accessor, secretIDAccessor{Role: name, Hash: s.Hash})
	if err != nil {
		return nil, err
	}
	res, err := a.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{rec, acc}})
	if err != nil {
		return nil, err
	}
	a.logger.Info("approle secret_id made", "role", name, "secret_id_accessor", s.Accessor)
	return &pb.SecretIDResponse{
		SecretId: secret, SecretIdAccessor: s.Accessor, SecretIdTtlSeconds: r.SecretIDTTL,
		SecretIdNumUses: r.SecretIDNumUses, RaftIndex: res.Index,
	}, nil
}

// DestroySecretID removes a role's secret_id by its accessor.
func (a *appRoles) DestroySecretID(ctx context.Context, req *pb.DestroySecretIDRequest) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name, acc := req.GetName(), req.GetSecretIdAccessor()
	if err := validRoleName("approle", name); err != nil {
		return nil, err
	}
	if acc == "" || len(acc) > maxCredentialLen || strings.Contains(acc, "/") {
		return nil, invalidf("approle: give the secret_id's accessor (-accessor=ACCESSOR)")
	}
	var ref secretIDAccessor
	_, err := a.store.get(sysSecretIDAccessorPref+acc, &ref)
	if errors.Is(err, fsm.ErrNotFound) || (err == nil && ref.Role != name) {
		return nil, withMessage(fsm.ErrNotFound, "approle: role %q has no secret_id with that accessor (used up, expired or destroyed already)", clipName(name))
	}
	if err != nil {
		return nil, err
	}
	defer a.locks.lock(secretIDKey(name, ref.Hash))()
	index, err := deleteKeys(ctx, a.props, []string{secretIDKey(name, ref.Hash), sysSecretIDAccessorPref + acc})
	if err != nil {
		return nil, err
	}
	a.logger.Info("approle secret_id destroyed", "role", name, "secret_id_accessor", acc)
	return &pb.AuthWriteResponse{RaftIndex: index}, nil
}

// errAppRoleCredentials is the one answer to a role_id or secret_id that
// does not exist (or a pair that does not belong together): it does not
// say which of the two is wrong.
func errAppRoleCredentials() error {
	return &notHere{deniedf("approle: invalid role_id or secret_id (a secret_id that was used up, expired or destroyed no longer exists): ask for a new secret_id")}
}

// login checks a role_id and secret_id. On the leader, for a secret_id
// limited in uses, it holds the secret_id's lock until the grant is done,
// so that a use is read and spent by one login at a time.
func (a *appRoles) login(_ context.Context, call *loginCall) (*loginGrant, error) {
	roleID, secret := call.data["role_id"], call.data["secret_id"]
	switch {
	case roleID == "":
		return nil, invalidf("approle: give role_id (coffer approle role-id NAME)")
	case secret == "":
		return nil, invalidf("approle: give secret_id (coffer approle secret-id NAME)")
	case len(roleID) > maxCredentialLen || len(secret) > maxCredentialLen:
		return nil, errAppRoleCredentials()
	}
	var name string
	_, err := a.store.get(sysAppRoleIDPref+hashCredential(roleID), &name)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, errAppRoleCredentials()
	}
	if err != nil {
		return nil, err
	}
	r, err := a.role(name)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, errAppRoleCredentials()
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(r.RoleID), []byte(roleID)) != 1 {
		return nil, errAppRoleCredentials()
	}
	hash := hashCredential(secret)
	key := secretIDKey(name, hash)
	g := &loginGrant{method: "approle", role: name, display: "approle-" + name, token: r.roleToken}
	ok := false
	defer func() {
		if !ok {
			g.done()
		}
	}()
	var s secretID
	raw, err := a.store.get(key, &s)
	if err == nil && s.NumUses > 0 && call.leader {
		// A use will be spent: take the secret_id's turn, and read it again
		// under it (a login that held it before may have spent the last
		// use). A secret_id without a limit takes no turn.
		g.release = a.locks.lock(key)
		s = secretID{}
		raw, err = a.store.get(key, &s)
	}
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, errAppRoleCredentials()
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(s.Hash), []byte(hash)) != 1 {
		return nil, errAppRoleCredentials()
	}
	if s.Expire != 0 && call.now.Unix() >= s.Expire {
		return nil, deniedf("approle: the secret_id expired at %s: ask for a new one", time.Unix(s.Expire, 0).UTC().Format(time.RFC3339))
	}
	if len(s.BoundCIDRs) > 0 {
		cidrs, err := auth.ParseCIDRs(s.BoundCIDRs)
		if err != nil {
			return nil, fmt.Errorf("%w: a secret_id's bound CIDRs do not parse: %v", errBadData, err)
		}
		if !auth.AddrAllowed(cidrs, call.addr) {
			return nil, deniedf("approle: the secret_id may only log in from its bound CIDR blocks, and this login comes from %s", addrString(call.addr))
		}
	}
	if s.NumUses > 0 {
		if s.Remaining <= 0 {
			return nil, errAppRoleCredentials()
		}
		use := &credentialUse{expect: &fsmpb.SysEntry{Key: key, Value: raw}}
		if s.Remaining == 1 {
			use.del = []string{key, sysSecretIDAccessorPref + s.Accessor}
		} else {
			next := s
			next.Remaining--
			e, err := a.store.entry(key, next)
			if err != nil {
				return nil, err
			}
			use.put = []*fsmpb.SysEntry{e}
		}
		g.use = use
	}
	ok = true
	return g, nil
}

// secretIDTidyInterval is how often the leader removes expired
// secret_ids (every node refuses them from the moment they expire).
const secretIDTidyInterval = time.Minute

// tidySecretIDs removes the secret_ids whose time is over, with their
// accessors; the leader runs it as a duty. It returns how many it
// removed.
func tidySecretIDs(ctx context.Context, store sealedJSON, props proposer, now time.Time) (int, error) {
	keys, err := store.state.SysList(sysSecretIDPref)
	if err != nil {
		return 0, err
	}
	var del []string
	n := 0
	for _, k := range keys {
		var s secretID
		if _, err := store.get(k, &s); err != nil || s.Expire == 0 || now.Unix() < s.Expire {
			continue
		}
		del = append(del, k, sysSecretIDAccessorPref+s.Accessor)
		n++
	}
	if len(del) == 0 {
		return 0, nil
	}
	if _, err := deleteKeys(ctx, props, del); err != nil {
		return 0, fmt.Errorf("server: removing expired secret_ids: %w", err)
	}
	return n, nil
}
