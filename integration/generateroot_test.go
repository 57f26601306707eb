package integration

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
	"coffer/internal/tlsutil"
)

// TestGenerateRootThenRevokeTheInitialOne: through a follower, a
// threshold of unseal shares makes a new root token (Vault's flow with a
// one-time pad); with it the operators revoke the initial root token,
// which every node then refuses. A wrong nonce, a caller without a client
// certificate and another cluster's shares get nothing.
func TestGenerateRootThenRevokeTheInitialOne(t *testing.T) {
	c := NewCluster(t, 3, ClusterOptions{TLS: true})
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	leader := c.WaitForLeader(t)
	f := c.Followers(leader)[0]
	// No token: generate-root is for whoever holds the shares (and, on a
	// node with TLS, a certificate of the CA).
	cl, err := api.New(api.Config{Endpoints: []string{f.APIAddr()}, TLS: c.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	caOnly, err := api.LoadTLS(filepath.Join(c.CertsDir(), tlsutil.CAFile), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(f.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(caOnly)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pad := make([]byte, 30)
	rand.Read(pad)
	otp := base64.StdEncoding.EncodeToString(pad)
	if _, err := pb.NewSysClient(conn).GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "init", Otp: otp}); !api.IsPermissionDenied(err) {
		t.Fatalf("generate-root without a client certificate: %v", err)
	}

	st, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "init", Otp: otp})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Started || st.Nonce == "" || st.Required != 3 || st.OtpLength != 30 {
		t.Fatalf("init: %+v", st)
	}
	if _, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "update", Nonce: "wrong", Key: c.Shares[0]}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a wrong nonce: %v", err)
	}
	var done *pb.GenerateRootStatus
	for i, sh := range c.Shares[:3] {
		st, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "update", Nonce: st.Nonce, Key: sh})
		if err != nil {
			t.Fatalf("share %d: %v", i, err)
		}
		if i < 2 && (st.Complete || st.Progress != uint32(i+1)) {
			t.Fatalf("share %d: %+v", i, st)
		}
		done = st
	}
	if !done.Complete || done.EncodedToken == "" {
		t.Fatalf("after three shares: %+v", done)
	}
	enc, err := base64.StdEncoding.DecodeString(done.EncodedToken)
	if err != nil || len(enc) != len(pad) {
		t.Fatalf("encoded token %q: %v", done.EncodedToken, err)
	}
	tok := make([]byte, len(enc))
	for i := range enc {
		tok[i] = enc[i] ^ pad[i]
	}
	newRoot := string(tok)
	if newRoot == c.Token {
		t.Fatal("generate-root returned the initial root token")
	}

	nr := tokenClient(t, c, newRoot, f)
	if _, err := nr.Put(ctx(t), &pb.PutRequest{Path: "secret/made-by-new-root", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatalf("a write with the new root token: %v", err)
	}
	if _, err := nr.RevokeToken(ctx(t), &pb.RevokeTokenRequest{Token: c.Token}); err != nil {
		t.Fatalf("revoking the initial root token: %v", err)
	}
	for _, n := range c.Running() {
		testcluster.WaitFor(t, 5*time.Second, "the initial root token to be refused on "+n.ID, func() error {
			_, err := tokenClient(t, c, c.Token, n).LookupToken(ctx(t), &pb.LookupTokenRequest{})
			if status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("lookup with the revoked root token: %v", err)
			}
			return nil
		})
	}

	// Another cluster's shares do not make a token.
	other := NewCluster(t, 1, ClusterOptions{TLS: true})
	other.Init(t, other.WaitForLeader(t))
	st, err = cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "init", Otp: otp})
	if err != nil {
		t.Fatal(err)
	}
	var last error
	for _, sh := range other.Shares[:3] {
		_, last = cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "update", Nonce: st.Nonce, Key: sh})
	}
	if status.Code(last) != codes.InvalidArgument {
		t.Fatalf("another cluster's shares: %v, want refused", last)
	}
	if st, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "status"}); err != nil || st.Progress != 0 || st.Complete {
		t.Fatalf("after the wrong shares: %+v %v", st, err)
	}
}
