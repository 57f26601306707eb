package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
)

// databaseRoutes serves the PostgreSQL secrets engine at Vault's
// database/ paths and the leases at sys/leases/, so that `vault read
// database/creds/app` and `vault lease renew` work unchanged.
func (h *Handler) databaseRoutes() {
	list := func(method string) map[op]endpointFunc {
		return map[op]endpointFunc{opList: dbList(method)}
	}
	h.handle("database/config", list(pb.Database_ListConfigs_FullMethodName))
	h.handle("database/config/", list(pb.Database_ListConfigs_FullMethodName))
	h.handle("database/config/*", map[op]endpointFunc{opGet: dbConfigRead, opPost: dbConfigWrite, opDelete: dbNamed(pb.Database_DeleteConfig_FullMethodName)})
	h.handle("database/rotate-root/*", map[op]endpointFunc{opPost: dbNamed(pb.Database_RotateRoot_FullMethodName)})
	h.handle("database/roles", list(pb.Database_ListRoles_FullMethodName))
	h.handle("database/roles/", list(pb.Database_ListRoles_FullMethodName))
	h.handle("database/roles/*", map[op]endpointFunc{opGet: dbRoleRead, opPost: dbRoleWrite, opDelete: dbNamed(pb.Database_DeleteRole_FullMethodName)})
	h.handle("database/creds/*", map[op]endpointFunc{opGet: dbCreds})
	h.handle("database/static-roles", list(pb.Database_ListStaticRoles_FullMethodName))
	h.handle("database/static-roles/", list(pb.Database_ListStaticRoles_FullMethodName))
	h.handle("database/static-roles/*", map[op]endpointFunc{opGet: dbStaticRoleRead, opPost: dbStaticRoleWrite, opDelete: dbNamed(pb.Database_DeleteStaticRole_FullMethodName)})
	h.handle("database/static-creds/*", map[op]endpointFunc{opGet: dbStaticCreds})
	h.handle("database/rotate-role/*", map[op]endpointFunc{opPost: dbNamed(pb.Database_RotateRole_FullMethodName)})

	h.handle("sys/leases/lookup", map[op]endpointFunc{opPost: leaseLookup})
	h.handle("sys/leases/lookup/*", map[op]endpointFunc{opList: leaseList})
	h.handle("sys/leases/renew", map[op]endpointFunc{opPost: leaseRenew})
	h.handle("sys/leases/renew/*", map[op]endpointFunc{opPost: leaseRenew})
	h.handle("sys/leases/revoke", map[op]endpointFunc{opPost: leaseRevoke})
	h.handle("sys/leases/revoke/*", map[op]endpointFunc{opPost: leaseRevoke})
	h.handle("sys/leases/revoke-prefix/*", map[op]endpointFunc{opPost: leaseRevokePrefix(pb.Lease_RevokePrefix_FullMethodName)})
	h.handle("sys/leases/revoke-force/*", map[op]endpointFunc{opPost: leaseRevokePrefix(pb.Lease_RevokeForce_FullMethodName)})
}

// dbList answers the names of connections or roles (data.keys).
func dbList(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		out, err := rq.call(ctx, method, &pb.DatabaseListRequest{})
		if err != nil {
			return nil, err
		}
		return keysReply(out.(*pb.DatabaseListResponse).GetNames())
	}
}

// dbWrite calls a method that writes and answers 204 with its index, or
// 200 with Vault's warnings when it has any; a deletion of nothing is 204.
func dbWrite(ctx context.Context, rq *request, method string, req proto.Message) (*reply, error) {
	out, err := rq.call(ctx, method, req)
	if err != nil {
		if rq.op == opDelete && isReason(err, pb.ErrorReason_NOT_FOUND) {
			return noContent(), nil
		}
		return nil, err
	}
	w := out.(*pb.DatabaseWriteResponse)
	if len(w.GetWarnings()) > 0 {
		return &reply{data: map[string]any{}, warnings: w.GetWarnings(), index: w.GetRaftIndex()}, nil
	}
	return indexed(w.GetRaftIndex()), nil
}

// dbNamed is an operation on the one name the path ends with (delete,
// rotate-root, rotate-role).
func dbNamed(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		name, err := rq.roleName()
		if err != nil {
			return nil, err
		}
		return dbWrite(ctx, rq, method, &pb.DatabaseNameRequest{Name: name})
	}
}

