package server

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/server/auth"
)

// Keys of the JWT method (sys table, sealed by the barrier).
const (
	// auth/jwt/config → jwtConfig
	sysJWTConfigKey = "auth/jwt/config"
	// auth/jwt/role/<name> → jwtRole
	sysJWTRolePref = "auth/jwt/role/"
)

// maxBoundClaims bounds the claims a role binds.
const maxBoundClaims = 32

// jwtConfig is where the JWT method's keys come from, as stored.
type jwtConfig struct {
	JWKS        string   `json:"jwks_json,omitempty"`
	JWKSURL     string   `json:"jwks_url,omitempty"`
	JWKSCAPEM   string   `json:"jwks_ca_pem,omitempty"`
	PubKeys     []string `json:"pubkeys,omitempty"`
	BoundIssuer string   `json:"bound_issuer,omitempty"`
}

// jwtRole is a JWT role as stored.
type jwtRole struct {
	BoundAudiences []string          `json:"bound_audiences"`
	BoundSubject   string            `json:"bound_subject,omitempty"`
	BoundClaims    map[string]string `json:"bound_claims,omitempty"`
	UserClaim      string            `json:"user_claim,omitempty"`
	roleToken
}

// jwtRoles is the JWT method: the JWTAuth service and its logins. The
// keys of the stored configuration are parsed (or their URL's fetcher
// made) once per configuration written, and kept.
type jwtRoles struct {
	pb.UnimplementedJWTAuthServer
	store sealedJSON
	props proposer
	// insecure: the node runs without TLS, so it accepts an http://
	// jwks_url.
	insecure bool
	logger   hclog.Logger

	mu sync.Mutex
	// keysOf is the stored configuration the keys below were made from
	// (its sealed bytes: they change with every write).
	keysOf string
	static *auth.KeySet
	remote *auth.RemoteKeys
}

// close drops the remote key set's connections.
func (j *jwtRoles) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.remote != nil {
		j.remote.Close()
	}
}

// WriteConfig stores where the keys come from: exactly one of a JWKS
// document, a JWKS URL and PEM keys, each checked before it is stored.
func (j *jwtRoles) WriteConfig(ctx context.Context, req *pb.JWTConfig) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	c := jwtConfig{
		JWKS: strings.TrimSpace(req.GetJwksJson()), JWKSURL: strings.TrimSpace(req.GetJwksUrl()),
		JWKSCAPEM: req.GetJwksCaPem(), PubKeys: req.GetPubkeys(), BoundIssuer: req.GetBoundIssuer(),
	}
	sources := 0
	for _, set := range []bool{c.JWKS != "", c.JWKSURL != "", len(c.PubKeys) > 0} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return nil, invalidf("jwt: give exactly one of jwks_file, jwks_url and pubkeys")
	}
	if c.JWKSCAPEM != "" && c.JWKSURL == "" {
		return nil, invalidf("jwt: jwks_ca_pem verifies a jwks_url: give jwks_url too, or leave it out")
	}
	switch {
	case c.JWKS != "":
		if _, err := auth.ParseJWKS([]byte(c.JWKS)); err != nil {
			return nil, invalidf("jwt: %s", strings.TrimPrefix(err.Error(), "auth: "))
		}
	case len(c.PubKeys) > 0:
		if _, err := auth.ParsePEMKeys(c.PubKeys); err != nil {
			return nil, invalidf("jwt: %s", strings.TrimPrefix(err.Error(), "auth: "))
		}
	default:
		r, err := auth.NewRemoteKeys(c.JWKSURL, auth.RemoteOptions{CAPEM: c.JWKSCAPEM, AllowHTTP: j.insecure})
		if err != nil {
			return nil, invalidf("jwt: %s", strings.TrimPrefix(err.Error(), "auth: "))
		}
		r.Close()
	}
	e, err := j.store.entry(sysJWTConfigKey, c)
	if err != nil {
		return nil, err
	}
	res, err := j.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{e}})
	if err != nil {
		return nil, err
	}
	j.logger.Info("jwt configuration written", "jwks_url", c.JWKSURL, "bound_issuer", c.BoundIssuer)
	return &pb.AuthWriteResponse{RaftIndex: res.Index}, nil
}

