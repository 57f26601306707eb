package httpapi

import (
	"context"
	"net/http"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
)

// loginRoutes serves the login methods at Vault's paths: AppRole
// (auth/approle/), JWT (auth/jwt/), Kubernetes (auth/kubernetes/login,
// on the JWT method) and certificates (auth/cert/).
func (h *Handler) loginRoutes() {
	h.handle("auth/approle/role", map[op]endpointFunc{opList: roleList(pb.AppRoleAuth_ListRoles_FullMethodName)})
	h.handle("auth/approle/role/", map[op]endpointFunc{opList: roleList(pb.AppRoleAuth_ListRoles_FullMethodName)})
	h.handle("auth/approle/role/*", map[op]endpointFunc{opGet: appRoleGet, opPost: appRolePost, opDelete: appRoleDelete})
	h.handle("auth/approle/login", map[op]endpointFunc{opPost: appRoleLogin})

	h.handle("auth/jwt/config", map[op]endpointFunc{opGet: jwtConfigRead, opPost: jwtConfigWrite})
	h.handle("auth/jwt/role", map[op]endpointFunc{opList: roleList(pb.JWTAuth_ListRoles_FullMethodName)})
	h.handle("auth/jwt/role/", map[op]endpointFunc{opList: roleList(pb.JWTAuth_ListRoles_FullMethodName)})
	h.handle("auth/jwt/role/*", map[op]endpointFunc{opGet: jwtRoleRead, opPost: jwtRoleWrite, opDelete: roleDelete(pb.JWTAuth_DeleteRole_FullMethodName)})
	h.handle("auth/jwt/login", map[op]endpointFunc{opPost: jwtLogin})
	h.handle("auth/kubernetes/login", map[op]endpointFunc{opPost: jwtLogin})

	h.handle("auth/cert/certs", map[op]endpointFunc{opList: roleList(pb.CertAuth_ListRoles_FullMethodName)})
	h.handle("auth/cert/certs/", map[op]endpointFunc{opList: roleList(pb.CertAuth_ListRoles_FullMethodName)})
	h.handle("auth/cert/certs/*", map[op]endpointFunc{opGet: certRoleRead, opPost: certRoleWrite, opDelete: roleDelete(pb.CertAuth_DeleteRole_FullMethodName)})
	h.handle("auth/cert/login", map[op]endpointFunc{opPost: certLogin})
}

// fields is a request body as Vault's backends take it: named fields of
// loose types (a TTL as seconds or "1h", a list as an array or "a,b").
type fields map[string]any

// body decodes the request's body into fields.
func (rq *request) fields() (fields, error) {
	f := fields{}
	if err := rq.decode(&f); err != nil {
		return nil, err
	}
	return f, nil
}

// get is the first of names the body sets (Vault's current name first,
// then its older alias).
func (f fields) get(names ...string) (string, any) {
	for _, n := range names {
		if v, ok := f[n]; ok && v != nil {
			return n, v
		}
	}
	return names[0], nil
}

func (f fields) str(name string) (string, error) {
	v := f[name]
	if v == nil {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", badRequest("%s must be a string, not %s", name, jsonKindOrValue(v))
	}
	return s, nil
}

func (f fields) list(names ...string) ([]string, error) { return strList(f.get(names...)) }

func (f fields) ttl(names ...string) (int64, error) { return parseTTL(f.get(names...)) }

// unsupported refuses a field coffer does not implement when the body
// sets it to anything but its zero value: a setting silently ignored
// would give a role other rights than its writer meant.
func (f fields) unsupported(why string, names ...string) error {
	for _, n := range names {
		switch v := f[n].(type) {
		case nil:
		case string:
			if v == "" || v == "0" || v == "0s" {
				continue
			}
			return badRequest("%s: %s", n, why)
		case bool:
			if !v {
				continue
			}
			return badRequest("%s: %s", n, why)
		case []any:
			if len(v) == 0 {
				continue
			}
			return badRequest("%s: %s", n, why)
		case map[string]any:
			if len(v) == 0 {
				continue
			}
			return badRequest("%s: %s", n, why)
		default:
			if s := jsonKindOrValue(v); s == "0" {
				continue
			}
			return badRequest("%s: %s", n, why)
		}
	}
	return nil
}