// statements reads SQL statements as Vault's database engine takes them:
// a JSON array of strings, a string holding a JSON array, a base64
// string, or one string (never split on commas: SQL has commas).
func statements(field string, v any) ([]string, error) {
	switch t := v.(type) {
	case nil:
		return nil, nil
	case []any:
		return strList(field, t)
	case string:
		s := strings.TrimSpace(t)
		if s == "" {
			return nil, nil
		}
		if strings.HasPrefix(s, "[") {
			var l []string
			if err := json.Unmarshal([]byte(s), &l); err == nil {
				return strList(field, anyList(l))
			}
		}
		if b, err := base64.StdEncoding.DecodeString(s); err == nil && utf8.Valid(b) && len(b) > 0 {
			return []string{string(b)}, nil
		}
		return []string{s}, nil
	}
	return nil, badRequest("%s must be a string or a list of strings, not %s", field, jsonKindOrValue(v))
}

func anyList(l []string) []any {
	out := make([]any, len(l))
	for i, s := range l {
		out[i] = s
	}
	return out
}

// dbRead reads the connection or role the path names (404 with no
// message when there is none, as Vault).
func dbRead(ctx context.Context, rq *request, method string) (proto.Message, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	return readRole(ctx, rq, method, &pb.DatabaseNameRequest{Name: name})
}

// Connections.

func dbConfigWrite(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	c := &pb.DatabaseConfig{Name: name}
	for field, dst := range map[string]*string{"plugin_name": &c.PluginName, "connection_url": &c.ConnectionUrl, "username": &c.Username, "password": &c.Password, "password_policy": &c.PasswordPolicy} {
		if *dst, err = f.str(field); err != nil {
			return nil, err
		}
	}
	if c.AllowedRoles, err = f.list("allowed_roles"); err != nil {
		return nil, err
	}
	if c.RootRotationStatements, err = statements("root_rotation_statements", f["root_rotation_statements"]); err != nil {
		return nil, err
	}
	for field, dst := range map[string]*int32{"max_open_connections": &c.MaxOpenConnections, "max_idle_connections": &c.MaxIdleConnections} {
		n, err := intOf(field, f[field])
		if err != nil {
			return nil, err
		}
		if n < 0 || n > 1<<20 {
			return nil, badRequest("%s must be between 0 and %d", field, 1<<20)
		}
		*dst = int32(n)
	}
	if c.MaxConnectionLifetimeSeconds, err = f.ttl("max_connection_lifetime"); err != nil {
		return nil, err
	}
	if v, ok := f["verify_connection"]; ok {
		b, err := boolOf("verify_connection", v)
		if err != nil {
			return nil, err
		}
		c.VerifyConnection = &b
	}
	return dbWrite(ctx, rq, pb.Database_WriteConfig_FullMethodName, c)
}

func dbConfigRead(ctx context.Context, rq *request) (*reply, error) {
	out, err := dbRead(ctx, rq, pb.Database_ReadConfig_FullMethodName)
	if err != nil {
		return nil, err
	}
	c := out.(*pb.DatabaseConfig)
	return &reply{data: map[string]any{
		"plugin_name": c.GetPluginName(),
		"connection_details": map[string]any{
			"connection_url":          c.GetConnectionUrl(),
			"username":                c.GetUsername(),
			"max_open_connections":    c.GetMaxOpenConnections(),
			"max_idle_connections":    c.GetMaxIdleConnections(),
			"max_connection_lifetime": (time.Duration(c.GetMaxConnectionLifetimeSeconds()) * time.Second).String(),
		},
		"allowed_roles":                      nonNil(c.GetAllowedRoles()),
		"root_credentials_rotate_statements": nonNil(c.GetRootRotationStatements()),
		"password_policy":                    c.GetPasswordPolicy(),
		"verify_connection":                  c.GetVerifyConnection(),
		"plugin_version":                     "",
	}, meta: nil}, nil
}

// Dynamic roles.

func dbRoleWrite(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	r := &pb.DatabaseRole{Name: name}
	if r.DbName, err = f.str("db_name"); err != nil {
		return nil, err
	}
	for field, dst := range map[string]*[]string{"creation_statements": &r.CreationStatements, "revocation_statements": &r.RevocationStatements, "renew_statements": &r.RenewStatements, "rollback_statements": &r.RollbackStatements} {
		if *dst, err = statements(field, f[field]); err != nil {
			return nil, err
		}
	}
	if r.DefaultTtlSeconds, err = f.ttl("default_ttl"); err != nil {
		return nil, err
	}
	if r.MaxTtlSeconds, err = f.ttl("max_ttl"); err != nil {
		return nil, err
	}
	if r.MaxLeases, err = intOf("max_leases", f["max_leases"]); err != nil {
		return nil, err
	}
	return dbWrite(ctx, rq, pb.Database_WriteRole_FullMethodName, r)
}

