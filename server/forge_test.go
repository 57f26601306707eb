package server

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// A compromised peer (a node certificate of the cluster, or a leader under
// an attacker's control) can append any entry to the log, and every node
// applies it. These tests apply such entries straight to the state
// machine, encoded as a forger would (without the checks of
// fsm.EncodeCommand), and show that none mints a token or passes an old
// value off as a new version.

// forge applies cmd to x's state machine as the next committed log entry.
func forge(t *testing.T, x *kvFixture, cmd *fsmpb.Command) fsm.Result {
	t.Helper()
	p := x.kv.props.(*directProposer)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = p.now.Add(time.Millisecond)
	cmd.LeaderTimeUnixNano = p.now.UnixNano()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	p.index++
	return x.f.ApplyBatch([]*raft.Log{{Index: p.index, Term: 1, Type: raft.LogCommand, Data: data}})[0].(fsm.Result)
}

// gatewayFor is a leader's admission over x's state and keys.
func gatewayFor(x *kvFixture) *gateway {
	return &gateway{raft: x.raft, state: x.f, keys: x.keys, logger: hclog.NewNullLogger()}
}

func bearer(token string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
}

// TestForgedTokenRecordsAreRefused: a token record in plaintext is refused
// by the state machine; one laid out as sealed (another token's real
// record copied under the forged token's key, or random bytes) is stored,
// but does not open at its key, so the forged token authenticates on no
// node.
func TestForgedTokenRecordsAreRefused(t *testing.T) {
	x := newKVFixture(t)
	g := gatewayFor(x)
	ctx := context.Background()

	realKey, realValue, err := tokenEntry(x.keys, "cof.real", []string{rootPolicy}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.kv.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: realKey, Value: realValue}}}); err != nil {
		t.Fatal(err)
	}
	if rec, err := g.authenticate(bearer("cof.real")); err != nil || rec.Policies[0] != rootPolicy {
		t.Fatalf("the real token: %+v, %v", rec, err)
	}

	const forged = "cof.forged"
	h := hashToken(forged)
	plain, _ := json.Marshal(tokenRecord{Hash: h, Policies: []string{rootPolicy}, Created: 1})
	random := append([]byte{0x80, 0, 0, 1}, make([]byte, 60)...)
	for name, value := range map[string][]byte{
		"plaintext record":       plain,
		"a real record, moved":   realValue,
		"random sealed-looking":  random,
		"sealed for another key": mustSealEntry(t, x.keys, sysTokenPref+"other", plain),
	} {
		res := forge(t, x, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: sysTokenPref + h, Value: value}}})
		if name == "plaintext record" && !errors.Is(res.Err, fsm.ErrInvalidCommand) {
			t.Errorf("%s: the state machine stored it (%v)", name, res.Err)
		}
		if rec, err := g.authenticate(bearer(forged)); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: the forged token authenticated: %+v, %v", name, rec, err)
		}
	}
	// The real token still works; the forged entries changed nothing else.
	if _, err := g.authenticate(bearer("cof.real")); err != nil {
		t.Fatalf("the real token after the forgeries: %v", err)
	}
}

func mustSealEntry(t *testing.T, s *seal.Seal, key string, pt []byte) []byte {
	t.Helper()
	ct, err := s.SealEntry(key, pt)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// TestReplayedVersionIsRefused: an old version's ciphertext replayed as a
// new version (with or without the version field) is stored by the state
// machine, which holds no key, but does not open as the new version: the
// read fails as corrupt data instead of returning the old value. A value
// without the bound layout (as sealed before versions were bound, or
// plaintext) is not stored at all.
func TestReplayedVersionIsRefused(t *testing.T) {
	x := newKVFixture(t)
	ctx := context.Background()
	const path = "secret/payments/db"
	for _, v := range []string{"old-password", "new-password"} {
		if _, err := x.kv.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"password": v}}); err != nil {
			t.Fatal(err)
		}
	}
	v1, err := x.f.Get(path, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, claimed := range []uint64{0, 4} { // no version field, then the right next one
		res := forge(t, x, &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: path, Ciphertext: v1.Ciphertext, Version: claimed})
		if res.Err != nil {
			t.Fatalf("the state machine refused a replay it cannot detect: %v", res.Err)
		}
		got, err := x.kv.Get(ctx, &pb.GetRequest{Path: path})
		if !errors.Is(err, seal.ErrDecrypt) {
			t.Fatalf("replayed version 1 as version %d: read %v, %v; want a decrypt failure", res.Version, got.GetData(), err)
		}
	}
	unbound := append([]byte(nil), v1.Ciphertext...)
	unbound[0] &^= 0x80
	before, _ := x.f.Metadata(path)
	for name, ct := range map[string][]byte{"unbound": unbound, "plaintext": []byte("password=old-password-padded-to-32+")} {
		if res := forge(t, x, &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: path, Ciphertext: ct}); !errors.Is(res.Err, fsm.ErrInvalidCommand) {
			t.Errorf("%s value: stored (%v)", name, res.Err)
		}
	}
	if after, _ := x.f.Metadata(path); after.CurrentVersion != before.CurrentVersion {
		t.Fatalf("a refused value made version %d", after.CurrentVersion)
	}
	// The versions written for real still read back.
	if got, err := x.kv.Get(ctx, &pb.GetRequest{Path: path, Version: 2}); err != nil || got.Data["password"] != "new-password" {
		t.Fatalf("version 2: %v, %v", got.GetData(), err)
	}
}