// roleToken reads the token settings every role has (Vault's token_*
// fields and their older names).
func (f fields) roleToken() (*pb.RoleToken, error) {
	if err := f.unsupported("coffer's login tokens have no use limit, period or explicit max TTL: leave it out (token_max_ttl caps a token's life)",
		"token_num_uses", "token_period", "period", "token_explicit_max_ttl"); err != nil {
		return nil, err
	}
	t := &pb.RoleToken{}
	var err error
	if t.Policies, err = f.list("token_policies", "policies"); err != nil {
		return nil, err
	}
	if t.TtlSeconds, err = f.ttl("token_ttl", "ttl"); err != nil {
		return nil, err
	}
	if t.MaxTtlSeconds, err = f.ttl("token_max_ttl", "max_ttl"); err != nil {
		return nil, err
	}
	if t.BoundCidrs, err = f.list("token_bound_cidrs", "bound_cidrs"); err != nil {
		return nil, err
	}
	if t.NoDefaultPolicy, err = boolOf("token_no_default_policy", f["token_no_default_policy"]); err != nil {
		return nil, err
	}
	typ, err := f.str("token_type")
	if err != nil {
		return nil, err
	}
	switch typ {
	case "default", "default-service":
		typ = "service"
	case "default-batch":
		typ = "batch"
	}
	t.Type = typ
	return t, nil
}

// roleTokenData is a role's token settings as Vault reads them.
func roleTokenData(t *pb.RoleToken, d map[string]any) map[string]any {
	policies := nonNil(t.GetPolicies())
	typ := t.GetType()
	if typ == "" {
		typ = "default"
	}
	d["token_policies"] = policies
	d["policies"] = policies
	d["token_ttl"] = t.GetTtlSeconds()
	d["token_max_ttl"] = t.GetMaxTtlSeconds()
	d["token_type"] = typ
	d["token_bound_cidrs"] = nonNil(t.GetBoundCidrs())
	d["token_no_default_policy"] = t.GetNoDefaultPolicy()
	d["token_num_uses"] = 0
	d["token_period"] = 0
	d["token_explicit_max_ttl"] = 0
	return d
}

// roleName is the role a path under a roles prefix names.
func (rq *request) roleName() (string, error) {
	name := strings.TrimSuffix(rq.rest, "/")
	if name == "" || strings.Contains(name, "/") {
		return "", badRequest("name one role: %sNAME", strings.TrimSuffix(rq.path, rq.rest))
	}
	return name, nil
}

// roleList answers a method's role names (data.keys; 404 for none).
func roleList(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		out, err := rq.call(ctx, method, &pb.AuthListRequest{})
		if err != nil {
			return nil, err
		}
		return keysReply(out.(*pb.AuthListResponse).GetNames())
	}
}

// roleDelete removes a role: 204 (also when there was none, as Vault).
func roleDelete(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		name, err := rq.roleName()
		if err != nil {
			return nil, err
		}
		return writeRole(ctx, rq, method, &pb.AuthRoleRequest{Name: name})
	}
}

// writeRole calls a method that writes (a role, a config, a deletion)
// and answers 204 with its index; a deletion of nothing is 204 too.
func writeRole(ctx context.Context, rq *request, method string, req proto.Message) (*reply, error) {
	out, err := rq.call(ctx, method, req)
	if err != nil {
		if rq.op == opDelete && isReason(err, pb.ErrorReason_NOT_FOUND) {
			return noContent(), nil
		}
		return nil, err
	}
	return indexed(out.(*pb.AuthWriteResponse).GetRaftIndex()), nil
}