func dbRoleRead(ctx context.Context, rq *request) (*reply, error) {
	out, err := dbRead(ctx, rq, pb.Database_ReadRole_FullMethodName)
	if err != nil {
		return nil, err
	}
	r := out.(*pb.DatabaseRole)
	return &reply{data: map[string]any{
		"db_name":               r.GetDbName(),
		"creation_statements":   nonNil(r.GetCreationStatements()),
		"revocation_statements": nonNil(r.GetRevocationStatements()),
		"renew_statements":      nonNil(r.GetRenewStatements()),
		"rollback_statements":   nonNil(r.GetRollbackStatements()),
		"default_ttl":           r.GetDefaultTtlSeconds(),
		"max_ttl":               r.GetMaxTtlSeconds(),
		"max_leases":            r.GetMaxLeases(),
		"credential_type":       "password",
	}}, nil
}

func dbCreds(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.Database_Creds_FullMethodName, &pb.DatabaseNameRequest{Name: name})
	if err != nil {
		return nil, err
	}
	c := out.(*pb.DatabaseCreds)
	return &reply{
		data:    map[string]any{"username": c.GetUsername(), "password": c.GetPassword()},
		leaseID: c.GetLeaseId(), leaseDuration: c.GetLeaseDurationSeconds(), renewable: c.GetRenewable(),
		mountType: "database",
	}, nil
}

// Static roles.

func dbStaticRoleWrite(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	f, err := rq.fields()
	if err != nil {
		return nil, err
	}
	if err := f.unsupported("coffer rotates static roles by rotation_period: leave it out", "rotation_schedule", "rotation_window", "credential_type", "self_managed_password"); err != nil {
		return nil, err
	}
	r := &pb.DatabaseStaticRole{Name: name}
	if r.DbName, err = f.str("db_name"); err != nil {
		return nil, err
	}
	if r.Username, err = f.str("username"); err != nil {
		return nil, err
	}
	if r.RotationPeriodSeconds, err = f.ttl("rotation_period"); err != nil {
		return nil, err
	}
	if r.RotationStatements, err = statements("rotation_statements", f["rotation_statements"]); err != nil {
		return nil, err
	}
	return dbWrite(ctx, rq, pb.Database_WriteStaticRole_FullMethodName, r)
}

func dbStaticRoleRead(ctx context.Context, rq *request) (*reply, error) {
	out, err := dbRead(ctx, rq, pb.Database_ReadStaticRole_FullMethodName)
	if err != nil {
		return nil, err
	}
	r := out.(*pb.DatabaseStaticRole)
	return &reply{data: map[string]any{
		"db_name":             r.GetDbName(),
		"username":            r.GetUsername(),
		"rotation_period":     r.GetRotationPeriodSeconds(),
		"rotation_statements": nonNil(r.GetRotationStatements()),
		"last_vault_rotation": vaultTime(r.GetLastVaultRotationUnixNano()),
		"ttl":                 r.GetTtlSeconds(),
		"credential_type":     "password",
	}}, nil
}

func dbStaticCreds(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.roleName()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.Database_StaticCreds_FullMethodName, &pb.DatabaseNameRequest{Name: name})
	if err != nil {
		return nil, err
	}
	c := out.(*pb.DatabaseStaticCreds)
	return &reply{data: map[string]any{
		"username":            c.GetUsername(),
		"password":            c.GetPassword(),
		"last_vault_rotation": vaultTime(c.GetLastVaultRotationUnixNano()),
		"ttl":                 c.GetTtlSeconds(),
		"rotation_period":     c.GetRotationPeriodSeconds(),
	}, mountType: "database"}, nil
}

