package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// syncLog collects the nodes' log lines (ClusterOptions.LogTap).
type syncLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitUnsealed waits until every given node reports itself unsealed.
func waitUnsealed(t testing.TB, c *Cluster, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		testcluster.WaitFor(t, 15*time.Second, n.ID+" unsealed", func() error {
			if st := c.Status(t, n); st.Seal.Sealed {
				return fmt.Errorf("%s is sealed (%s)", n.ID, st.Seal.Message)
			}
			return nil
		})
	}
}

// keyForms are the ways a key can show up in a log line.
func keyForms(key []byte) []string {
	return []string{hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), base64.RawStdEncoding.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key), string(key)}
}

// TestStaticSeal: a cluster under the static seal unseals itself right
// after init and after every node was killed at once; init gives recovery
// shares, which do not unseal a node but do serve generate-root and rekey.
// A node given another key stays sealed, says why in its status and its
// log, and never shows either key.
func TestStaticSeal(t *testing.T) {
	logs := &syncLog{}
	c := NewCluster(t, 3, ClusterOptions{StaticSeal: true, LogTap: logs})
	leader := c.WaitForLeader(t)
	st := c.Status(t, leader)
	if !st.Seal.Sealed || st.Seal.Type != "static" || !st.Seal.RecoverySeal || st.Seal.Initialized {
		t.Fatalf("before init: %+v", st.Seal)
	}
	c.Init(t, leader)
	if len(c.Shares) != 5 {
		t.Fatalf("init gave %d recovery shares", len(c.Shares))
	}
	waitUnsealed(t, c, c.Nodes()...)
	root := c.Client(t)
	for i := range 5 {
		if _, err := root.Put(ctx(t), &pb.PutRequest{Path: fmt.Sprintf("secret/static/%d", i), Data: map[string]string{"v": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// Sealed by request, a node stays sealed (until it restarts), and
	// recovery shares do not unseal it.
	sealed := c.Nodes()[1]
	if _, err := sealed.Sys.Seal(c.Auth(t), &pb.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sealed.Sys.Unseal(ctx(t), &pb.UnsealRequest{Key: c.Shares[0]}); api.Reason(err) != pb.ErrorReason_STATIC_SEAL_KEY {
		t.Fatalf("a recovery share to a static node: %v", err)
	}
	if s := c.Status(t, sealed).Seal; !s.Sealed || !strings.Contains(s.Message, "sealed by request") {
		t.Fatalf("%s sealed by request: %+v", sealed.ID, s)
	}

	// kill -9 of every node: they come back unsealed with no operator step.
	c.KillAll()
	c.RestartAll(t)
	c.WaitForLeader(t)
	waitUnsealed(t, c, c.Nodes()...)
	// Default reads: each node catches up with the leader before it
	// answers (a follower may not have applied the last writes before the
	// kill).
	for _, n := range c.Nodes() {
		for i := range 5 {
			g, err := n.KV.Get(c.Auth(t), &pb.GetRequest{Path: fmt.Sprintf("secret/static/%d", i)})
			if err != nil || g.Data["v"] != fmt.Sprint(i) {
				t.Fatalf("%s secret/static/%d after the restart: %v, %v", n.ID, i, g, err)
			}
		}
	}

	// generate-root takes the recovery shares.
	leader = c.WaitForLeader(t)
	cl := c.Client(t, leader)
	pad := make([]byte, 30)
	rand.Read(pad)
	g, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "init", Otp: base64.StdEncoding.EncodeToString(pad)})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range c.Shares[1:4] {
		if g, err = cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "update", Nonce: g.Nonce, Key: sh}); err != nil {
			t.Fatal(err)
		}
	}
	if !g.Complete || g.EncodedToken == "" {
		t.Fatalf("generate-root with recovery shares: %+v", g)
	}
	// So does rekey; it makes new recovery shares, and the old ones no
	// longer serve generate-root.
	st0, err := cl.Rekey(ctx(t), &pb.RekeyRequest{Action: "status"})
	if err != nil || !st0.Recovery || st0.Required != 3 {
		t.Fatalf("rekey status: %+v, %v", st0, err)
	}
	fresh := rekeyAll(t, cl, c.Shares[:3], 3, 2)
	g, err = cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "init", Otp: base64.StdEncoding.EncodeToString(pad)})
	if err != nil {
		t.Fatal(err)
	}
	if g, err = cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "update", Nonce: g.Nonce, Key: c.Shares[0]}); err == nil {
		if g, err = cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "update", Nonce: g.Nonce, Key: c.Shares[1]}); err == nil {
			t.Fatalf("generate-root took the old recovery shares after the rekey: %+v", g)
		}
	}
	if r := api.Reason(err); r != pb.ErrorReason_WRONG_SHARES && r != pb.ErrorReason_INVALID_SHARE {
		t.Fatalf("old recovery shares: %v", err)
	}
	if _, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "cancel", Nonce: g.GetNonce()}); err != nil {
		st, _ := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "status"})
		if _, err := cl.GenerateRoot(ctx(t), &pb.GenerateRootRequest{Action: "cancel", Nonce: st.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	// A rekey left the nodes unsealing themselves: kill one, it comes back.
	victim := c.Followers(leader)[0]
	c.Kill(victim)
	c.Restart(t, victim)
	waitUnsealed(t, c, victim)
	_ = fresh

	// Another key: the node stays sealed and says so, without the keys.
	wrong := make([]byte, 32)
	rand.Read(wrong)
	c.Stop(t, victim)
	victim.SetSealKey(wrong)
	c.Restart(t, victim)
	testcluster.WaitFor(t, 10*time.Second, victim.ID+" says its key is wrong", func() error {
		s := c.Status(t, victim).Seal
		if !s.Sealed || !strings.Contains(s.Message, "does not open") {
			return fmt.Errorf("%s: sealed %v, message %q", victim.ID, s.Sealed, s.Message)
		}
		return nil
	})
	if _, err := victim.Sys.Unseal(ctx(t), &pb.UnsealRequest{Key: fresh[0]}); api.Reason(err) != pb.ErrorReason_STATIC_SEAL_KEY || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("unseal on a node with a wrong key: %v", err)
	}
	text := logs.String()
	if !strings.Contains(text, "does not open this cluster's root key") {
		t.Fatal("the wrong key is not in the log")
	}
	for _, k := range [][]byte{wrong, c.SealKey} {
		for _, form := range keyForms(k) {
			if strings.Contains(text, form) {
				t.Fatalf("a static seal key is in the log (%q…)", form[:8])
			}
		}
	}
}

