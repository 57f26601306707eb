package route

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "coffer/api/cofferpb"
)

// TestEveryServiceMethodHasARoute: every method of coffer's services (as
// the generated descriptors list them) has exactly one route.
func TestEveryServiceMethodHasARoute(t *testing.T) {
	n := 0
	for _, file := range []protoreflect.FileDescriptor{
		pb.File_coffer_v1_kv_proto, pb.File_coffer_v1_sys_proto,
		pb.File_coffer_v1_operator_proto, pb.File_coffer_v1_cluster_proto,
		pb.File_coffer_v1_auth_proto, pb.File_coffer_v1_login_proto,
	} {
		for i := 0; i < file.Services().Len(); i++ {
			svc := file.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := "/" + string(svc.FullName()) + "/" + string(svc.Methods().Get(j).Name())
				if _, ok := Lookup(m); !ok {
					t.Errorf("%s has no route: add a line to the route table", m)
				}
				n++
			}
		}
	}
	if n < 20 {
		t.Fatalf("found only %d methods in the descriptors", n)
	}
}

// TestRoutesAreConsistent checks what each route promises against its
// method's request type.
func TestRoutesAreConsistent(t *testing.T) {
	for _, r := range All() {
		md, err := methodDescriptor(r.Method)
		if err != nil {
			t.Errorf("%s: %v", r.Method, err)
			continue
		}
		if _, err := r.NewResponse(); err != nil {
			t.Errorf("%s: %v", r.Method, err)
		}
		in := md.Input()
		hasID := in.Fields().ByName(requestIDField) != nil
		if r.Idempotent && !hasID {
			t.Errorf("%s is idempotent but %s has no request_id", r.Method, in.FullName())
		}
		if r.Leader && hasID && !r.Idempotent {
			t.Errorf("%s carries a request_id but is not marked idempotent", r.Method)
		}
		switch r.Access {
		case Token:
			if r.Policy == nil {
				t.Errorf("%s needs a token but names no policy path", r.Method)
				continue
			}
			mt, err := protoregistry.GlobalTypes.FindMessageByName(in.FullName())
			if err != nil {
				t.Errorf("%s: %v", r.Method, err)
				continue
			}
			path, need := r.Policy(mt.New().Interface())
			if path == "" || need == 0 {
				t.Errorf("%s: policy path %q needs %s", r.Method, path, need)
			}
		case Login:
			if r.Policy == nil || r.Leader {
				t.Errorf("%s is a login: it names its auth/<method>/login path, and its handler forwards what writes", r.Method)
			}
		case Public, Peer:
			if r.Policy != nil {
				t.Errorf("%s is %s but names a policy", r.Method, r.Access)
			}
		}
	}
}

