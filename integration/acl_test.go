package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// matrixPolicies are the policies of the permission matrix: exact paths,
// a trailing *, a + segment, deny, the create/update split, sudo, and
// Vault's priority rules (a pattern whose first wildcard comes later
// wins; at the same place, one that does not end in * wins).
var matrixPolicies = map[string]string{
	"payments": `
path "secret/data/payments/*" { capabilities = ["read"] }
path "secret/metadata/payments/*" { capabilities = ["list"] }
`,
	"plus": `path "secret/data/+/db" { capabilities = ["read"] }`,
	"deny": `
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/data/admin/*" { capabilities = ["deny"] }
`,
	"create-only": `path "secret/data/fresh/*" { capabilities = ["create"] }`,
	"precedence": `
path "secret/data/*" { capabilities = ["read"] }
path "secret/data/+/secret" { capabilities = ["deny"] }
path "secret/data/team/*" { capabilities = ["read"] }
`,
	"ops": `
path "sys/ha-status" { capabilities = ["read"] }
path "sys/storage/raft/configuration" { capabilities = ["read", "sudo"] }
path "sys/seal" { capabilities = ["update"] }
`,
	"policy-admin": `
path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete"] }
path "sys/policies/acl" { capabilities = ["list"] }
`,
}

// matrixCase is one call by one token and whether the policy allows it.
type matrixCase struct {
	policy string
	call   string
	allow  bool
	do     func(ctx context.Context, c *api.Client, node string) error
}

func get(path string) func(context.Context, *api.Client, string) error {
	return func(ctx context.Context, c *api.Client, _ string) error {
		_, err := c.Get(ctx, &pb.GetRequest{Path: path})
		return err
	}
}

func put(path string) func(context.Context, *api.Client, string) error {
	return func(ctx context.Context, c *api.Client, _ string) error {
		_, err := c.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}})
		return err
	}
}

func list(prefix string) func(context.Context, *api.Client, string) error {
	return func(ctx context.Context, c *api.Client, _ string) error {
		_, err := c.List(ctx, &pb.ListRequest{Path: prefix})
		return err
	}
}