// ReadConfig returns the configuration.
func (j *jwtRoles) ReadConfig(context.Context, *pb.ReadJWTConfigRequest) (*pb.JWTConfig, error) {
	var c jwtConfig
	_, err := j.store.get(sysJWTConfigKey, &c)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, withMessage(fsm.ErrNotFound, "jwt: not configured yet: write it with `coffer jwt config`")
	}
	if err != nil {
		return nil, err
	}
	return &pb.JWTConfig{JwksJson: c.JWKS, JwksUrl: c.JWKSURL, JwksCaPem: c.JWKSCAPEM, Pubkeys: c.PubKeys, BoundIssuer: c.BoundIssuer}, nil
}

// exists reports whether a role is stored (create versus update).
func (j *jwtRoles) exists(name string) bool {
	_, err := j.store.state.SysGet(sysJWTRolePref + name)
	return err == nil
}

// WriteRole creates or replaces a role.
func (j *jwtRoles) WriteRole(ctx context.Context, req *pb.JWTRole) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validRoleName("jwt", name); err != nil {
		return nil, err
	}
	tok, err := roleTokenOf(req.GetToken())
	if err != nil {
		return nil, err
	}
	r := jwtRole{BoundSubject: req.GetBoundSubject(), UserClaim: req.GetUserClaim(), roleToken: tok}
	for _, a := range req.GetBoundAudiences() {
		if a = strings.TrimSpace(a); a != "" {
			r.BoundAudiences = append(r.BoundAudiences, a)
		}
	}
	if len(r.BoundAudiences) == 0 {
		return nil, invalidf("jwt: a role needs bound_audiences: name the audience its tokens are issued for")
	}
	if len(r.BoundAudiences) > maxRoleListLength {
		return nil, invalidf("jwt: at most %d bound_audiences", maxRoleListLength)
	}
	if len(req.GetBoundClaims()) > maxBoundClaims {
		return nil, invalidf("jwt: at most %d bound_claims", maxBoundClaims)
	}
	for k, v := range req.GetBoundClaims() {
		if k == "" {
			return nil, invalidf("jwt: a bound claim has no name: give name=value")
		}
		if r.BoundClaims == nil {
			r.BoundClaims = make(map[string]string)
		}
		r.BoundClaims[k] = v
	}
	if r.UserClaim == "" {
		r.UserClaim = "sub"
	}
	e, err := j.store.entry(sysJWTRolePref+name, r)
	if err != nil {
		return nil, err
	}
	res, err := j.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{e}})
	if err != nil {
		return nil, err
	}
	j.logger.Info("jwt role written", "role", name)
	return &pb.AuthWriteResponse{RaftIndex: res.Index}, nil
}