// TestKVPolicyPaths: KV calls map onto the paths Vault's KV v2 policies
// name.
func TestKVPolicyPaths(t *testing.T) {
	cases := []struct {
		method string
		req    interface{ ProtoReflect() protoreflect.Message }
		path   string
		need   Capability
	}{
		{pb.KV_Get_FullMethodName, &pb.GetRequest{Path: "secret/payments/db"}, "secret/data/payments/db", Read},
		{pb.KV_Put_FullMethodName, &pb.PutRequest{Path: "secret/x"}, "secret/data/x", Create | Update},
		{pb.KV_List_FullMethodName, &pb.ListRequest{Path: "secret/app/"}, "secret/metadata/app/", List},
		{pb.KV_List_FullMethodName, &pb.ListRequest{Path: "secret"}, "secret/metadata/", List},
		{pb.KV_Delete_FullMethodName, &pb.VersionsRequest{Path: "secret/x"}, "secret/data/x", Delete},
		{pb.KV_Delete_FullMethodName, &pb.VersionsRequest{Path: "secret/x", Versions: []uint64{2}}, "secret/delete/x", Update},
		{pb.KV_Undelete_FullMethodName, &pb.VersionsRequest{Path: "secret/x", Versions: []uint64{2}}, "secret/undelete/x", Update},
		{pb.KV_Destroy_FullMethodName, &pb.VersionsRequest{Path: "secret/x", Versions: []uint64{2}}, "secret/destroy/x", Update},
		{pb.KV_ReadMetadata_FullMethodName, &pb.ReadMetadataRequest{Path: "secret/x"}, "secret/metadata/x", Read},
		{pb.KV_DeleteMetadata_FullMethodName, &pb.DeleteMetadataRequest{Path: "secret/x"}, "secret/metadata/x", Delete},
		{pb.KV_Watch_FullMethodName, &pb.WatchRequest{Prefix: "secret/app/"}, "secret/metadata/app/", List},
		{pb.Sys_Seal_FullMethodName, &pb.SealRequest{}, "sys/seal", Update | Sudo},
	}
	for _, c := range cases {
		r, ok := Lookup(c.method)
		if !ok {
			t.Fatalf("no route for %s", c.method)
		}
		path, need := r.Policy(c.req.ProtoReflect().Interface())
		if path != c.path || need != c.need {
			t.Errorf("%s %v: %s needs %s, want %s needs %s", c.method, c.req, path, need, c.path, c.need)
		}
	}
	if _, ok := Lookup("/coffer.v1.KV/NoSuchMethod"); ok {
		t.Fatal("an unknown method has a route")
	}
}

// TestLoginPolicyPaths: logins and their roles map onto Vault's auth/
// paths.
func TestLoginPolicyPaths(t *testing.T) {
	cases := []struct {
		method string
		req    interface{ ProtoReflect() protoreflect.Message }
		path   string
		need   Capability
	}{
		{pb.Login_Login_FullMethodName, &pb.LoginRequest{Method: "approle"}, "auth/approle/login", Update},
		{pb.Login_Login_FullMethodName, &pb.LoginRequest{Method: "jwt"}, "auth/jwt/login", Update},
		{pb.AppRoleAuth_WriteRole_FullMethodName, &pb.AppRole{Name: "web"}, "auth/approle/role/web", Create | Update},
		{pb.AppRoleAuth_ReadRoleID_FullMethodName, &pb.AuthRoleRequest{Name: "web"}, "auth/approle/role/web/role-id", Read},
		{pb.AppRoleAuth_GenerateSecretID_FullMethodName, &pb.AuthRoleRequest{Name: "web"}, "auth/approle/role/web/secret-id", Update},
		{pb.AppRoleAuth_DestroySecretID_FullMethodName, &pb.DestroySecretIDRequest{Name: "web"}, "auth/approle/role/web/secret-id-accessor/destroy", Update},
		{pb.AppRoleAuth_ListRoles_FullMethodName, &pb.AuthListRequest{}, "auth/approle/role", List},
		{pb.JWTAuth_WriteConfig_FullMethodName, &pb.JWTConfig{}, "auth/jwt/config", Update},
		{pb.JWTAuth_DeleteRole_FullMethodName, &pb.AuthRoleRequest{Name: "k8s"}, "auth/jwt/role/k8s", Delete},
		{pb.CertAuth_WriteRole_FullMethodName, &pb.CertRole{Name: "ops"}, "auth/cert/certs/ops", Create | Update},
	}
	for _, c := range cases {
		r, ok := Lookup(c.method)
		if !ok {
			t.Fatalf("no route for %s", c.method)
		}
		path, need := r.Policy(c.req.ProtoReflect().Interface())
		if path != c.path || need != c.need {
			t.Errorf("%s: %s needs %s, want %s needs %s", c.method, path, need, c.path, c.need)
		}
	}
	if r, _ := Lookup(pb.Login_Login_FullMethodName); r.Access != Login {
		t.Errorf("Login.Login has access %s", r.Access)
	}
}

