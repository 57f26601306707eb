package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
	"coffer/internal/tlsutil"
)

// loginCluster is an unsealed three-node TLS cluster with a secret under
// the policy "app".
func loginCluster(t *testing.T, opts ClusterOptions) (*Cluster, *Node, *api.Client) {
	t.Helper()
	opts.TLS = true
	c, leader, root := unsealedCluster(t, opts)
	if _, err := root.Put(ctx(t), &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.WritePolicy(ctx(t), "app", `path "secret/data/app/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	return c, leader, root
}

// anonClient is a client of node n without a token (a login needs none).
func anonClient(t *testing.T, c *Cluster, n *Node) *api.Client {
	return tokenClient(t, c, "", n)
}

// appRole writes an AppRole role and returns its role_id.
func appRole(t *testing.T, root *api.Client, r *pb.AppRole) string {
	t.Helper()
	if _, err := root.WriteAppRole(ctx(t), r); err != nil {
		t.Fatalf("write role %s: %v", r.Name, err)
	}
	id, err := root.AppRoleID(ctx(t), r.Name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// readWith reads secret/app/db on n with tok (stale: also without a
// leader).
func readWith(t *testing.T, c *Cluster, tok string, n *Node) error {
	_, err := tokenClient(t, c, tok, n).Get(ctx(t), &pb.GetRequest{Path: "secret/app/db", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
	return err
}

// TestAppRoleBatchLoginWithoutALeader: with two of three nodes killed and
// no leader, the last node still logs AppRole callers in to batch tokens
// that read under the role's policy; a login that must write (a service
// token) is refused with NO_LEADER, not left hanging.
func TestAppRoleBatchLoginWithoutALeader(t *testing.T) {
	c, leader, root := loginCluster(t, ClusterOptions{})
	batchID := appRole(t, root, &pb.AppRole{Name: "batch", Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch", TtlSeconds: 600}})
	svcID := appRole(t, root, &pb.AppRole{Name: "svc", Token: &pb.RoleToken{Policies: []string{"app"}}})
	bs, err := root.AppRoleSecretID(ctx(t), "batch")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := root.AppRoleSecretID(ctx(t), "svc")
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())

	last := c.Followers(leader)[0]
	for _, n := range c.Running() {
		if n != last {
			c.Kill(n)
		}
	}
	testcluster.WaitFor(t, 10*time.Second, last.ID+" to lose its leader", func() error {
		if st := c.Status(t, last); st.LeaderId != "" {
			return fmt.Errorf("%s still sees leader %s", last.ID, st.LeaderId)
		}
		return nil
	})
	cl := anonClient(t, c, last)
	tk, err := cl.LoginAppRole(ctx(t), batchID, bs.GetSecretId())
	if err != nil {
		t.Fatalf("batch login without a leader: %v", err)
	}
	if tk.GetType() != "batch" || tk.GetTtlSeconds() != 600 || !isBatch(tk.GetToken()) {
		t.Fatalf("token: %+v", tk)
	}
	if err := readWith(t, c, tk.GetToken(), last); err != nil {
		t.Fatalf("read with the token: %v", err)
	}
	if _, err := tokenClient(t, c, tk.GetToken(), last).Get(ctx(t), &pb.GetRequest{Path: "secret/other/x", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("read outside the policy: %v", err)
	}
	start := time.Now()
	_, err = cl.LoginAppRole(ctx(t), svcID, ss.GetSecretId())
	if status.Code(err) != codes.Unavailable || api.Reason(err) != pb.ErrorReason_NO_LEADER {
		t.Fatalf("service login without a leader: %v (reason %s)", err, api.Reason(err))
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("the refused service login took %s", d)
	}
}

// TestSecretIDNumUsesRacedOnTwoNodes: a secret_id with one use, raced by
// two logins on two different nodes at once, logs in exactly once — for
// each of 20 secret_ids, of batch and of service roles alike.
func TestSecretIDNumUsesRacedOnTwoNodes(t *testing.T) {
	c, leader, root := loginCluster(t, ClusterOptions{})
	ids := map[string]string{}
	for _, typ := range []string{"batch", "service"} {
		ids[typ] = appRole(t, root, &pb.AppRole{Name: "once-" + typ, Token: &pb.RoleToken{Policies: []string{"app"}, Type: typ}, SecretIdNumUses: 1})
	}
	type secret struct{ typ, roleID, id string }
	var secrets []secret
	for i := range 20 {
		typ := []string{"batch", "service"}[i%2]
		s, err := root.AppRoleSecretID(ctx(t), "once-"+typ)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, secret{typ, ids[typ], s.GetSecretId()})
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	f := c.Followers(leader)
	// Two followers (both forward), and a follower against the leader.
	pairs := [][2]*Node{{f[0], f[1]}, {f[1], leader}}
	clients := map[*Node]*api.Client{}
	for _, n := range c.Running() {
		clients[n] = anonClient(t, c, n)
	}
	for i, s := range secrets {
		pair := pairs[i%2]
		start := make(chan struct{})
		var wg sync.WaitGroup
		results := make([]error, 2)
		tokens := make([]string, 2)
		for j, n := range pair {
			wg.Go(func() {
				<-start
				tk, err := clients[n].LoginAppRole(ctx(t), s.roleID, s.id)
				results[j], tokens[j] = err, tk.GetToken()
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for j, err := range results {
			switch {
			case err == nil:
				won++
				if err := readWith(t, c, tokens[j], pair[j]); err != nil {
					t.Errorf("secret %d (%s): the winner's token does not read: %v", i, s.typ, err)
				}
			case status.Code(err) == codes.PermissionDenied:
				if !strings.Contains(status.Convert(err).Message(), "invalid role_id or secret_id") {
					t.Errorf("secret %d: the loser's refusal: %v", i, err)
				}
			default:
				t.Errorf("secret %d (%s) on %s: %v", i, s.typ, pair[j].ID, err)
			}
		}
		if won != 1 {
			t.Fatalf("secret %d (%s) on %s and %s: %d logins succeeded with one use (%v)", i, s.typ, pair[0].ID, pair[1].ID, won, results)
		}
	}
}

// TestServiceLoginThroughAFollower: a service-token login on a follower
// is forwarded to the leader, which writes the token; the token then
// works on every node, and the secret_id's second use is gone everywhere.
func TestServiceLoginThroughAFollower(t *testing.T) {
	c, leader, root := loginCluster(t, ClusterOptions{})
	id := appRole(t, root, &pb.AppRole{Name: "svc", Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 900}, SecretIdNumUses: 2})
	s, err := root.AppRoleSecretID(ctx(t), "svc")
	if err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	f := c.Followers(leader)
	cl := anonClient(t, c, f[0])
	tk, err := cl.LoginAppRole(ctx(t), id, s.GetSecretId())
	if err != nil {
		t.Fatal(err)
	}
	if tk.GetType() != "service" || tk.GetAccessor() == "" || tk.GetRaftIndex() == 0 || tk.GetTtlSeconds() != 900 || tk.GetDisplayName() != "approle-svc" {
		t.Fatalf("token: %+v", tk)
	}
	for _, n := range c.Running() {
		if err := readWith(t, c, tk.GetToken(), n); err != nil {
			// A stale read on a node that has not applied the token yet
			// refuses it: wait for the index, then it must work.
			c.WaitForApplied(t, tk.GetRaftIndex())
			if err := readWith(t, c, tk.GetToken(), n); err != nil {
				t.Errorf("%s: %v", n.ID, err)
			}
		}
	}
	if _, err := anonClient(t, c, f[1]).LoginAppRole(ctx(t), id, s.GetSecretId()); err != nil {
		t.Fatalf("second use: %v", err)
	}
	for _, n := range c.Running() {
		if _, err := anonClient(t, c, n).LoginAppRole(ctx(t), id, s.GetSecretId()); status.Code(err) != codes.PermissionDenied {
			t.Errorf("third use on %s: %v", n.ID, err)
		}
	}
}

// jwtKey is a test issuer's signing key.
type jwtKey struct {
	kid  string
	priv *ecdsa.PrivateKey
}

func newJWTKey(t *testing.T, kid string) *jwtKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &jwtKey{kid: kid, priv: k}
}

func (k *jwtKey) jwks(t *testing.T) []byte {
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serviceAccountToken is a Kubernetes service-account token of namespace
// ns signed by k.
func (k *jwtKey) serviceAccountToken(t *testing.T, ns string) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.kid))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(s).Claims(jwt.Claims{
		Issuer: "https://kubernetes.default.svc", Subject: "system:serviceaccount:" + ns + ":api", Audience: jwt.Audience{"coffer"},
		Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(now),
	}).Claims(map[string]any{"kubernetes.io/namespace": ns}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestJWTLogin: Kubernetes service-account tokens log in on every node,
// with the issuer's keys from a JWKS document stored in the configuration
// and then from a JWKS URL (an HTTPS server on loopback) that every node
// fetches itself; a token of another namespace is refused everywhere.
func TestJWTLogin(t *testing.T) {
	c, _, root := loginCluster(t, ClusterOptions{})
	k := newJWTKey(t, "k1")
	if _, err := root.WriteJWTConfig(ctx(t), &pb.JWTConfig{JwksJson: string(k.jwks(t)), BoundIssuer: "https://kubernetes.default.svc"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.WriteJWTRole(ctx(t), &pb.JWTRole{
		Name: "payments", BoundAudiences: []string{"coffer"}, BoundClaims: map[string]string{"kubernetes.io/namespace": "payments"},
		Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch", TtlSeconds: 600},
	}); err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	good, other := k.serviceAccountToken(t, "payments"), k.serviceAccountToken(t, "ops")
	check := func(source string) {
		t.Helper()
		for _, n := range c.Running() {
			cl := anonClient(t, c, n)
			tk, err := cl.LoginJWT(ctx(t), "payments", good)
			if err != nil {
				t.Fatalf("%s, %s: %v", source, n.ID, err)
			}
			if tk.GetDisplayName() != "jwt-payments-system:serviceaccount:payments:api" {
				t.Errorf("%s, %s: display name %q", source, n.ID, tk.GetDisplayName())
			}
			if err := readWith(t, c, tk.GetToken(), n); err != nil {
				t.Errorf("%s, %s: read: %v", source, n.ID, err)
			}
			if _, err := cl.LoginJWT(ctx(t), "payments", other); status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "kubernetes.io/namespace") {
				t.Errorf("%s, %s: another namespace's token: %v", source, n.ID, err)
			}
		}
	}
	check("JWKS document")

	var mu sync.Mutex
	fetches := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		fetches++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(k.jwks(t))
	}))
	defer srv.Close()
	ca := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	if _, err := root.WriteJWTConfig(ctx(t), &pb.JWTConfig{JwksUrl: srv.URL + "/openid/v1/jwks", JwksCaPem: ca, BoundIssuer: "https://kubernetes.default.svc"}); err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	check("JWKS URL")
	mu.Lock()
	defer mu.Unlock()
	if fetches < 1 || fetches > len(c.Running()) {
		t.Errorf("%d fetches of the key set by %d nodes (each fetches once, then keeps it)", fetches, len(c.Running()))
	}
}

// TestCertLogin: a client certificate made by the cluster's CA logs in
// on a follower to a service token (the follower forwards the login with
// the certificate it verified); the harness's root certificate matches
// no role and is refused.
func TestCertLogin(t *testing.T) {
	c, leader, root := loginCluster(t, ClusterOptions{})
	if err := tlsutil.CreateClient(c.CertsDir(), c.CAKey(), "web-1", 0, false); err != nil {
		t.Fatal(err)
	}
	r, err := tlsutil.Load(tlsutil.ClientFiles(c.CertsDir(), "web-1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.WriteCertRole(ctx(t), &pb.CertRole{Name: "web", AllowedCommonNames: []string{"web-*"}, Token: &pb.RoleToken{Policies: []string{"app"}, TtlSeconds: 600}}); err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	for _, n := range []*Node{c.Followers(leader)[0], leader} {
		cl, err := api.New(api.Config{Endpoints: []string{n.APIAddr()}, TLS: r.ClientConfig("")})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		tk, err := cl.LoginCert(ctx(t), "")
		if err != nil {
			t.Fatalf("cert login on %s: %v", n.ID, err)
		}
		if tk.GetType() != "service" || tk.GetDisplayName() != "cert-web" {
			t.Fatalf("token on %s: %+v", n.ID, tk)
		}
		c.WaitForApplied(t, tk.GetRaftIndex())
		if err := readWith(t, c, tk.GetToken(), n); err != nil {
			t.Errorf("read on %s: %v", n.ID, err)
		}
	}
	// The harness's certificate is "root": no role takes it.
	if _, err := anonClient(t, c, c.Followers(leader)[0]).LoginCert(ctx(t), ""); status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "no role matches") {
		t.Errorf("root's certificate: %v", err)
	}
}

// TestLoginAuditHidesCredentials: every node that served a login wrote it
// to its audit file with the role_id, secret_id, JWT and the token
// answered hashed, never in clear.
func TestLoginAuditHidesCredentials(t *testing.T) {
	c, leader, root := loginCluster(t, ClusterOptions{AuditFiles: true})
	id := appRole(t, root, &pb.AppRole{Name: "svc", Token: &pb.RoleToken{Policies: []string{"app"}}})
	s, err := root.AppRoleSecretID(ctx(t), "svc")
	if err != nil {
		t.Fatal(err)
	}
	k := newJWTKey(t, "k1")
	if _, err := root.WriteJWTConfig(ctx(t), &pb.JWTConfig{JwksJson: string(k.jwks(t))}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.WriteJWTRole(ctx(t), &pb.JWTRole{Name: "k8s", BoundAudiences: []string{"coffer"}, Token: &pb.RoleToken{Policies: []string{"app"}, Type: "batch"}}); err != nil {
		t.Fatal(err)
	}
	c.WaitForApplied(t, root.LastWriteIndex())
	follower := c.Followers(leader)[0]
	// The leader makes the cluster's audit salt once it leads; until a
	// node holds it, the node writes sensitive values redacted instead.
	var hashed string
	for _, n := range []*Node{follower, leader} {
		testcluster.WaitFor(t, 10*time.Second, n.ID+" to hold the audit salt", func() error {
			h, err := tokenClient(t, c, c.Token, n).AuditHash(ctx(t), s.GetSecretId())
			hashed = h
			return err
		})
	}
	cl := anonClient(t, c, follower)
	svc, err := cl.LoginAppRole(ctx(t), id, s.GetSecretId())
	if err != nil {
		t.Fatal(err)
	}
	jwtTok := k.serviceAccountToken(t, "payments")
	batch, err := cl.LoginJWT(ctx(t), "k8s", jwtTok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.LoginAppRole(ctx(t), id, "wrong-secret-id-marker"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong secret_id: %v", err)
	}
	secrets := map[string]string{
		"role_id": id, "secret_id": s.GetSecretId(), "jwt": jwtTok, "wrong secret_id": "wrong-secret-id-marker",
		"service token": svc.GetToken(), "batch token": batch.GetToken(),
	}
	// The follower served both logins and forwarded the service one: both
	// it and the leader record it.
	for _, n := range []*Node{follower, leader} {
		testcluster.WaitFor(t, 10*time.Second, n.ID+"'s audit file to hold the login", func() error {
			b, err := os.ReadFile(n.AuditFile())
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), hashed) || !strings.Contains(string(b), "auth/approle/login") {
				return fmt.Errorf("%s's audit file has no hashed login record yet", n.ID)
			}
			return nil
		})
		b, err := os.ReadFile(n.AuditFile())
		if err != nil {
			t.Fatal(err)
		}
		for name, v := range secrets {
			if strings.Contains(string(b), v) {
				t.Errorf("%s's audit file holds the %s in clear", n.ID, name)
			}
		}
	}
}
