package httpapi

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
)

// tokenRoutes serves Vault's token method at auth/token/.
func (h *Handler) tokenRoutes() {
	h.handle("auth/token/create", map[op]endpointFunc{opPost: tokenCreate(false)})
	h.handle("auth/token/create-orphan", map[op]endpointFunc{opPost: tokenCreate(true)})
	h.handle("auth/token/create/*", map[op]endpointFunc{opPost: tokenRoleUnsupported})
	h.handle("auth/token/lookup", map[op]endpointFunc{opPost: tokenLookup(lookupByToken)})
	h.handle("auth/token/lookup-self", map[op]endpointFunc{opGet: tokenLookup(lookupSelf), opPost: tokenLookup(lookupSelf)})
	h.handle("auth/token/lookup-accessor", map[op]endpointFunc{opPost: tokenLookup(lookupByAccessor)})
	h.handle("auth/token/renew", map[op]endpointFunc{opPost: tokenRenew(lookupByToken)})
	h.handle("auth/token/renew-self", map[op]endpointFunc{opPost: tokenRenew(lookupSelf)})
	h.handle("auth/token/renew-accessor", map[op]endpointFunc{opPost: tokenRenew(lookupByAccessor)})
	h.handle("auth/token/revoke", map[op]endpointFunc{opPost: tokenRevoke(lookupByToken)})
	h.handle("auth/token/revoke-self", map[op]endpointFunc{opPost: tokenRevoke(lookupSelf)})
	h.handle("auth/token/revoke-accessor", map[op]endpointFunc{opPost: tokenRevoke(lookupByAccessor)})
	h.handle("auth/token/revoke-orphan", map[op]endpointFunc{opPost: tokenRevokeOrphan})
}

// tokenCreateBody is auth/token/create's body (Vault's fields; TTLs as
// seconds or durations, lists as arrays or comma-separated strings).
type tokenCreateBody struct {
	ID              string            `json:"id"`
	RoleName        string            `json:"role_name"`
	Policies        any               `json:"policies"`
	Meta            map[string]string `json:"meta"`
	NoParent        any               `json:"no_parent"`
	NoDefaultPolicy any               `json:"no_default_policy"`
	Renewable       any               `json:"renewable"`
	Lease           any               `json:"lease"`
	TTL             any               `json:"ttl"`
	Type            string            `json:"type"`
	ExplicitMaxTTL  any               `json:"explicit_max_ttl"`
	DisplayName     string            `json:"display_name"`
	NumUses         any               `json:"num_uses"`
	Period          any               `json:"period"`
	EntityAlias     string            `json:"entity_alias"`
}

// request turns the body into Token.Create's request, refusing what
// coffer does not do rather than ignoring it.
func (b *tokenCreateBody) request(orphan bool) (*pb.CreateTokenRequest, error) {
	switch {
	case b.ID != "":
		return nil, badRequest("coffer makes every token's value itself: leave id out")
	case b.RoleName != "":
		return nil, badRequest("coffer has no token roles: leave role_name out and give the token's policies and TTL")
	case b.EntityAlias != "":
		return nil, badRequest("coffer has no identity entities: leave entity_alias out")
	case len(b.Meta) > 0:
		return nil, badRequest("coffer does not store token metadata: leave meta out (the display_name names a token)")
	}
	req := &pb.CreateTokenRequest{Type: b.Type, DisplayName: b.DisplayName}
	var err error
	if req.Policies, err = strList("policies", b.Policies); err != nil {
		return nil, err
	}
	if req.NoParent, err = boolOf("no_parent", b.NoParent); err != nil {
		return nil, err
	}
	req.NoParent = req.NoParent || orphan
	if req.NoDefaultPolicy, err = boolOf("no_default_policy", b.NoDefaultPolicy); err != nil {
		return nil, err
	}
	if b.Renewable != nil {
		req.RenewableSet = true
		if req.Renewable, err = boolOf("renewable", b.Renewable); err != nil {
			return nil, err
		}
	}
	ttl := b.TTL
	if ttl == nil || ttl == "" {
		ttl = b.Lease // Vault's older name of ttl
	}
	if req.TtlSeconds, err = parseTTL("ttl", ttl); err != nil {
		return nil, err
	}
	if req.ExplicitMaxTtlSeconds, err = parseTTL("explicit_max_ttl", b.ExplicitMaxTTL); err != nil {
		return nil, err
	}
	if req.PeriodSeconds, err = parseTTL("period", b.Period); err != nil {
		return nil, err
	}
	if req.NumUses, err = intOf("num_uses", b.NumUses); err != nil {
		return nil, err
	}
	return req, nil
}