// TestDatabasePolicyPaths: the database engine and leases map onto
// Vault's database/ and sys/leases paths, so Vault policies for them work
// unchanged (database/creds/app needs read; revoke-prefix needs sudo).
func TestDatabasePolicyPaths(t *testing.T) {
	cases := []struct {
		method string
		req    interface{ ProtoReflect() protoreflect.Message }
		path   string
		need   Capability
		leader bool
	}{
		{pb.Database_WriteConfig_FullMethodName, &pb.DatabaseConfig{Name: "pg"}, "database/config/pg", Create | Update, true},
		{pb.Database_ListConfigs_FullMethodName, &pb.DatabaseListRequest{}, "database/config", List, false},
		{pb.Database_RotateRoot_FullMethodName, &pb.DatabaseNameRequest{Name: "pg"}, "database/rotate-root/pg", Update, true},
		{pb.Database_WriteRole_FullMethodName, &pb.DatabaseRole{Name: "app"}, "database/roles/app", Create | Update, true},
		{pb.Database_Creds_FullMethodName, &pb.DatabaseNameRequest{Name: "app"}, "database/creds/app", Read, true},
		{pb.Database_StaticCreds_FullMethodName, &pb.DatabaseNameRequest{Name: "svc"}, "database/static-creds/svc", Read, true},
		{pb.Database_RotateRole_FullMethodName, &pb.DatabaseNameRequest{Name: "svc"}, "database/rotate-role/svc", Update, true},
		{pb.Lease_Lookup_FullMethodName, &pb.LeaseRequest{LeaseId: "database/creds/app/x"}, "sys/leases/lookup", Update, false},
		{pb.Lease_Renew_FullMethodName, &pb.LeaseRenewRequest{}, "sys/leases/renew", Update, true},
		{pb.Lease_RevokePrefix_FullMethodName, &pb.LeasePrefixRequest{Prefix: "database/creds/app"}, "sys/leases/revoke-prefix/database/creds/app", Update | Sudo, true},
		{pb.Lease_List_FullMethodName, &pb.LeaseListRequest{Prefix: "database/creds/"}, "sys/leases/lookup/database/creds/", List | Sudo, false},
		// A prefix is a folder, as Vault's LIST path: app's leases, not app2's.
		{pb.Lease_List_FullMethodName, &pb.LeaseListRequest{Prefix: "database/creds/app"}, "sys/leases/lookup/database/creds/app/", List | Sudo, false},
		{pb.Lease_List_FullMethodName, &pb.LeaseListRequest{}, "sys/leases/lookup/", List | Sudo, false},
	}
	for _, c := range cases {
		r, ok := Lookup(c.method)
		if !ok {
			t.Fatalf("no route for %s", c.method)
		}
		path, need := r.Policy(c.req.ProtoReflect().Interface())
		if path != c.path || need != c.need {
			t.Errorf("%s: %s needs %s, want %s needs %s", c.method, path, need, c.path, c.need)
		}
		if r.Leader != c.leader {
			t.Errorf("%s: leader-only %v, want %v", c.method, r.Leader, c.leader)
		}
	}
}

// TestEnsureRequestID fills an empty request id once and keeps a given one.
func TestEnsureRequestID(t *testing.T) {
	req := &pb.PutRequest{Path: "secret/x"}
	id := EnsureRequestID(req)
	if id == "" || req.RequestId != id {
		t.Fatalf("EnsureRequestID = %q, request has %q", id, req.RequestId)
	}
	if again := EnsureRequestID(req); again != id {
		t.Fatalf("a second EnsureRequestID replaced %q by %q", id, again)
	}
	if got := EnsureRequestID(&pb.GetRequest{}); got != "" {
		t.Fatalf("a request without request_id got %q", got)
	}
	if a, b := NewRequestID(), NewRequestID(); a == b || len(a) != 16+26 {
		t.Fatalf("request ids %q %q", a, b)
	}
}