// vaultTime is a time as Vault's JSON writes it (RFC 3339 with
// nanoseconds); zero is null.
func vaultTime(ns int64) any {
	if ns == 0 {
		return nil
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// Leases.

// leaseID is the lease a sys/leases call names: in the path after the
// endpoint (sys/leases/renew/ID) or as lease_id in the body (also "url_lease_id").
func (rq *request) leaseID() (string, fields, error) {
	f, err := rq.fields()
	if err != nil {
		return "", nil, err
	}
	id := strings.TrimSuffix(rq.rest, "/")
	if id == "" {
		_, v := f.get("lease_id", "url_lease_id")
		s, ok := v.(string)
		if v != nil && !ok {
			return "", nil, badRequest("lease_id must be a string, not %s", jsonKindOrValue(v))
		}
		id = s
	}
	if id == "" {
		return "", nil, badRequest("missing lease_id: give the id of the lease")
	}
	return id, f, nil
}

func leaseData(l *pb.LeaseInfo) map[string]any {
	return map[string]any{
		"id":              l.GetId(),
		"issue_time":      vaultTime(l.GetIssueTimeUnixNano()),
		"expire_time":     vaultTime(l.GetExpireTimeUnixNano()),
		"last_renewal":    vaultTime(l.GetLastRenewalUnixNano()),
		"renewable":       l.GetRenewable(),
		"ttl":             l.GetTtlSeconds(),
		"max_expire_time": vaultTime(l.GetMaxExpireTimeUnixNano()),
		"state":           l.GetState(),
		"attempts":        l.GetAttempts(),
		"last_error":      l.GetLastError(),
	}
}

func leaseLookup(ctx context.Context, rq *request) (*reply, error) {
	id, _, err := rq.leaseID()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.Lease_Lookup_FullMethodName, &pb.LeaseRequest{LeaseId: id})
	if err != nil {
		return nil, err
	}
	return &reply{data: leaseData(out.(*pb.LeaseInfo))}, nil
}

// leaseRenew answers as Vault: the envelope's lease_id, lease_duration
// and renewable, no data.
func leaseRenew(ctx context.Context, rq *request) (*reply, error) {
	id, f, err := rq.leaseID()
	if err != nil {
		return nil, err
	}
	inc, err := f.ttl("increment")
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.Lease_Renew_FullMethodName, &pb.LeaseRenewRequest{LeaseId: id, IncrementSeconds: inc})
	if err != nil {
		return nil, err
	}
	l := out.(*pb.LeaseInfo)
	return &reply{data: nil, leaseOnly: true, leaseID: l.GetId(), leaseDuration: l.GetTtlSeconds(), renewable: l.GetRenewable(), warnings: l.GetWarnings()}, nil
}

func leaseRevoke(ctx context.Context, rq *request) (*reply, error) {
	id, _, err := rq.leaseID()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.Lease_Revoke_FullMethodName, &pb.LeaseRequest{LeaseId: id})
	if err != nil {
		return nil, err
	}
	if w := out.(*pb.LeaseRevokeResponse).GetWarnings(); len(w) > 0 {
		return &reply{data: map[string]any{}, warnings: w}, nil
	}
	return noContent(), nil
}

// leaseRevokePrefix serves revoke-prefix and revoke-force (method): 204,
// or 200 with the warnings.
func leaseRevokePrefix(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		prefix := rq.rest
		if prefix == "" {
			return nil, badRequest("name a prefix: %sPREFIX", strings.TrimSuffix(rq.path, rq.rest))
		}
		out, err := rq.call(ctx, method, &pb.LeasePrefixRequest{Prefix: prefix})
		if err != nil {
			return nil, err
		}
		if w := out.(*pb.LeaseRevokeResponse).GetWarnings(); len(w) > 0 {
			return &reply{data: map[string]any{}, warnings: w}, nil
		}
		return noContent(), nil
	}
}

// leaseList answers, as Vault, the next path element of every lease under
// the prefix: lease ids' last parts, and "name/" for what lies deeper.
func leaseList(ctx context.Context, rq *request) (*reply, error) {
	prefix := rq.rest
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	seen := map[string]bool{}
	var keys []string
	after := ""
	for pages := 0; ; pages++ {
		if pages >= maxLeaseListPages {
			return nil, &httpError{status: http.StatusBadRequest, msgs: []string{"too many leases under " + prefix + ": list a longer prefix, or page with coffer lease list"}}
		}
		out, err := rq.call(ctx, pb.Lease_List_FullMethodName, &pb.LeaseListRequest{Prefix: prefix, After: after})
		if err != nil {
			return nil, err
		}
		l := out.(*pb.LeaseListResponse)
		for _, info := range l.GetLeases() {
			after = info.GetId()
			k := strings.TrimPrefix(info.GetId(), prefix)
			if i := strings.IndexByte(k, '/'); i >= 0 {
				k = k[:i+1]
			}
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
		if !l.GetMore() || len(l.GetLeases()) == 0 {
			break
		}
	}
	return keysReply(keys)
}

// maxLeaseListPages bounds one LIST of sys/leases/lookup/: the answer is
// held whole in memory.
const maxLeaseListPages = 64