// TestSealMigrationShamirStaticShamir moves a running three-node cluster
// from the Shamir seal to the static seal and back, Vault's way: the
// followers are restarted under the new seal one by one and unsealed with
// -migrate, leadership moves to a migrated node, which writes the
// migrated record, then the old leader restarts under the new seal. Every
// secret written before reads back after each step, and stale reads go
// on being served throughout.
func TestSealMigrationShamirStaticShamir(t *testing.T) {
	c, _, root := unsealedCluster(t, ClusterOptions{})
	const secrets = 10
	for i := range secrets {
		if _, err := root.Put(ctx(t), &pb.PutRequest{Path: fmt.Sprintf("secret/mig/%d", i), Data: map[string]string{"v": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// Readers: stale reads through every node (a sealed or stopped one
	// is skipped by the client), which must never fail.
	stop := make(chan struct{})
	var reads, failed atomic.Int64
	var lastErr atomic.Value
	var wg sync.WaitGroup
	reader := c.Client(t)
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			g, err := reader.Get(rctx, &pb.GetRequest{Path: fmt.Sprintf("secret/mig/%d", i%secrets), Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}})
			cancel()
			reads.Add(1)
			if err != nil || g.Data["v"] != fmt.Sprint(i%secrets) {
				failed.Add(1)
				lastErr.Store(fmt.Sprintf("read %d: %v %v", i, g, err))
			}
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
		t.Logf("%d stale reads during the migrations, %d failed", reads.Load(), failed.Load())
		if failed.Load() > 0 {
			t.Errorf("%d reads failed during the migration; last: %v", failed.Load(), lastErr.Load())
		}
	}()
	key := make([]byte, 32)
	rand.Read(key)

	migrate(t, c, key, "static")
	checkSecrets(t, c, secrets)
	// Static now: a node killed comes back by itself.
	n := c.Followers(c.WaitForLeader(t))[0]
	c.Kill(n)
	c.Restart(t, n)
	waitUnsealed(t, c, n)

	migrate(t, c, nil, "shamir")
	checkSecrets(t, c, secrets)
	// Shamir again: a node killed comes back sealed, and the shares (the
	// recovery shares of the static seal) unseal it.
	n = c.Followers(c.WaitForLeader(t))[0]
	c.Kill(n)
	c.Restart(t, n)
	if st := c.Status(t, n); !st.Seal.Sealed || st.Seal.Type != "shamir" || st.Seal.Migration {
		t.Fatalf("%s after the migration back: %+v", n.ID, st.Seal)
	}
	c.Unseal(t, n, 1)
}

// migrate moves c to the seal of key (nil: Shamir), named to: followers
// first, then leadership to a migrated node, then the old leader.
func migrate(t *testing.T, c *Cluster, key []byte, to string) {
	t.Helper()
	leader := c.WaitForLeader(t)
	for _, f := range c.Followers(leader) {
		c.Stop(t, f)
		f.SetSealKey(key)
		c.Restart(t, f)
		testcluster.WaitFor(t, 10*time.Second, f.ID+" shows the pending migration", func() error {
			s := c.Status(t, f).Seal
			if !s.Sealed || !s.Migration || s.Type != to || !strings.Contains(s.Message, "-migrate") {
				return fmt.Errorf("%s: %+v", f.ID, s)
			}
			return nil
		})
		if _, err := f.Sys.Unseal(ctx(t), &pb.UnsealRequest{Key: c.Shares[0]}); api.Reason(err) != pb.ErrorReason_SEAL_MIGRATION {
			t.Fatalf("%s: a share without -migrate: %v", f.ID, err)
		}
		var st *pb.SealStatus
		for _, sh := range c.Shares[2:5] {
			var err error
			if st, err = f.Sys.Unseal(ctx(t), &pb.UnsealRequest{Key: sh, Migrate: true}); err != nil {
				t.Fatalf("%s: unseal -migrate: %v", f.ID, err)
			}
		}
		if st.Sealed || !st.Migration {
			t.Fatalf("%s after unseal -migrate: %+v", f.ID, st)
		}
		c.WaitForLeader(t)
	}
	// The leader is not migrated: the record stays as it was until a
	// migrated node leads.
	if _, err := leader.Op.StepDown(c.Auth(t), &pb.StepDownRequest{}); err != nil {
		t.Fatalf("step-down: %v", err)
	}
	next := c.WaitForNewLeader(t, leader)
	testcluster.WaitFor(t, 10*time.Second, "the migrated record", func() error {
		for _, f := range c.Followers(leader) {
			if s := c.Status(t, f).Seal; s.Migration || s.Sealed {
				return fmt.Errorf("%s (leader %s): %+v", f.ID, next.ID, s)
			}
		}
		return nil
	})
	c.Stop(t, leader)
	leader.SetSealKey(key)
	c.Restart(t, leader)
	if key != nil {
		waitUnsealed(t, c, leader)
	} else {
		// It catches up with the migrated record from the leader (it may
		// have stopped before applying it).
		testcluster.WaitFor(t, 10*time.Second, leader.ID+" under the Shamir seal again", func() error {
			if s := c.Status(t, leader).Seal; !s.Sealed || s.Migration {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
		c.Unseal(t, leader, 0)
	}
	c.WaitForLeader(t)
}

// checkSecrets reads every secret on every node (default reads: each node
// answers from its own state once it has caught up with the leader). A
// node may answer Unavailable for a moment (an election on a loaded
// machine): it is asked again; a wrong value fails at once.
func checkSecrets(t *testing.T, c *Cluster, secrets int) {
	t.Helper()
	for _, n := range c.Running() {
		for i := range secrets {
			path := fmt.Sprintf("secret/mig/%d", i)
			testcluster.WaitFor(t, 10*time.Second, n.ID+" reads "+path, func() error {
				g, err := n.KV.Get(c.Auth(t), &pb.GetRequest{Path: path})
				if status.Code(err) == codes.Unavailable {
					return err
				}
				if err != nil || g.Data["v"] != fmt.Sprint(i) {
					t.Fatalf("%s %s: %v, %v", n.ID, path, g, err)
				}
				return nil
			})
		}
	}
}