// readRole calls a method that reads (a role, a config): 404 with no
// message when there is none, as Vault.
func readRole(ctx context.Context, rq *request, method string, req proto.Message) (proto.Message, error) {
	out, err := rq.call(ctx, method, req)
	if err != nil && isReason(err, pb.ErrorReason_NOT_FOUND) {
		return nil, notFoundEmpty()
	}
	return out, err
}

// AppRole.

// appRolePath splits the path under auth/approle/role/ into the role's
// name and what follows it ("", "role-id", "secret-id",
// "secret-id-accessor/destroy").
func (rq *request) appRolePath() (name, sub string, err error) {
	name, sub, _ = strings.Cut(strings.TrimSuffix(rq.rest, "/"), "/")
	if name == "" {
		return "", "", badRequest("name a role: auth/approle/role/NAME")
	}
	return name, sub, nil
}

func appRoleGet(ctx context.Context, rq *request) (*reply, error) {
	name, sub, err := rq.appRolePath()
	if err != nil {
		return nil, err
	}
	switch sub {
	case "":
		out, err := readRole(ctx, rq, pb.AppRoleAuth_ReadRole_FullMethodName, &pb.AuthRoleRequest{Name: name})
		if err != nil {
			return nil, err
		}
		r := out.(*pb.AppRole)
		return &reply{data: roleTokenData(r.GetToken(), map[string]any{
			"bind_secret_id":        true,
			"local_secret_ids":      false,
			"secret_id_ttl":         r.GetSecretIdTtlSeconds(),
			"secret_id_num_uses":    r.GetSecretIdNumUses(),
			"secret_id_bound_cidrs": nonNil(r.GetSecretIdBoundCidrs()),
		})}, nil
	case "role-id":
		out, err := readRole(ctx, rq, pb.AppRoleAuth_ReadRoleID_FullMethodName, &pb.AuthRoleRequest{Name: name})
		if err != nil {
			return nil, err
		}
		return &reply{data: map[string]any{"role_id": out.(*pb.RoleIDResponse).GetRoleId()}}, nil
	}
	return nil, notFound(rq.path)
}

func appRolePost(ctx context.Context, rq *request) (*reply, error) {
	name, sub, err := rq.appRolePath()
	if err != nil {
		return nil, err
	}
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	switch sub {
	case "":
		return appRoleWrite(ctx, rq, name, f)
	case "secret-id":
		if err := f.unsupported("coffer's secret_ids take their TTL, uses and CIDRs from the role: set them on the role (secret_id_ttl, secret_id_num_uses, secret_id_bound_cidrs)",
			"metadata", "cidr_list", "token_bound_cidrs", "ttl", "num_uses"); err != nil {
			return nil, err
		}
		out, err := rq.call(ctx, pb.AppRoleAuth_GenerateSecretID_FullMethodName, &pb.AuthRoleRequest{Name: name})
		if err != nil {
			return nil, err
		}
		s := out.(*pb.SecretIDResponse)
		return &reply{data: map[string]any{
			"secret_id":          s.GetSecretId(),
			"secret_id_accessor": s.GetSecretIdAccessor(),
			"secret_id_ttl":      s.GetSecretIdTtlSeconds(),
			"secret_id_num_uses": s.GetSecretIdNumUses(),
		}, index: s.GetRaftIndex()}, nil
	case "secret-id-accessor/destroy":
		acc, err := f.str("secret_id_accessor")
		if err != nil {
			return nil, err
		}
		if acc == "" {
			return nil, badRequest("missing secret_id_accessor: give the accessor of the secret_id to destroy")
		}
		return writeRole(ctx, rq, pb.AppRoleAuth_DestroySecretID_FullMethodName, &pb.DestroySecretIDRequest{Name: name, SecretIdAccessor: acc})
	}
	return nil, notFound(rq.path)
}