// role reads the role a request names, or says it does not exist.
func (j *jwtRoles) role(name string) (*jwtRole, error) {
	if err := validRoleName("jwt", name); err != nil {
		return nil, err
	}
	var r jwtRole
	_, err := j.store.get(sysJWTRolePref+name, &r)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, roleNotFound("jwt", name, "coffer jwt role list")
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// ReadRole returns a role.
func (j *jwtRoles) ReadRole(_ context.Context, req *pb.AuthRoleRequest) (*pb.JWTRole, error) {
	r, err := j.role(req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.JWTRole{
		Name: req.GetName(), BoundAudiences: r.BoundAudiences, BoundSubject: r.BoundSubject,
		BoundClaims: r.BoundClaims, UserClaim: r.UserClaim, Token: r.roleToken.pb(),
	}, nil
}

// ListRoles returns the roles' names.
func (j *jwtRoles) ListRoles(context.Context, *pb.AuthListRequest) (*pb.AuthListResponse, error) {
	names, err := j.store.names(sysJWTRolePref)
	if err != nil {
		return nil, err
	}
	return &pb.AuthListResponse{Names: names}, nil
}

// DeleteRole removes a role.
func (j *jwtRoles) DeleteRole(ctx context.Context, req *pb.AuthRoleRequest) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if _, err := j.role(req.GetName()); err != nil {
		return nil, err
	}
	index, err := deleteKeys(ctx, j.props, []string{sysJWTRolePref + req.GetName()})
	if err != nil {
		return nil, err
	}
	j.logger.Info("jwt role deleted", "role", req.GetName())
	return &pb.AuthWriteResponse{RaftIndex: index}, nil
}

// jwtDenied refuses a JWT login with the auth package's reason.
func jwtDenied(err error) error {
	return deniedf("jwt: %s", strings.TrimPrefix(err.Error(), "auth: "))
}

// login checks a JWT against the configured keys and the role.
func (j *jwtRoles) login(ctx context.Context, call *loginCall) (*loginGrant, error) {
	name, raw := call.data["role"], call.data["jwt"]
	switch {
	case name == "":
		return nil, invalidf("jwt: name the role to log in to (role=NAME)")
	case raw == "":
		return nil, invalidf("jwt: give the token (jwt=@FILE)")
	}
	if err := validRoleName("jwt", name); err != nil {
		return nil, err
	}
	var c jwtConfig
	cfgRaw, err := j.store.get(sysJWTConfigKey, &c)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, &notHere{deniedf("jwt: the jwt login method is not configured: write its keys with `coffer jwt config`")}
	}
	if err != nil {
		return nil, err
	}
	var r jwtRole
	if _, err := j.store.get(sysJWTRolePref+name, &r); errors.Is(err, fsm.ErrNotFound) {
		return nil, &notHere{deniedf("jwt: no role named %q: list them with `coffer jwt role list`", clipName(name))}
	} else if err != nil {
		return nil, err
	}
	tok, err := auth.ParseToken(raw)
	if err != nil {
		return nil, jwtDenied(err)
	}
	keys, err := j.keys(ctx, string(cfgRaw), c, tok.KeyID)
	if err != nil {
		return nil, err
	}
	claims, err := tok.Verify(keys)
	if err != nil {
		return nil, jwtDenied(err)
	}
	err = claims.Check(auth.Expect{Issuer: c.BoundIssuer, Audiences: r.BoundAudiences, Subject: r.BoundSubject, Claims: r.BoundClaims}, call.now)
	if err != nil {
		return nil, jwtDenied(err)
	}
	user, ok := claims.Value(r.UserClaim)
	if !ok || user == "" {
		return nil, deniedf("jwt: the token has no %q claim (the role's user_claim) to name its user", clipName(r.UserClaim))
	}
	return &loginGrant{method: "jwt", role: name, display: "jwt-" + name + "-" + user, token: r.roleToken}, nil
}

// keys returns the keys of configuration c (whose stored bytes are
// cfgRaw) for a token naming kid.
func (j *jwtRoles) keys(ctx context.Context, cfgRaw string, c jwtConfig, kid string) (*auth.KeySet, error) {
	j.mu.Lock()
	if j.keysOf != cfgRaw {
		if j.remote != nil {
			j.remote.Close()
		}
		j.static, j.remote, j.keysOf = nil, nil, ""
		var err error
		switch {
		case c.JWKS != "":
			j.static, err = auth.ParseJWKS([]byte(c.JWKS))
		case len(c.PubKeys) > 0:
			j.static, err = auth.ParsePEMKeys(c.PubKeys)
		case c.JWKSURL != "":
			j.remote, err = auth.NewRemoteKeys(c.JWKSURL, auth.RemoteOptions{CAPEM: c.JWKSCAPEM, AllowHTTP: j.insecure})
		default:
			err = errors.New("no key source")
		}
		if err != nil {
			j.mu.Unlock()
			return nil, deniedf("jwt: the configured keys cannot be used on this node: %s: write the configuration again", strings.TrimPrefix(err.Error(), "auth: "))
		}
		j.keysOf = cfgRaw
	}
	static, remote := j.static, j.remote
	j.mu.Unlock()
	if static != nil {
		return static, nil
	}
	keys, err := remote.Keys(ctx, kid)
	if err != nil {
		return nil, withMessage(ErrLoginUnavailable, "jwt: %s: check auth/jwt/config's jwks_url, or retry", strings.TrimPrefix(err.Error(), "auth: "))
	}
	return keys, nil
}
