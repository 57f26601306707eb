package route

import (
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
)

// table is every method a node serves. The policy paths are the ones
// Vault's HTTP API uses for the same operation, so that Vault policies
// apply unchanged (docs/ROUTES.md lists them).
var table = []Route{
	// KV: secrets of the KV version 2 mount.
	{Method: pb.KV_Put_FullMethodName, Leader: true, Idempotent: true, Policy: kv("data", Create|Update)},
	{Method: pb.KV_Get_FullMethodName, Policy: kvGet},
	{Method: pb.KV_Patch_FullMethodName, Leader: true, Idempotent: true, Policy: kv("data", Patch)},
	{Method: pb.KV_List_FullMethodName, Policy: kvList},
	{Method: pb.KV_Delete_FullMethodName, Leader: true, Idempotent: true, Policy: kvDelete},
	{Method: pb.KV_Undelete_FullMethodName, Leader: true, Idempotent: true, Policy: kv("undelete", Update)},
	{Method: pb.KV_Destroy_FullMethodName, Leader: true, Idempotent: true, Policy: kv("destroy", Update)},
	{Method: pb.KV_ReadMetadata_FullMethodName, Policy: kv("metadata", Read)},
	{Method: pb.KV_WriteMetadata_FullMethodName, Leader: true, Idempotent: true, Policy: kv("metadata", Create|Update)},
	{Method: pb.KV_PatchMetadata_FullMethodName, Leader: true, Idempotent: true, Policy: kv("metadata", Patch)},
	{Method: pb.KV_DeleteMetadata_FullMethodName, Leader: true, Idempotent: true, Policy: kv("metadata", Delete)},
	{Method: pb.KV_Watch_FullMethodName, Policy: kvList},
	{Method: pb.KV_ReadConfig_FullMethodName, Policy: kvConfig(Read)},
	{Method: pb.KV_WriteConfig_FullMethodName, Leader: true, Idempotent: true, Policy: kvConfig(Update)},

	// Sys: seal, keys, status.
	{Method: pb.Sys_Init_FullMethodName, Access: Public, Leader: true, ClientCert: true},
	{Method: pb.Sys_Unseal_FullMethodName, Access: Public},
	{Method: pb.Sys_Status_FullMethodName, Access: Public},
	{Method: pb.Sys_Seal_FullMethodName, Policy: fixed("sys/seal", Update|Sudo)},
	{Method: pb.Sys_Rotate_FullMethodName, Leader: true, Policy: fixed("sys/rotate", Update|Sudo)},
	{Method: pb.Sys_AuditHash_FullMethodName, Policy: auditHash},
	// Unauthenticated as in Vault (the shares are the credential), but on
	// a node with TLS only for holders of a certificate of the CA.
	{Method: pb.Sys_GenerateRoot_FullMethodName, Access: Public, Leader: true, ClientCert: true},
	// Rekey likewise: the current shares are the credential.
	{Method: pb.Sys_Rekey_FullMethodName, Access: Public, Leader: true, ClientCert: true},
	{Method: pb.Sys_Mounts_FullMethodName, Policy: mounts},
	// Every node answers its own metrics, sealed or not: never forwarded.
	{Method: pb.Sys_Metrics_FullMethodName, Policy: fixed("sys/metrics", Read)},

	// Operator: membership and snapshots.
	{Method: pb.Operator_Members_FullMethodName, Policy: fixed("sys/ha-status", Read|Sudo)},
	{Method: pb.Operator_ListPeers_FullMethodName, Policy: fixed("sys/storage/raft/configuration", Read|Sudo)},
	{Method: pb.Operator_RemovePeer_FullMethodName, Leader: true, Policy: fixed("sys/storage/raft/remove-peer", Update|Sudo)},
	{Method: pb.Operator_StepDown_FullMethodName, Leader: true, Policy: fixed("sys/step-down", Update|Sudo)},
	{Method: pb.Operator_SnapshotSave_FullMethodName, Policy: fixed("sys/storage/raft/snapshot", Read|Sudo)},
	{Method: pb.Operator_SnapshotRestore_FullMethodName, Policy: fixed("sys/storage/raft/snapshot", Update|Sudo)},

	// Policy: ACL policies, at Vault's sys/policies/acl paths.
	{Method: pb.Policy_Write_FullMethodName, Leader: true, Policy: named("sys/policies/acl/", "", Create|Update)},
	{Method: pb.Policy_Read_FullMethodName, Consistent: true, Policy: named("sys/policies/acl/", "", Read)},
	{Method: pb.Policy_List_FullMethodName, Consistent: true, Policy: fixed("sys/policies/acl", List)},
	{Method: pb.Policy_Delete_FullMethodName, Leader: true, Policy: named("sys/policies/acl/", "", Delete)},

	// Token: at Vault's auth/token paths; a call about the caller's own
	// token uses the -self path (which the default policy grants).
	{Method: pb.Token_Create_FullMethodName, Leader: true, Local: batchToken, Policy: tokenCreate},
	{Method: pb.Token_Lookup_FullMethodName, Consistent: true, Policy: tokenSelf("lookup", Read)},
	{Method: pb.Token_Renew_FullMethodName, Leader: true, Policy: tokenSelf("renew", Update)},
	{Method: pb.Token_Revoke_FullMethodName, Leader: true, Policy: tokenSelf("revoke", Update)},
	{Method: pb.Token_Capabilities_FullMethodName, Policy: capabilities},

	// Login: credentials for a token, without one. Any node serves a
	// login that writes nothing; the handler forwards one that writes (a
	// service token, a use of a secret_id) to the leader.
	{Method: pb.Login_Login_FullMethodName, Access: Login, Policy: loginPath},

	// Login methods' roles, at Vault's auth/<method>/... paths.
	{Method: pb.AppRoleAuth_WriteRole_FullMethodName, Leader: true, Policy: named("auth/approle/role/", "", Create|Update)},
	{Method: pb.AppRoleAuth_ReadRole_FullMethodName, Consistent: true, Policy: named("auth/approle/role/", "", Read)},
	{Method: pb.AppRoleAuth_ListRoles_FullMethodName, Consistent: true, Policy: fixed("auth/approle/role", List)},
	{Method: pb.AppRoleAuth_DeleteRole_FullMethodName, Leader: true, Policy: named("auth/approle/role/", "", Delete)},
	{Method: pb.AppRoleAuth_ReadRoleID_FullMethodName, Consistent: true, Policy: named("auth/approle/role/", "/role-id", Read)},
	{Method: pb.AppRoleAuth_GenerateSecretID_FullMethodName, Leader: true, Policy: named("auth/approle/role/", "/secret-id", Update)},
	{Method: pb.AppRoleAuth_DestroySecretID_FullMethodName, Leader: true, Policy: named("auth/approle/role/", "/secret-id-accessor/destroy", Update)},
	{Method: pb.JWTAuth_WriteConfig_FullMethodName, Leader: true, Policy: fixed("auth/jwt/config", Update)},
	{Method: pb.JWTAuth_ReadConfig_FullMethodName, Consistent: true, Policy: fixed("auth/jwt/config", Read)},
	{Method: pb.JWTAuth_WriteRole_FullMethodName, Leader: true, Policy: named("auth/jwt/role/", "", Create|Update)},
	{Method: pb.JWTAuth_ReadRole_FullMethodName, Consistent: true, Policy: named("auth/jwt/role/", "", Read)},
	{Method: pb.JWTAuth_ListRoles_FullMethodName, Consistent: true, Policy: fixed("auth/jwt/role", List)},
	{Method: pb.JWTAuth_DeleteRole_FullMethodName, Leader: true, Policy: named("auth/jwt/role/", "", Delete)},
	{Method: pb.CertAuth_WriteRole_FullMethodName, Leader: true, Policy: named("auth/cert/certs/", "", Create|Update)},
	{Method: pb.CertAuth_ReadRole_FullMethodName, Consistent: true, Policy: named("auth/cert/certs/", "", Read)},
	{Method: pb.CertAuth_ListRoles_FullMethodName, Consistent: true, Policy: fixed("auth/cert/certs", List)},
	{Method: pb.CertAuth_DeleteRole_FullMethodName, Leader: true, Policy: named("auth/cert/certs/", "", Delete)},

	// Database: the PostgreSQL secrets engine, at Vault's database/ paths.
	// Issuing and rotating write (intents, leases, passwords) and talk to
	// the database: the leader does both.
	{Method: pb.Database_WriteConfig_FullMethodName, Leader: true, Policy: named("database/config/", "", Create|Update)},
	{Method: pb.Database_ReadConfig_FullMethodName, Consistent: true, Policy: named("database/config/", "", Read)},
	{Method: pb.Database_ListConfigs_FullMethodName, Consistent: true, Policy: fixed("database/config", List)},
	{Method: pb.Database_DeleteConfig_FullMethodName, Leader: true, Policy: named("database/config/", "", Delete)},
	{Method: pb.Database_RotateRoot_FullMethodName, Leader: true, Policy: named("database/rotate-root/", "", Update)},
	{Method: pb.Database_WriteRole_FullMethodName, Leader: true, Policy: named("database/roles/", "", Create|Update)},
	{Method: pb.Database_ReadRole_FullMethodName, Consistent: true, Policy: named("database/roles/", "", Read)},
	{Method: pb.Database_ListRoles_FullMethodName, Consistent: true, Policy: fixed("database/roles", List)},
	{Method: pb.Database_DeleteRole_FullMethodName, Leader: true, Policy: named("database/roles/", "", Delete)},
	{Method: pb.Database_Creds_FullMethodName, Leader: true, Policy: named("database/creds/", "", Read)},
	{Method: pb.Database_WriteStaticRole_FullMethodName, Leader: true, Policy: named("database/static-roles/", "", Create|Update)},
	{Method: pb.Database_ReadStaticRole_FullMethodName, Consistent: true, Policy: named("database/static-roles/", "", Read)},
	{Method: pb.Database_ListStaticRoles_FullMethodName, Consistent: true, Policy: fixed("database/static-roles", List)},
	{Method: pb.Database_DeleteStaticRole_FullMethodName, Leader: true, Policy: named("database/static-roles/", "", Delete)},
	{Method: pb.Database_StaticCreds_FullMethodName, Leader: true, Policy: named("database/static-creds/", "", Read)},
	{Method: pb.Database_RotateRole_FullMethodName, Leader: true, Policy: named("database/rotate-role/", "", Update)},

	// Lease: the leases of dynamic secrets, at Vault's sys/leases paths.
	{Method: pb.Lease_Lookup_FullMethodName, Consistent: true, Policy: fixed("sys/leases/lookup", Update)},
	{Method: pb.Lease_Renew_FullMethodName, Leader: true, Policy: fixed("sys/leases/renew", Update)},
	{Method: pb.Lease_Revoke_FullMethodName, Leader: true, Policy: fixed("sys/leases/revoke", Update)},
	{Method: pb.Lease_RevokeForce_FullMethodName, Leader: true, Policy: leasePrefix("sys/leases/revoke-force/", Update|Sudo)},
	{Method: pb.Lease_RevokePrefix_FullMethodName, Leader: true, Policy: leasePrefix("sys/leases/revoke-prefix/", Update|Sudo)},
	{Method: pb.Lease_List_FullMethodName, Consistent: true, Policy: leaseList},

	// Cluster: node to node.
	{Method: pb.Cluster_ReadIndex_FullMethodName, Access: Peer},

	// gRPC's own services.
	{Method: healthpb.Health_Check_FullMethodName, Access: Public},
	{Method: healthpb.Health_Watch_FullMethodName, Access: Public},
	{Method: healthpb.Health_List_FullMethodName, Access: Public},
	{Method: reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName, Access: Public},
	{Method: reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName, Access: Public},
}

