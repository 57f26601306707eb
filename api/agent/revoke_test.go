package agent

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestAgentStopsServingARevokedToken: the agent serves a service's token
// from its cache, and once the token is revoked it stops within the
// cache's token recheck — the cached answers of that token are removed,
// not served stale — while another token's cached answers stay.
func TestAgentStopsServingARevokedToken(t *testing.T) {
	c := newTestCluster(t, 3)
	root := rootClient(t, c)
	const path = "secret/app/db"
	if _, err := root.Put(tctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"password": "p"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.WritePolicy(tctx(t), "app", `path "secret/data/app/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	mk := func() string {
		tk, err := root.CreateToken(tctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, TtlSeconds: 600})
		if err != nil {
			t.Fatal(err)
		}
		return tk.GetToken()
	}
	doomed, kept := mk(), mk()

	const recheck = 300 * time.Millisecond
	cfg := testConfig(t, c.APIAddrs(), c.Token)
	cfg.Cache = api.CacheConfig{TTL: time.Hour, TokenRecheck: recheck}
	ag := startAgent(t, cfg)
	ac := dial(t, ag.Addr())
	for _, tok := range []string{doomed, kept} {
		ac.get(t, tok, path)
		if g := ac.get(t, tok, path); g.err != nil || g.resp.Data["password"] != "p" {
			t.Fatalf("a read through the agent: %s", g)
		}
	}

	if _, err := root.RevokeToken(tctx(t), &pb.RevokeTokenRequest{Token: doomed}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testcluster.WaitFor(t, 10*time.Second, "the agent to refuse the revoked token", func() error {
		if g := ac.get(t, doomed, path); status.Code(g.err) != codes.Unauthenticated {
			return fmt.Errorf("read with the revoked token: %s", g)
		}
		return nil
	})
	if d := time.Since(start); d > recheck+2*time.Second {
		t.Errorf("the agent served the revoked token for %v (recheck %v)", d, recheck)
	}
	for _, k := range ag.client.Cache().Records() {
		if k.Key.TokenHash == api.TokenHash(doomed) {
			t.Fatalf("the revoked token's answer is still cached: %+v", k.Key)
		}
	}
	if g := ac.get(t, kept, path); g.err != nil || g.resp.Data["password"] != "p" {
		t.Fatalf("the other token through the agent: %s", g)
	}
}