// appRoleWrite creates a role or replaces its settings (its role_id and
// secret_ids stay). Fields the body leaves out take their defaults.
func appRoleWrite(ctx context.Context, rq *request, name string, f fields) (*reply, error) {
	if v, ok := f["bind_secret_id"]; ok {
		b, err := boolOf("bind_secret_id", v)
		if err != nil {
			return nil, err
		}
		if !b {
			return nil, badRequest("bind_secret_id: coffer's AppRole logins always need a secret_id: leave bind_secret_id out or true")
		}
	}
	if err := f.unsupported("coffer does not do this: leave it out", "role_id", "local_secret_ids", "secret_id_bound_cidrs_from_token"); err != nil {
		return nil, err
	}
	t, err := f.roleToken()
	if err != nil {
		return nil, err
	}
	r := &pb.AppRole{Name: name, Token: t}
	if r.SecretIdTtlSeconds, err = f.ttl("secret_id_ttl"); err != nil {
		return nil, err
	}
	if r.SecretIdNumUses, err = intOf("secret_id_num_uses", f["secret_id_num_uses"]); err != nil {
		return nil, err
	}
	if r.SecretIdBoundCidrs, err = f.list("secret_id_bound_cidrs"); err != nil {
		return nil, err
	}
	return writeRole(ctx, rq, pb.AppRoleAuth_WriteRole_FullMethodName, r)
}

func appRoleDelete(ctx context.Context, rq *request) (*reply, error) {
	name, sub, err := rq.appRolePath()
	if err != nil {
		return nil, err
	}
	if sub != "" {
		return nil, methodNotAllowed()
	}
	return writeRole(ctx, rq, pb.AppRoleAuth_DeleteRole_FullMethodName, &pb.AuthRoleRequest{Name: name})
}

func appRoleLogin(ctx context.Context, rq *request) (*reply, error) {
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	roleID, err := f.str("role_id")
	if err != nil {
		return nil, err
	}
	secretID, err := f.str("secret_id")
	if err != nil {
		return nil, err
	}
	switch {
	case roleID == "":
		return nil, badRequest("missing role_id: give the role's role_id (auth/approle/role/NAME/role-id) and a secret_id")
	case secretID == "":
		return nil, badRequest("missing secret_id: coffer's AppRole logins need one (auth/approle/role/NAME/secret-id makes one)")
	}
	return login(ctx, rq, "approle", map[string]string{"role_id": roleID, "secret_id": secretID})
}

// login runs the Login RPC and answers Vault's envelope with auth set.
// A refusal of the credentials is 400, as Vault answers a bad secret_id
// or JWT (403 is for a token that may not do something).
func login(ctx context.Context, rq *request, method string, data map[string]string) (*reply, error) {
	out, err := rq.call(ctx, pb.Login_Login_FullMethodName, &pb.LoginRequest{Method: method, Data: data})
	if err != nil {
		if isReason(err, pb.ErrorReason_PERMISSION_DENIED) || isReason(err, pb.ErrorReason_UNAUTHENTICATED) {
			st, _ := statusOf(err)
			msgs := []string{st.Message()}
			if method == "approle" {
				msgs = append([]string{"invalid role or secret ID"}, msgs...)
			}
			return nil, &httpError{status: http.StatusBadRequest, msgs: msgs}
		}
		return nil, err
	}
	info := out.(*pb.TokenInfo)
	return &reply{auth: authBlock(info), index: info.GetRaftIndex()}, nil
}

// JWT.

func jwtConfigRead(ctx context.Context, rq *request) (*reply, error) {
	out, err := readRole(ctx, rq, pb.JWTAuth_ReadConfig_FullMethodName, &pb.ReadJWTConfigRequest{})
	if err != nil {
		return nil, err
	}
	c := out.(*pb.JWTConfig)
	return &reply{data: map[string]any{
		"jwks_json":              c.GetJwksJson(),
		"jwks_url":               c.GetJwksUrl(),
		"jwks_ca_pem":            c.GetJwksCaPem(),
		"jwt_validation_pubkeys": nonNil(c.GetPubkeys()),
		"bound_issuer":           c.GetBoundIssuer(),
		"oidc_discovery_url":     "",
		"default_role":           "",
	}}, nil
}