// pather is a request that names a secret or a prefix.
type pather interface{ GetPath() string }

// prefixer is a watch request.
type prefixer interface{ GetPrefix() string }

// kv maps a KV request on MOUNT/rest to Vault's MOUNT/<kind>/rest.
func kv(kind string, need Capability) func(proto.Message) (string, Capability) {
	return func(req proto.Message) (string, Capability) {
		return KVPolicyPath(requestPath(req), kind), need
	}
}

// kvGet: a read of a version's keys without values is a read of
// subkeys/ (Vault's KV v2), any other a read of data/.
func kvGet(req proto.Message) (string, Capability) {
	if r, ok := req.(*pb.GetRequest); ok && r.GetSubkeys() {
		return KVPolicyPath(r.GetPath(), "subkeys"), Read
	}
	return KVPolicyPath(requestPath(req), "data"), Read
}

// kvConfig is a route on a KV mount's configuration, MOUNT/config.
func kvConfig(need Capability) func(proto.Message) (string, Capability) {
	return func(req proto.Message) (string, Capability) {
		m, _ := req.(interface{ GetMount() string })
		mount := ""
		if m != nil {
			mount = strings.TrimSuffix(m.GetMount(), "/")
		}
		if mount == "" {
			mount = "secret"
		}
		return mount + "/config", need
	}
}