// tokenCreate makes a token (a child of the caller's, or with orphan or
// no_parent an orphan) and answers Vault's auth block.
func tokenCreate(orphan bool) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		var body tokenCreateBody
		if err := rq.decode(&body); err != nil {
			return nil, err
		}
		req, err := body.request(orphan)
		if err != nil {
			return nil, err
		}
		out, err := rq.call(ctx, pb.Token_Create_FullMethodName, req)
		if err != nil {
			return nil, err
		}
		info := out.(*pb.TokenInfo)
		return &reply{auth: authBlock(info), index: info.GetRaftIndex()}, nil
	}
}

func tokenRoleUnsupported(context.Context, *request) (*reply, error) {
	return nil, badRequest("coffer has no token roles: create the token at auth/token/create with its policies and TTL")
}

func tokenRevokeOrphan(context.Context, *request) (*reply, error) {
	return nil, badRequest("coffer revokes a token with its children only: revoke it at auth/token/revoke, or create the children as orphans (auth/token/create-orphan)")
}

// tokenTarget is how a token endpoint names its token.
type tokenTarget int

const (
	lookupSelf       tokenTarget = iota // the caller's own (-self)
	lookupByToken                       // body "token"
	lookupByAccessor                    // body "accessor"
)

// tokenBody is the body of the lookup, renew and revoke endpoints.
type tokenBody struct {
	Token     string `json:"token"`
	Accessor  string `json:"accessor"`
	Increment any    `json:"increment"`
}

// target reads which token the request names: the caller's own for a
// -self endpoint (whatever the body says, as Vault), else the body's
// token or accessor, which must be given.
func (rq *request) target(t tokenTarget) (tokenBody, error) {
	var b tokenBody
	if err := rq.decode(&b); err != nil {
		return b, err
	}
	b.Token, b.Accessor = strings.TrimSpace(b.Token), strings.TrimSpace(b.Accessor)
	switch t {
	case lookupSelf:
		b.Token, b.Accessor = "", ""
	case lookupByToken:
		b.Accessor = ""
		if b.Token == "" {
			return b, badRequest("missing token: give the token in the body ({\"token\": \"...\"}), or use the -self path for your own")
		}
	case lookupByAccessor:
		b.Token = ""
		if b.Accessor == "" {
			return b, badRequest("missing accessor: give the token's accessor in the body ({\"accessor\": \"...\"})")
		}
	}
	return b, nil
}

// tokenLookup answers Vault's description of a token (data).
func tokenLookup(t tokenTarget) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		b, err := rq.target(t)
		if err != nil {
			return nil, err
		}
		out, err := rq.call(ctx, pb.Token_Lookup_FullMethodName, &pb.LookupTokenRequest{Token: b.Token, Accessor: b.Accessor})
		if err != nil {
			return nil, unknownToken(err, t, http.StatusForbidden, "bad token")
		}
		info := out.(*pb.TokenInfo)
		id := ""
		switch t {
		case lookupSelf:
			id = rq.caller.Token
		case lookupByToken:
			id = b.Token
		}
		return &reply{data: lookupData(info, id)}, nil
	}
}