func jwtConfigWrite(ctx context.Context, rq *request) (*reply, error) {
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	if err := f.unsupported("coffer's JWT method verifies tokens with keys it is given: give jwks_url, jwks_json or jwt_validation_pubkeys instead",
		"oidc_discovery_url", "oidc_discovery_ca_pem", "oidc_client_id", "oidc_client_secret", "default_role", "jwks_pairs"); err != nil {
		return nil, err
	}
	c := &pb.JWTConfig{}
	if c.JwksJson, err = f.str("jwks_json"); err != nil {
		return nil, err
	}
	if c.JwksUrl, err = f.str("jwks_url"); err != nil {
		return nil, err
	}
	if c.JwksCaPem, err = f.str("jwks_ca_pem"); err != nil {
		return nil, err
	}
	if c.BoundIssuer, err = f.str("bound_issuer"); err != nil {
		return nil, err
	}
	if c.Pubkeys, err = jwtPubkeys(f["jwt_validation_pubkeys"]); err != nil {
		return nil, err
	}
	return writeRole(ctx, rq, pb.JWTAuth_WriteConfig_FullMethodName, c)
}

// jwtPubkeys reads jwt_validation_pubkeys: a list of PEM keys (a PEM
// block has no commas, but one string holds one key, not a
// comma-separated list).
func jwtPubkeys(v any) ([]string, error) {
	if s, ok := v.(string); ok {
		if strings.TrimSpace(s) == "" {
			return nil, nil
		}
		return []string{s}, nil
	}
	return strList("jwt_validation_pubkeys", v)
}

func jwtRoleRead(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	out, err := readRole(ctx, rq, pb.JWTAuth_ReadRole_FullMethodName, &pb.AuthRoleRequest{Name: name})
	if err != nil {
		return nil, err
	}
	r := out.(*pb.JWTRole)
	claims := map[string]any{}
	for k, v := range r.GetBoundClaims() {
		claims[k] = v
	}
	userClaim := r.GetUserClaim()
	if userClaim == "" {
		userClaim = "sub"
	}
	return &reply{data: roleTokenData(r.GetToken(), map[string]any{
		"role_type":       "jwt",
		"bound_audiences": nonNil(r.GetBoundAudiences()),
		"bound_subject":   r.GetBoundSubject(),
		"bound_claims":    claims,
		"user_claim":      userClaim,
	})}, nil
}

func jwtRoleWrite(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	if rt, err := f.str("role_type"); err != nil {
		return nil, err
	} else if rt != "" && rt != "jwt" {
		return nil, badRequest("role_type %q: coffer's JWT method takes role_type jwt only (no OIDC browser flow)", clip(rt))
	}
	if err := f.unsupported("coffer does not do this: leave it out", "claim_mappings", "groups_claim", "bound_claims_type", "allowed_redirect_uris", "oidc_scopes"); err != nil {
		return nil, err
	}
	t, err := f.roleToken()
	if err != nil {
		return nil, err
	}
	r := &pb.JWTRole{Name: name, Token: t}
	if r.BoundAudiences, err = f.list("bound_audiences"); err != nil {
		return nil, err
	}
	if r.BoundSubject, err = f.str("bound_subject"); err != nil {
		return nil, err
	}
	if r.UserClaim, err = f.str("user_claim"); err != nil {
		return nil, err
	}
	if r.BoundClaims, err = boundClaims(f["bound_claims"]); err != nil {
		return nil, err
	}
	return writeRole(ctx, rq, pb.JWTAuth_WriteRole_FullMethodName, r)
}