// TestSealedLayoutAgrees: the state machine's view of a sealed value
// (fsm.IsSealedValue) is the barrier's (seal.IsBound).
func TestSealedLayoutAgrees(t *testing.T) {
	x := newKVFixture(t)
	ct, err := x.keys.Encrypt("p", 1, []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	entry := mustSealEntry(t, x.keys, "token/x", nil)
	for _, v := range [][]byte{ct, entry, ct[:31], nil, make([]byte, 64), append([]byte{0x80}, make([]byte, 31)...), append([]byte{0x7f}, make([]byte, 40)...)} {
		if fsm.IsSealedValue(v) != seal.IsBound(v) {
			t.Errorf("%x: fsm says %v, seal says %v", v, fsm.IsSealedValue(v), seal.IsBound(v))
		}
	}
}

// TestMigrateTokenRecords: token records an older version stored in
// plaintext keep working, and the leader's migration seals them in place.
func TestMigrateTokenRecords(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fsm.db")
	f, err := fsm.Open(path, fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	// What an older version left: a plaintext record, written under the
	// state machine's feet.
	old := "cof.from-an-older-version"
	h := hashToken(old)
	plain, _ := json.Marshal(tokenRecord{Hash: h, Policies: []string{rootPolicy}, Created: 1})
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("sys")).Put([]byte(sysTokenPref+h), plain) }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	x := newKVFixtureAt(t, path)
	g := gatewayFor(x)
	if _, err := g.authenticate(bearer(old)); err != nil {
		t.Fatalf("plaintext record of an older version: %v", err)
	}
	n, err := migrateTokenRecords(context.Background(), x.f, x.kv.props, x.keys, hclog.NewNullLogger())
	if err != nil || n != 1 {
		t.Fatalf("migrate: %d, %v", n, err)
	}
	raw, err := x.f.SysGet(sysTokenPref + h)
	if err != nil || !fsm.IsSealedValue(raw) {
		t.Fatalf("record after migration is not sealed: %v", err)
	}
	if _, err := g.authenticate(bearer(old)); err != nil {
		t.Fatalf("token after migration: %v", err)
	}
	if n, err := migrateTokenRecords(context.Background(), x.f, x.kv.props, x.keys, hclog.NewNullLogger()); err != nil || n != 0 {
		t.Fatalf("second migration: %d, %v", n, err)
	}
}

// racingProposer applies an earlier leader's write to the same path just
// before the first command it proposes, as when that write commits between
// the new leader's prediction of the next version and its proposal.
type racingProposer struct {
	*directProposer
	t     *testing.T
	x     *kvFixture
	raced bool
}

func (p *racingProposer) propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error) {
	if !p.raced && cmd.GetOp() == fsmpb.Op_OP_PUT {
		p.raced = true
		ct, err := p.x.keys.Encrypt(cmd.GetPath(), cmd.GetVersion(), encodeData(map[string]string{"v": "earlier leader"}))
		if err != nil {
			p.t.Fatal(err)
		}
		if _, err := p.directProposer.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: cmd.GetPath(), Ciphertext: ct, Version: cmd.GetVersion()}); err != nil {
			p.t.Fatal(err)
		}
	}
	return p.directProposer.propose(ctx, cmd)
}

// TestPutSealsAgainAfterAVersionConflict: when another write takes the
// version a put was sealed for, the put is sealed again for the next one
// and lands there, readable, under its request id.
func TestPutSealsAgainAfterAVersionConflict(t *testing.T) {
	x := newKVFixture(t)
	ctx := context.Background()
	const path = "secret/raced"
	if _, err := x.kv.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	x.kv.props = &racingProposer{directProposer: x.kv.props.(*directProposer), t: t, x: x}
	resp, err := x.kv.Put(ctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": "mine"}, RequestId: "r-raced"})
	if err != nil || resp.Version != 3 {
		t.Fatalf("put after a conflict: %+v, %v", resp, err)
	}
	got, err := x.kv.Get(ctx, &pb.GetRequest{Path: path, Version: 3})
	if err != nil || got.Data["v"] != "mine" {
		t.Fatalf("version 3: %v, %v", got.GetData(), err)
	}
	if got, err := x.kv.Get(ctx, &pb.GetRequest{Path: path, Version: 2}); err != nil || got.Data["v"] == "mine" {
		t.Fatalf("version 2: %v, %v", got.GetData(), err)
	}
}
