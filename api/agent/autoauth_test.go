package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestAgentAutoAuth: an agent that logs in for its service with AppRole
// serves callers on its socket with that token's rights (and no more),
// and logs in again before the short-lived batch token ends, so callers
// keep reading after the first token expired.
func TestAgentAutoAuth(t *testing.T) {
	c := newTestCluster(t, 3)
	root := rootClient(t, c)
	for _, p := range []string{"secret/app/db", "secret/other/db"} {
		if _, err := root.Put(tctx(t), &pb.PutRequest{Path: p, Data: map[string]string{"v": "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.WritePolicy(tctx(t), "app", `path "secret/data/app/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	if _, err := root.WriteAppRole(tctx(t), &pb.AppRole{Name: "svc", Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 3, Type: "batch"}}); err != nil {
		t.Fatal(err)
	}
	// Role reads are served by any node: wait for the write to reach it.
	var roleID string
	testcluster.WaitFor(t, 10*time.Second, "the role on every node", func() (err error) {
		roleID, err = root.AppRoleID(tctx(t), "svc")
		return err
	})
	sid, err := root.AppRoleSecretID(tctx(t), "svc")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, c.APIAddrs(), "")
	cfg.Listen = "unix://" + filepath.Join(t.TempDir(), "agent.sock")
	cfg.UseAgentToken = true
	cfg.Login = func(ctx context.Context, cl *api.Client) (*pb.TokenInfo, error) {
		return cl.LoginAppRole(ctx, roleID, sid.GetSecretId())
	}
	ag := startAgent(t, cfg)
	if err := ag.WaitAuth(tctx(t)); err != nil {
		t.Fatal(err)
	}
	first := ag.ownToken()
	ac := dial(t, ag.Addr())
	if g := ac.get(t, "", "secret/app/db"); g.err != nil || g.resp.Data["v"] != "1" {
		t.Fatalf("a read under the role's policy: %s", g)
	}
	if g := ac.get(t, "", "secret/other/db"); status.Code(g.err) != codes.PermissionDenied {
		t.Fatalf("a read outside the role's policy: %s", g)
	}
	// The batch token lives 3 s; the agent logs in again at two thirds.
	testcluster.WaitFor(t, 15*time.Second, "a second login", func() error {
		if ag.ownToken() == first {
			return fmt.Errorf("still the first token")
		}
		return nil
	})
	testcluster.WaitFor(t, 15*time.Second, "the first token to expire", func() error {
		_, err := root.LookupToken(tctx(t), &pb.LookupTokenRequest{Token: first})
		if err == nil {
			return fmt.Errorf("the first token still stands")
		}
		return nil
	})
	if g := ac.get(t, "", "secret/app/db"); g.err != nil || g.resp.Data["v"] != "1" {
		t.Fatalf("a read after the first token expired: %s", g)
	}
}