// kvList: a list is on the folder's metadata path with a trailing slash,
// as Vault's HTTP API makes it (LIST secret/metadata/app/).
func kvList(req proto.Message) (string, Capability) {
	path := requestPath(req)
	if path == "" {
		path = "secret" // the default mount, as the handlers take it
	}
	p := KVPolicyPath(path, "metadata")
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, List
}

// kvDelete: deleting the current version is DELETE on data/; deleting
// given versions is an update of delete/ (as in Vault's KV v2).
func kvDelete(req proto.Message) (string, Capability) {
	if r, ok := req.(*pb.VersionsRequest); ok && len(r.GetVersions()) > 0 {
		return KVPolicyPath(r.GetPath(), "delete"), Update
	}
	return KVPolicyPath(requestPath(req), "data"), Delete
}

// tokenCreate: an orphan needs auth/token/create-orphan, and a periodic
// token (which can live for ever) sudo too, as in Vault.
func tokenCreate(req proto.Message) (string, Capability) {
	r, _ := req.(*pb.CreateTokenRequest)
	need := Update
	if r.GetPeriodSeconds() != 0 {
		need |= Sudo
	}
	if r.GetNoParent() {
		return "auth/token/create-orphan", need
	}
	return "auth/token/create", need
}

// batchToken: creating a batch token writes nothing, so any node does it.
func batchToken(req proto.Message) bool {
	r, ok := req.(*pb.CreateTokenRequest)
	return ok && r.GetType() == "batch"
}