// lookupData is Vault's lookup answer. id is the token itself ("" when
// it was looked up by its accessor).
func lookupData(t *pb.TokenInfo, id string) map[string]any {
	var expire any // null for a token that never expires
	if t.GetExpireTimeUnix() != 0 {
		expire = time.Unix(t.GetExpireTimeUnix(), 0).UTC().Format(time.RFC3339)
	}
	created := time.Unix(t.GetCreationTimeUnix(), 0).UTC()
	d := map[string]any{
		"accessor":         t.GetAccessor(),
		"creation_time":    t.GetCreationTimeUnix(),
		"creation_ttl":     t.GetCreationTtlSeconds(),
		"display_name":     t.GetDisplayName(),
		"entity_id":        "",
		"expire_time":      expire,
		"explicit_max_ttl": t.GetExplicitMaxTtlSeconds(),
		"id":               id,
		"issue_time":       created.Format(time.RFC3339),
		"meta":             nil,
		"num_uses":         t.GetNumUses(),
		"orphan":           t.GetOrphan(),
		"path":             tokenPath(t),
		"policies":         nonNil(t.GetPolicies()),
		"renewable":        t.GetRenewable(),
		"ttl":              t.GetTtlSeconds(),
		"type":             t.GetType(),
	}
	if t.GetPeriodSeconds() != 0 {
		d["period"] = t.GetPeriodSeconds()
	}
	if len(t.GetBoundCidrs()) > 0 {
		d["bound_cidrs"] = t.GetBoundCidrs()
	}
	return d
}

// tokenPath is the path a token was made at, as Vault's lookup names it:
// the login method's from the display name a login gives
// ("approle-NAME"), auth/token/root for a root token of the
// initialisation or generate-root, auth/token/create otherwise.
func tokenPath(t *pb.TokenInfo) string {
	name := t.GetDisplayName()
	for _, m := range []string{"approle", "jwt", "cert"} {
		if strings.HasPrefix(name, m+"-") {
			return "auth/" + m + "/login"
		}
	}
	if !strings.HasPrefix(name, "token") && slices.Contains(t.GetPolicies(), "root") {
		return "auth/token/root"
	}
	return "auth/token/create"
}

// tokenRenew extends a token's TTL and answers Vault's auth block.
func tokenRenew(t tokenTarget) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		b, err := rq.target(t)
		if err != nil {
			return nil, err
		}
		inc, err := parseTTL("increment", b.Increment)
		if err != nil {
			return nil, err
		}
		out, err := rq.call(ctx, pb.Token_Renew_FullMethodName, &pb.RenewTokenRequest{Token: b.Token, Accessor: b.Accessor, IncrementSeconds: inc})
		if err != nil {
			return nil, unknownToken(err, t, http.StatusBadRequest, "invalid token")
		}
		info := out.(*pb.TokenInfo)
		if info.GetToken() == "" {
			switch t {
			case lookupSelf:
				info.Token = rq.caller.Token
			case lookupByToken:
				info.Token = b.Token
			}
		}
		return &reply{auth: authBlock(info), index: info.GetRaftIndex()}, nil
	}
}

// unknownToken is Vault's answer when the token or accessor a request
// names does not exist: for a token, status with msg ("bad token" 403 for
// a lookup, "invalid token" 400 otherwise); for an accessor, 400 "invalid
// accessor". Other errors pass unchanged.
func unknownToken(err error, t tokenTarget, status int, msg string) error {
	if t == lookupSelf || !isReason(err, pb.ErrorReason_NOT_FOUND) {
		return err
	}
	st, _ := statusOf(err)
	if t == lookupByAccessor {
		return &httpError{status: http.StatusBadRequest, msgs: []string{"invalid accessor", st.Message()}}
	}
	return &httpError{status: status, msgs: []string{msg, st.Message()}}
}

// tokenRevoke revokes a token and its children: 204.
func tokenRevoke(t tokenTarget) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		b, err := rq.target(t)
		if err != nil {
			return nil, err
		}
		out, err := rq.call(ctx, pb.Token_Revoke_FullMethodName, &pb.RevokeTokenRequest{Token: b.Token, Accessor: b.Accessor})
		if err != nil {
			return nil, unknownToken(err, t, http.StatusBadRequest, "invalid token")
		}
		return indexed(out.(*pb.RevokeTokenResponse).GetRaftIndex()), nil
	}
}