// boundClaims reads bound_claims: each claim with one string value (a
// list of one is taken too; coffer matches one value per claim).
func boundClaims(v any) (map[string]string, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, badRequest("bound_claims must be an object of claim names and values, not %s", jsonKindOrValue(v))
	}
	out := make(map[string]string, len(m))
	for k, cv := range m {
		if l, ok := cv.([]any); ok && len(l) == 1 {
			cv = l[0]
		}
		s, ok := cv.(string)
		if !ok {
			return nil, badRequest("bound_claims.%s: coffer matches one string value per claim, not %s", clip(k), jsonKindOrValue(cv))
		}
		out[k] = s
	}
	return out, nil
}

// jwtLogin logs in with a JWT for a role: {role, jwt}. Vault's
// Kubernetes method (auth/kubernetes/login) takes the same body: a pod's
// service-account token is a JWT its cluster's issuer signs, so coffer
// serves that path with its JWT method (the Login RPC with method "jwt"):
// configure auth/jwt/config with the cluster's service-account issuer
// keys (its JWKS) and bound_issuer, and give auth/jwt/role/NAME the
// audiences and the subject (system:serviceaccount:NAMESPACE:NAME) a
// Kubernetes role would bind.
func jwtLogin(ctx context.Context, rq *request) (*reply, error) {
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	role, err := f.str("role")
	if err != nil {
		return nil, err
	}
	jwt, err := f.str("jwt")
	if err != nil {
		return nil, err
	}
	switch {
	case role == "":
		return nil, badRequest("missing role: name the role to log in to (auth/jwt/role/NAME)")
	case jwt == "":
		return nil, badRequest("missing jwt: give the token to log in with")
	}
	return login(ctx, rq, "jwt", map[string]string{"role": role, "jwt": jwt})
}

// Certificates.

func certRoleRead(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	out, err := readRole(ctx, rq, pb.CertAuth_ReadRole_FullMethodName, &pb.AuthRoleRequest{Name: name})
	if err != nil {
		return nil, err
	}
	r := out.(*pb.CertRole)
	return &reply{data: roleTokenData(r.GetToken(), map[string]any{
		"display_name":         r.GetName(),
		"allowed_common_names": nonNil(r.GetAllowedCommonNames()),
		"allowed_dns_sans":     nonNil(r.GetAllowedDnsSans()),
	})}, nil
}

func certRoleWrite(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	if err := f.unsupported("coffer's certificate logins take client certificates of the cluster's CA only: leave it out and name allowed_common_names or allowed_dns_sans",
		"certificate", "allowed_names", "allowed_email_sans", "allowed_uri_sans", "allowed_organizational_units", "required_extensions", "ocsp_enabled"); err != nil {
		return nil, err
	}
	t, err := f.roleToken()
	if err != nil {
		return nil, err
	}
	r := &pb.CertRole{Name: name, Token: t}
	if r.AllowedCommonNames, err = f.list("allowed_common_names"); err != nil {
		return nil, err
	}
	if r.AllowedDnsSans, err = f.list("allowed_dns_sans"); err != nil {
		return nil, err
	}
	return writeRole(ctx, rq, pb.CertAuth_WriteRole_FullMethodName, r)
}

// certLogin logs in with the TLS connection's client certificate: the
// Backend hands the connection's state to the Login RPC as its peer, and
// the certificate method reads the verified certificate there. The body
// may name the role ({"name": ...}).
func certLogin(ctx context.Context, rq *request) (*reply, error) {
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	name, err := f.str("name")
	if err != nil {
		return nil, err
	}
	if rq.caller.TLS == nil || len(rq.caller.TLS.PeerCertificates) == 0 {
		return nil, badRequest("no client certificate: a certificate login needs the TLS connection to present one of the cluster's CA")
	}
	data := map[string]string{}
	if name != "" {
		data["name"] = name
	}
	return login(ctx, rq, "cert", data)
}

// clip cuts a value quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