// tokenSelf maps a call about a token to auth/token/OP-self (the caller's
// own token; selfNeed), auth/token/OP-accessor or auth/token/OP (update).
func tokenSelf(op string, selfNeed Capability) func(proto.Message) (string, Capability) {
	return func(req proto.Message) (string, Capability) {
		r, _ := req.(interface {
			GetToken() string
			GetAccessor() string
		})
		switch {
		case r == nil || (r.GetToken() == "" && r.GetAccessor() == ""):
			return "auth/token/" + op + "-self", selfNeed
		case r.GetAccessor() != "":
			return "auth/token/" + op + "-accessor", Update
		}
		return "auth/token/" + op, Update
	}
}

// capabilities: another token's capabilities need sys/capabilities, the
// caller's own sys/capabilities-self.
func capabilities(req proto.Message) (string, Capability) {
	if r, ok := req.(*pb.CapabilitiesRequest); ok && r.GetToken() != "" {
		return "sys/capabilities", Update
	}
	return "sys/capabilities-self", Update
}

// loginPath is Vault's path of a login: auth/<method>/login.
func loginPath(req proto.Message) (string, Capability) {
	method := ""
	if r, ok := req.(*pb.LoginRequest); ok {
		method = r.GetMethod()
	}
	if method == "" {
		method = "<method>"
	}
	return "auth/" + method + "/login", Update
}