// TestPermissionMatrix: every call of the table is allowed or denied as
// its policy says, through the leader and through a follower, and a
// denial names the capability and the path.
func TestPermissionMatrix(t *testing.T) {
	c, leader, root := unsealedCluster(t, ClusterOptions{TLS: true})
	for _, p := range []string{"secret/payments/db", "secret/admin/key", "secret/team/db", "secret/team/secret", "secret/other/secret", "secret/other/x"} {
		if _, err := root.Put(ctx(t), &pb.PutRequest{Path: p, Data: map[string]string{"v": "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	tokens := map[string]string{}
	for name, text := range matrixPolicies {
		if _, err := root.WritePolicy(ctx(t), name, text); err != nil {
			t.Fatalf("write policy %s: %v", name, err)
		}
		tk, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{name}, TtlSeconds: 3600})
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = tk.GetToken()
	}
	c.WaitForApplied(t, root.LastWriteIndex())

	cases := []matrixCase{
		{"payments", "read payments/db", true, get("secret/payments/db")},
		{"payments", "read admin/key", false, get("secret/admin/key")},
		{"payments", "write payments/db", false, put("secret/payments/db")},
		{"payments", "list payments", true, list("secret/payments")},
		{"payments", "list admin", false, list("secret/admin")},
		{"payments", "read metadata", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.ReadMetadata(ctx, &pb.ReadMetadataRequest{Path: "secret/payments/db"})
			return err
		}},
		{"payments", "destroy", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.Destroy(ctx, &pb.VersionsRequest{Path: "secret/payments/db", Versions: []uint64{1}})
			return err
		}},
		{"payments", "lookup self (default policy)", true, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.LookupToken(ctx, &pb.LookupTokenRequest{})
			return err
		}},
		{"payments", "create a token", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.CreateToken(ctx, &pb.CreateTokenRequest{})
			return err
		}},
		{"plus", "read team/db", true, get("secret/team/db")},
		{"plus", "read payments/db", true, get("secret/payments/db")},
		{"plus", "read team/secret", false, get("secret/team/secret")},
		{"deny", "create app/<node>", true, func(ctx context.Context, c *api.Client, node string) error {
			return put("secret/app/"+node)(ctx, c, node)
		}},
		{"deny", "read payments/db", true, get("secret/payments/db")},
		{"deny", "read admin/key", false, get("secret/admin/key")},
		{"deny", "write admin/key", false, put("secret/admin/key")},
		{"deny", "delete payments/db", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.Delete(ctx, &pb.VersionsRequest{Path: "secret/payments/db"})
			return err
		}},
		{"create-only", "create fresh/<node>", true, func(ctx context.Context, c *api.Client, node string) error {
			return put("secret/fresh/"+node)(ctx, c, node)
		}},
		{"create-only", "update fresh/<node>", false, func(ctx context.Context, c *api.Client, node string) error {
			return put("secret/fresh/"+node)(ctx, c, node)
		}},
		{"precedence", "read team/secret (team/* beats +/secret)", true, get("secret/team/secret")},
		{"precedence", "read other/secret (+/secret beats *)", false, get("secret/other/secret")},
		{"precedence", "read other/x", true, get("secret/other/x")},
		{"ops", "members (no sudo)", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.Members(ctx)
			return err
		}},
		{"ops", "list peers (sudo)", true, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.ListPeers(ctx)
			return err
		}},
		{"ops", "seal (no sudo)", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.Seal(ctx)
			return err
		}},
		{"ops", "step down", false, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.StepDown(ctx)
			return err
		}},
		{"policy-admin", "write a policy", true, func(ctx context.Context, c *api.Client, node string) error {
			_, err := c.WritePolicy(ctx, "made-on-"+node, `path "secret/data/x" { capabilities = ["read"] }`)
			return err
		}},
		{"policy-admin", "list policies", true, func(ctx context.Context, c *api.Client, _ string) error {
			_, err := c.ListPolicies(ctx)
			return err
		}},
		{"policy-admin", "read a secret", false, get("secret/payments/db")},
	}

	for _, via := range []struct {
		name string
		node *Node
	}{{"leader", leader}, {"follower", c.Followers(leader)[0]}} {
		clients := map[string]*api.Client{}
		for name, tk := range tokens {
			cl, err := api.New(api.Config{Endpoints: []string{via.node.APIAddr()}, Token: tk, TLS: c.ClientTLS()})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			clients[name] = cl
		}
		for _, tc := range cases {
			err := tc.do(ctx(t), clients[tc.policy], via.name)
			denied := status.Code(err) == codes.PermissionDenied
			switch {
			case tc.allow && denied:
				t.Errorf("via %s, %s: %s was denied: %v", via.name, tc.policy, tc.call, err)
			case tc.allow && err != nil && !errors.Is(err, context.Canceled):
				t.Errorf("via %s, %s: %s failed: %v", via.name, tc.policy, tc.call, err)
			case !tc.allow && !denied:
				t.Errorf("via %s, %s: %s was not denied (err %v)", via.name, tc.policy, tc.call, err)
			}
		}
	}

	// A denial says which capability is missing where.
	_, err := func() (*pb.GetResponse, error) {
		cl, err := api.New(api.Config{Endpoints: []string{leader.APIAddr()}, Token: tokens["payments"], TLS: c.ClientTLS()})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.Get(ctx(t), &pb.GetRequest{Path: "secret/admin/key"})
	}()
	if want := "permission denied: read on secret/data/admin/key"; status.Convert(err).Message() != want {
		t.Errorf("denial message %q, want %q", status.Convert(err).Message(), want)
	}
}