// named is a route on prefix + the request's name + suffix (a role of a
// login method).
func named(prefix, suffix string, need Capability) func(proto.Message) (string, Capability) {
	return func(req proto.Message) (string, Capability) {
		name := ""
		if r, ok := req.(interface{ GetName() string }); ok {
			name = r.GetName()
		}
		return prefix + name + suffix, need
	}
}

// auditHash is Vault's sys/audit-hash/DEVICE ("file" when the request
// names none).
func auditHash(req proto.Message) (string, Capability) {
	device := "file"
	if r, ok := req.(*pb.AuditHashRequest); ok && r.GetDevice() != "" {
		device = r.GetDevice()
	}
	return "sys/audit-hash/" + device, Update | Sudo
}

// mounts: the list of every mount is sys/mounts; the mount of one path
// is sys/internal/ui/mounts/PATH (which the default policy grants, as
// Vault answers it for any token).
func mounts(req proto.Message) (string, Capability) {
	if r, ok := req.(*pb.MountsRequest); ok && r.GetPath() != "" {
		return "sys/internal/ui/mounts/" + r.GetPath(), Read
	}
	return "sys/mounts", Read
}

// leasePrefix is Vault's path for an operation on the leases under a
// prefix: sys/leases/revoke-prefix/<prefix>, sudo in Vault (the lease
// table adds the trailing slash, as Vault's RevokePrefix does).
func leasePrefix(base string, need Capability) func(proto.Message) (string, Capability) {
	return func(req proto.Message) (string, Capability) {
		p := ""
		if r, ok := req.(interface{ GetPrefix() string }); ok {
			p = r.GetPrefix()
		}
		return base + p, need
	}
}

// LeaseListPrefix is the prefix a lease list covers: a folder, as in
// Vault's LIST sys/leases/lookup/<prefix>/ — a prefix without a trailing
// slash gets one, so that "database/creds/app" lists neither
// "database/creds/app2/…" nor "database/creds/app-admin/…". The server
// lists what the policy path names, both from this.
func LeaseListPrefix(p string) string {
	if p != "" && !strings.HasSuffix(p, "/") {
		return p + "/"
	}
	return p
}

// leaseList is the policy path of a lease list: Vault's LIST path
// sys/leases/lookup/<prefix>/, sudo.
func leaseList(req proto.Message) (string, Capability) {
	p := ""
	if r, ok := req.(interface{ GetPrefix() string }); ok {
		p = r.GetPrefix()
	}
	return "sys/leases/lookup/" + LeaseListPrefix(p), List | Sudo
}

// fixed is a route on one path.
func fixed(path string, need Capability) func(proto.Message) (string, Capability) {
	return func(proto.Message) (string, Capability) { return path, need }
}

// requestPath is the path or prefix a KV request names.
func requestPath(req proto.Message) string {
	switch r := req.(type) {
	case pather:
		return r.GetPath()
	case prefixer:
		return r.GetPrefix()
	}
	return ""
}

// KVPolicyPath turns a secret path "secret/app/db" into the path Vault's
// KV version 2 policies name: "secret/<kind>/app/db" (kind: data,
// metadata, delete, undelete or destroy).
func KVPolicyPath(path, kind string) string {
	mount, rest, ok := strings.Cut(path, "/")
	if !ok {
		return mount + "/" + kind + "/"
	}
	return mount + "/" + kind + "/" + rest
}