// TestTokenRevokeStopsEveryNode: a revoked token — and the child of a
// revoked parent — is refused by every node within a second, while an
// orphan of the same parent keeps working; an expired token is refused
// everywhere and the leader removes it.
func TestTokenRevokeStopsEveryNode(t *testing.T) {
	c, leader, root := unsealedCluster(t, ClusterOptions{TLS: true})
	if _, err := root.Put(ctx(t), &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.WritePolicy(ctx(t), "app", `path "secret/data/app/*" { capabilities = ["read"] }
path "auth/token/create" { capabilities = ["update"] }
path "auth/token/create-orphan" { capabilities = ["update"] }`); err != nil {
		t.Fatal(err)
	}
	parent, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	pc := tokenClient(t, c, parent.GetToken(), leader)
	child, err := pc.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"root"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a child with a policy its parent lacks: %v", err)
	}
	orphan, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, NoParent: true})
	if err != nil {
		t.Fatal(err)
	}
	short, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, TtlSeconds: 2})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, pc.LastWriteIndex())
	c.WaitForApplied(t, root.LastWriteIndex())
	reads := func(tok string, n *Node) error {
		cl := tokenClient(t, c, tok, n)
		_, err := cl.Get(ctx(t), &pb.GetRequest{Path: "secret/app/db", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
		return err
	}
	for _, n := range c.Running() {
		for _, tok := range []string{parent.GetToken(), child.GetToken(), orphan.GetToken()} {
			if err := reads(tok, n); err != nil {
				t.Fatalf("%s: a valid token cannot read: %v", n.ID, err)
			}
		}
	}

	start := time.Now()
	if _, err := root.RevokeToken(ctx(t), &pb.RevokeTokenRequest{Token: parent.GetToken()}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Running() {
		for _, tok := range []string{parent.GetToken(), child.GetToken()} {
			testcluster.WaitFor(t, 5*time.Second, "the revoked token to be refused on "+n.ID, func() error {
				if err := reads(tok, n); status.Code(err) != codes.Unauthenticated {
					return fmt.Errorf("read with a revoked token: %v", err)
				}
				return nil
			})
		}
		if err := reads(orphan.GetToken(), n); err != nil {
			t.Errorf("%s: the orphan stopped working with its creator: %v", n.ID, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("revocation took %v to reach every node", d)
	}

	// The short token expires: every node refuses it from then on, and the
	// leader removes its record.
	testcluster.WaitFor(t, 15*time.Second, "the short token to expire everywhere", func() error {
		for _, n := range c.Running() {
			if err := reads(short.GetToken(), n); status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("%s: read with an expired token: %v", n.ID, err)
			}
		}
		return nil
	})
	// Left: the root token and the orphan.
	testcluster.WaitFor(t, 20*time.Second, "the leader to remove the expired token", func() error {
		for _, n := range c.Running() {
			if live, err := n.Srv.LiveTokens(); err != nil || live != 2 {
				return fmt.Errorf("%s holds %d token records (%v), want 2", n.ID, live, err)
			}
		}
		return nil
	})
}

// tokenClient is a client of node n with token tok, closed with the test.
func tokenClient(t *testing.T, c *Cluster, tok string, n *Node) *api.Client {
	t.Helper()
	cl, err := api.New(api.Config{Endpoints: []string{n.APIAddr()}, Token: tok, TLS: c.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestTokensWithoutALeader: with no leader (two of three nodes down), the
// last follower still authenticates batch and service tokens from its own
// state and serves stale reads under their policies, and still refuses
// expired and revoked tokens, forged batch tokens and denied paths.
func TestTokensWithoutALeader(t *testing.T) {
	c, leader, root := unsealedCluster(t, ClusterOptions{TLS: true})
	for _, p := range []string{"secret/app/db", "secret/other/db"} {
		if _, err := root.Put(ctx(t), &pb.PutRequest{Path: p, Data: map[string]string{"v": "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.WritePolicy(ctx(t), "app", `path "secret/data/app/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	mk := func(req *pb.CreateTokenRequest) *pb.TokenInfo {
		t.Helper()
		req.Policies = []string{"app"}
		tk, err := root.CreateToken(ctx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	service := mk(&pb.CreateTokenRequest{TtlSeconds: 3600})
	batch := mk(&pb.CreateTokenRequest{TtlSeconds: 3600, Type: "batch"})
	revoked := mk(&pb.CreateTokenRequest{TtlSeconds: 3600})
	short := mk(&pb.CreateTokenRequest{TtlSeconds: 1})
	shortBatch := mk(&pb.CreateTokenRequest{TtlSeconds: 1, Type: "batch"})
	if batch.GetAccessor() != "" || batch.GetType() != "batch" || !isBatch(batch.GetToken()) {
		t.Fatalf("batch token: %+v", batch)
	}
	if _, err := root.RevokeToken(ctx(t), &pb.RevokeTokenRequest{Token: revoked.GetToken()}); err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())

	last := c.Followers(leader)[0]
	for _, n := range c.Running() {
		if n != last {
			c.Kill(n)
		}
	}
	read := func(tok, path string) error {
		cl := tokenClient(t, c, tok, last)
		_, err := cl.Get(ctx(t), &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
		return err
	}
	// Both short tokens are past their second by now or soon.
	testcluster.WaitFor(t, 10*time.Second, "the short tokens to expire", func() error {
		for _, tok := range []string{short.GetToken(), shortBatch.GetToken()} {
			if err := read(tok, "secret/app/db"); status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("read with an expired token: %v", err)
			}
		}
		return nil
	})
	testcluster.WaitFor(t, 10*time.Second, last.ID+" to lose its leader", func() error {
		if st := c.Status(t, last); st.LeaderId != "" {
			return fmt.Errorf("%s still sees leader %s", last.ID, st.LeaderId)
		}
		return nil
	})
	forged := batch.GetToken()[:len(batch.GetToken())-4] + "AAAA"
	for _, tc := range []struct {
		name, tok, path string
		want            codes.Code
	}{
		{"service token, allowed path", service.GetToken(), "secret/app/db", codes.OK},
		{"batch token, allowed path", batch.GetToken(), "secret/app/db", codes.OK},
		{"service token, denied path", service.GetToken(), "secret/other/db", codes.PermissionDenied},
		{"batch token, denied path", batch.GetToken(), "secret/other/db", codes.PermissionDenied},
		{"revoked token", revoked.GetToken(), "secret/app/db", codes.Unauthenticated},
		{"expired service token", short.GetToken(), "secret/app/db", codes.Unauthenticated},
		{"expired batch token", shortBatch.GetToken(), "secret/app/db", codes.Unauthenticated},
		{"forged batch token", forged, "secret/app/db", codes.Unauthenticated},
	} {
		if got := status.Code(read(tc.tok, tc.path)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// A batch token can be made on the leaderless node: it writes nothing.
	bc := tokenClient(t, c, service.GetToken(), last)
	if _, err := bc.CreateToken(ctx(t), &pb.CreateTokenRequest{Type: "batch"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a token without auth/token/create made a batch token: %v", err)
	}
	rc := tokenClient(t, c, c.Token, last)
	made, err := rc.CreateToken(ctx(t), &pb.CreateTokenRequest{Type: "batch", Policies: []string{"app"}, TtlSeconds: 600})
	if err != nil {
		t.Fatalf("batch token without a leader: %v", err)
	}
	if err := read(made.GetToken(), "secret/app/db"); err != nil {
		t.Errorf("a batch token made without a leader cannot read: %v", err)
	}
}

func isBatch(tok string) bool { return len(tok) > 4 && tok[:4] == "cob." }

// TestTokenUsesAreCountedOnce: a token limited in uses makes exactly that
// many calls cluster-wide, also when they race on two followers: each
// call takes one use on the leader before it is served, and the last use
// revokes the token on every node.
func TestTokenUsesAreCountedOnce(t *testing.T) {
	c, leader, root := unsealedCluster(t, ClusterOptions{TLS: true})
	put, err := root.Put(ctx(t), &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.WritePolicy(ctx(t), "app", `path "secret/data/app/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	fs := c.Followers(leader)
	read := func(tok string, n *Node) error {
		_, err := tokenClient(t, c, tok, n).Get(ctx(t), &pb.GetRequest{Path: "secret/app/db", Read: &pb.ReadOptions{MinIndex: put.Index}})
		return err
	}
	const races = 10
	for i := range races {
		tk, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, NumUses: 1, TtlSeconds: 600})
		if err != nil {
			t.Fatal(err)
		}
		c.WaitForApplied(t, root.LastWriteIndex())
		errs := make(chan error, 2)
		for _, n := range fs {
			go func() { errs <- read(tk.GetToken(), n) }()
		}
		ok := 0
		for range 2 {
			switch err := <-errs; {
			case err == nil:
				ok++
			case status.Code(err) != codes.Unauthenticated:
				t.Errorf("race %d: the losing call failed with %v, want unauthenticated", i, err)
			}
		}
		if ok != 1 {
			t.Fatalf("race %d: a one-use token made %d calls", i, ok)
		}
	}

	tk, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, NumUses: 3, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	for i := range 3 {
		if err := read(tk.GetToken(), fs[i%2]); err != nil {
			t.Fatalf("use %d of 3: %v", i+1, err)
		}
	}
	for _, n := range c.Running() {
		if err := read(tk.GetToken(), n); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: a fourth use: %v", n.ID, err)
		}
	}
}

// TestWatchShowsOnlyWhatTheTokenMayList: a watch of "secret/app" by a
// token that may list secret/app/ gets the changes under it, not those of
// secret/apple (a longer name with the same prefix), and ends when the
// token is revoked.
func TestWatchShowsOnlyWhatTheTokenMayList(t *testing.T) {
	c, leader, root := unsealedCluster(t, ClusterOptions{TLS: true})
	if _, err := root.WritePolicy(ctx(t), "watcher", `path "secret/metadata/app/*" { capabilities = ["list"] }`); err != nil {
		t.Fatal(err)
	}
	tk, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"watcher"}, TtlSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	f := c.Followers(leader)[0]
	wctx, cancel := context.WithTimeout(metadataToken(t, tk.GetToken()), 30*time.Second)
	defer cancel()
	stream, err := f.KV.Watch(wctx, &pb.WatchRequest{Prefix: "secret/app"})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.Type != pb.WatchEvent_PROGRESS {
		t.Fatalf("first event: %v %v", ev, err)
	}
	for _, p := range []string{"secret/app/x", "secret/apple/y", "secret/app/z"} {
		if _, err := root.Put(ctx(t), &pb.PutRequest{Path: p, Data: map[string]string{"v": "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for len(got) < 2 {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v (got %v)", err, got)
		}
		if ev.Type == pb.WatchEvent_CHANGE {
			got = append(got, ev.Path)
		}
	}
	if got[0] != "secret/app/x" || got[1] != "secret/app/z" {
		t.Fatalf("the watch showed %v, want secret/app/x and secret/app/z only", got)
	}
	if _, err := root.RevokeToken(ctx(t), &pb.RevokeTokenRequest{Token: tk.GetToken()}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Put(ctx(t), &pb.PutRequest{Path: "secret/app/after", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("the watch of a revoked token ended with %v, want unauthenticated", err)
			}
			return
		}
		if ev.Type == pb.WatchEvent_CHANGE {
			t.Fatalf("a revoked token's watch showed %s", ev.Path)
		}
	}
}

// metadataToken is a context whose calls carry tok.
func metadataToken(t *testing.T, tok string) context.Context {
	return grpcmd.AppendToOutgoingContext(testcluster.Context(t, 30*time.Second), "authorization", "Bearer "+tok)
}
