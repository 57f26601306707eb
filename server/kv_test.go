package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/replication"
	"coffer/seal"
)

// The KV handlers run here over a real state machine and a real barrier,
// without Raft: a proposer applies each command to the FSM directly, and
// the read gate sees a fake Raft node whose role a test sets.

// directProposer applies commands to the FSM as Raft would after a
// commit, one log entry each.
type directProposer struct {
	mu    sync.Mutex
	f     *fsm.FSM
	index uint64
	now   time.Time
}

func (p *directProposer) propose(_ context.Context, cmd *fsmpb.Command) (*fsm.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now = p.now.Add(time.Millisecond)
	cmd.LeaderTimeUnixNano = p.now.UnixNano()
	data, err := fsm.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	p.index++
	res := p.f.ApplyBatch([]*raft.Log{{Index: p.index, Term: 1, Type: raft.LogCommand, Data: data}})[0].(fsm.Result)
	return &res, res.Err
}

// fakeRaft is a Raft node's role as the read gate sees it.
type fakeRaft struct {
	leader      bool
	ready       bool
	verifyErr   error
	lastContact time.Time
	// leaseLost makes ConfirmLeader ask VerifyLeader (the leader's read
	// lease lapsed); readIndex is the committed index ReadIndex reports.
	leaseLost bool
	readIndex uint64
}

func (r *fakeRaft) IsLeader() bool                     { return r.leader }
func (r *fakeRaft) ReadyLeader() bool                  { return r.leader && r.ready }
func (r *fakeRaft) VerifyLeader(context.Context) error { return r.verifyErr }
func (r *fakeRaft) ConfirmLeader(ctx context.Context) error {
	if !r.leader {
		return replication.ErrNotLeader
	}
	if r.leaseLost {
		return r.VerifyLeader(ctx)
	}
	return nil
}
func (r *fakeRaft) ReadIndex() uint64 { return r.readIndex }
func (r *fakeRaft) LeaseHeld() bool   { return r.leader && !r.leaseLost }
func (r *fakeRaft) Leader() (string, string) {
	if r.leader {
		return "n1", "n1:8401"
	}
	return "n0", "n0:8401"
}
func (r *fakeRaft) LastContact() time.Time { return r.lastContact }
func (r *fakeRaft) notLeaderError() error {
	return withMessage(replication.ErrNotLeader, "not the leader")
}

// fakeIndex answers read-index rounds with a fixed outcome.
type fakeIndex struct{ err error }

func (f fakeIndex) readIndex(context.Context, bool) error { return f.err }

// kvFixture is a KV service over a real FSM and an unsealed barrier.
type kvFixture struct {
	kv    *kvServer
	raft  *fakeRaft
	index *fakeIndex
	keys  *seal.Seal
	f     *fsm.FSM
}

func newKVFixture(t *testing.T) *kvFixture {
	t.Helper()
	return newKVFixtureAt(t, filepath.Join(t.TempDir(), "fsm.db"))
}

// newKVFixtureAt is newKVFixture over the state database at path.
func newKVFixtureAt(t *testing.T, path string) *kvFixture {
	t.Helper()
	f, err := fsm.Open(path, fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s := seal.New(seal.Options{})
	res, err := seal.Initialize(seal.Config{Shares: 1, Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Unseal(res.Stored, res.WrappedKeyring, res.Shares[0]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Seal)
	r := &fakeRaft{leader: true, ready: true}
	idx := &fakeIndex{}
	reads := &readGate{nodeID: "n1", sealed: s, raft: r, state: f, index: idx}
	kv := &kvServer{
		nodeID: "n1", store: f, props: &directProposer{f: f, index: f.AppliedIndex(), now: time.Unix(1_700_000_000, 0)},
		keys: s, reads: reads, leader: r, stopCtx: context.Background(),
	}
	return &kvFixture{kv: kv, raft: r, index: idx, keys: s, f: f}
}

// TestKVHandlersWithoutRaft drives the KV handlers end to end over a real
// state machine: put, get, CAS, soft delete and undelete, destroy,
// metadata, list — and the errors each returns.
func TestKVHandlersWithoutRaft(t *testing.T) {
	x := newKVFixture(t)
	ctx := context.Background()
	put := func(data map[string]string, cas *uint64) (*pb.PutResponse, error) {
		return x.kv.Put(ctx, &pb.PutRequest{Path: "secret/app/db", Data: data, Cas: cas})
	}
	p1, err := put(map[string]string{"password": "one"}, nil)
	if err != nil || p1.Version != 1 || p1.CreatedTimeUnixNano == 0 {
		t.Fatalf("first put: %+v %v", p1, err)
	}
	zero := uint64(0)
	if _, err := put(map[string]string{"password": "x"}, &zero); !errors.Is(err, fsm.ErrCASMismatch) {
		t.Fatalf("cas=0 on an existing secret: %v", err)
	}
	one := uint64(1)
	if p2, err := put(map[string]string{"password": "two"}, &one); err != nil || p2.Version != 2 {
		t.Fatalf("cas=1: %+v %v", p2, err)
	}
	got, err := x.kv.Get(ctx, &pb.GetRequest{Path: "secret/app/db"})
	if err != nil || got.Data["password"] != "two" || got.Metadata.Version != 2 || got.ReadMeta.Stale || got.ReadMeta.NodeId != "n1" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if got.ReadMeta.AppliedIndex != x.f.AppliedIndex() {
		t.Fatalf("ReadMeta applied index %d, FSM at %d", got.ReadMeta.AppliedIndex, x.f.AppliedIndex())
	}
	old, err := x.kv.Get(ctx, &pb.GetRequest{Path: "secret/app/db", Version: 1})
	if err != nil || old.Data["password"] != "one" {
		t.Fatalf("get version 1: %+v %v", old, err)
	}

	// Soft delete, then undelete, then destroy.
	if _, err := x.kv.Delete(ctx, &pb.VersionsRequest{Path: "secret/app/db"}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := x.kv.Get(ctx, &pb.GetRequest{Path: "secret/app/db"}); !errors.Is(err, ErrDeleted) {
		t.Fatalf("get of a deleted version: %v", err)
	}
	if _, err := x.kv.Undelete(ctx, &pb.VersionsRequest{Path: "secret/app/db", Versions: []uint64{2}}); err != nil {
		t.Fatalf("undelete: %v", err)
	}
	if _, err := x.kv.Destroy(ctx, &pb.VersionsRequest{Path: "secret/app/db", Versions: []uint64{1}}); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if _, err := x.kv.Get(ctx, &pb.GetRequest{Path: "secret/app/db", Version: 1}); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("get of a destroyed version: %v", err)
	}
	md, err := x.kv.ReadMetadata(ctx, &pb.ReadMetadataRequest{Path: "secret/app/db"})
	if err != nil || md.CurrentVersion != 2 || len(md.Versions) != 2 || !md.Versions[0].Destroyed {
		t.Fatalf("metadata: %+v %v", md, err)
	}
	list, err := x.kv.List(ctx, &pb.ListRequest{Path: "secret/"})
	if err != nil || len(list.Keys) != 1 || list.Keys[0] != "app/" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if _, err := x.kv.Get(ctx, &pb.GetRequest{Path: "secret/none"}); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("get of nothing: %v", err)
	}

	// The stored value is ciphertext bound to its path: moved elsewhere, it
	// does not open.
	v, err := x.f.Get("secret/app/db", 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.keys.Decrypt("secret/other", 2, v.Ciphertext); !errors.Is(err, seal.ErrDecrypt) {
		t.Fatalf("ciphertext opened under another path: %v", err)
	}
	if _, err := x.keys.Decrypt("secret/app/db", 1, v.Ciphertext); !errors.Is(err, seal.ErrDecrypt) {
		t.Fatalf("version 2's ciphertext opened as version 1: %v", err)
	}
}

// TestKVWritesNeedAnUnsealedLeader: a follower refuses writes with a
// not-leader error and a sealed node with ErrSealed, before anything is
// proposed; input is validated before either.
func TestKVWritesNeedAnUnsealedLeader(t *testing.T) {
	x := newKVFixture(t)
	ctx := context.Background()
	req := &pb.PutRequest{Path: "secret/x", Data: map[string]string{"a": "b"}}
	if _, err := x.kv.Put(ctx, &pb.PutRequest{Path: "secret/x"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty data: %v", err)
	}
	x.raft.leader = false
	if _, err := x.kv.Put(ctx, req); !errors.Is(err, replication.ErrNotLeader) {
		t.Fatalf("put on a follower: %v", err)
	}
	x.raft.leader = true
	x.keys.Seal()
	if _, err := x.kv.Put(ctx, req); !errors.Is(err, seal.ErrSealed) {
		t.Fatalf("put on a sealed node: %v", err)
	}
	if _, err := x.kv.Get(ctx, &pb.GetRequest{Path: "secret/x"}); !errors.Is(err, seal.ErrSealed) {
		t.Fatalf("get on a sealed node: %v", err)
	}
	if x.f.AppliedIndex() != 0 {
		t.Fatalf("refused writes reached the state machine: applied %d", x.f.AppliedIndex())
	}
	// max_versions is bounded, before anything is proposed.
	x.keys.Seal()
	if _, err := x.kv.WriteMetadata(ctx, &pb.WriteMetadataRequest{Path: "secret/x", MaxVersions: 1<<32 - 1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("max_versions 2^32-1: %v", err)
	}
}

// TestReadConsistencyWithoutRaft: the read gate's rules, with the node's
// role faked. A follower's default and linearizable reads need a read-index
// round and fail with its error; a new leader answers only once ready; a
// linearizable read on the leader needs VerifyLeader; a stale read on a
// follower is marked stale and bounded by max_staleness.
func TestReadConsistencyWithoutRaft(t *testing.T) {
	x := newKVFixture(t)
	ctx := context.Background()
	if _, err := x.kv.Put(ctx, &pb.PutRequest{Path: "secret/r", Data: map[string]string{"v": "1"}}); err != nil {
		t.Fatal(err)
	}
	get := func(c pb.Consistency, maxStaleMs int64) (*pb.GetResponse, error) {
		return x.kv.Get(ctx, &pb.GetRequest{Path: "secret/r", Read: &pb.ReadOptions{Consistency: c, MaxStalenessMs: maxStaleMs}})
	}
	lin, def, stale := pb.Consistency_CONSISTENCY_LINEARIZABLE, pb.Consistency_CONSISTENCY_DEFAULT, pb.Consistency_CONSISTENCY_STALE

	// Leader, not ready yet.
	x.raft.ready = false
	for _, c := range []pb.Consistency{def, lin} {
		if _, err := get(c, 0); !errors.Is(err, replication.ErrNoLeader) {
			t.Fatalf("%s on a leader before its barrier: %v", c, err)
		}
	}
	if r, err := get(stale, 0); err != nil || !r.ReadMeta.Stale {
		t.Fatalf("stale read on a leader not ready: %+v %v (want an answer marked stale)", r, err)
	}
	x.raft.ready = true
	x.raft.verifyErr = replication.ErrNotLeader
	if _, err := get(lin, 0); !errors.Is(err, replication.ErrNotLeader) {
		t.Fatalf("linearizable read when VerifyLeader fails: %v", err)
	}
	if r, err := get(def, 0); err != nil || r.ReadMeta.Stale {
		t.Fatalf("default read on a ready leader: %+v %v", r, err)
	}
	// A leader whose read lease lapsed (it was frozen or cut off) answers
	// a default read only once a quorum confirms it.
	x.raft.leaseLost = true
	if _, err := get(def, 0); !errors.Is(err, replication.ErrNotLeader) {
		t.Fatalf("default read on a leader without its lease when VerifyLeader fails: %v", err)
	}
	x.raft.verifyErr = nil
	if r, err := get(def, 0); err != nil || r.ReadMeta.Stale {
		t.Fatalf("default read on a leader that confirmed its leadership: %+v %v", r, err)
	}
	if r, err := get(stale, 0); err != nil || !r.ReadMeta.Stale {
		t.Fatalf("stale read on a leader without its lease: %+v %v (want an answer marked stale)", r, err)
	}
	x.raft.leaseLost = false
	if r, err := get(stale, 0); err != nil || r.ReadMeta.Stale {
		t.Fatalf("stale read on a leader holding its lease: %+v %v (want it not marked stale)", r, err)
	}
	// A committed index the leader's state has not applied yet holds the
	// read back: followers may already have served those entries.
	x.raft.readIndex = x.f.AppliedIndex() + 1
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := x.kv.Get(short, &pb.GetRequest{Path: "secret/r", Read: &pb.ReadOptions{Consistency: def}})
	cancel()
	if !errors.Is(err, ErrCatchingUp) {
		t.Fatalf("default read on a leader behind its committed index: %v", err)
	}
	// A stale read there is answered, but marked stale: it may miss a
	// write a follower already served.
	if r, err := get(stale, 0); err != nil || !r.ReadMeta.Stale {
		t.Fatalf("stale read on a leader behind its committed index: %+v %v (want an answer marked stale)", r, err)
	}
	x.raft.readIndex = 0

	// Follower.
	x.raft.leader = false
	x.raft.lastContact = time.Now().Add(-time.Second)
	x.index.err = withMessage(ErrLeaderUnreachable, "no leader")
	for _, c := range []pb.Consistency{def, lin} {
		if _, err := get(c, 0); !errors.Is(err, ErrLeaderUnreachable) {
			t.Fatalf("%s on a follower whose read-index round fails: %v", c, err)
		}
	}
	x.index.err = nil
	if r, err := get(lin, 0); err != nil || r.ReadMeta.Stale {
		t.Fatalf("linearizable read on a follower after its round: %+v %v", r, err)
	}
	if r, err := get(stale, 0); err != nil || !r.ReadMeta.Stale || r.ReadMeta.LastContactMs < 1000 {
		t.Fatalf("stale read on a follower: %+v %v", r, err)
	}
	if _, err := get(stale, 100); !errors.Is(err, ErrStale) {
		t.Fatalf("stale read past max_staleness: %v", err)
	}
	// min_index ahead of the node: refused with its own reason.
	_, err = x.kv.Get(ctx, &pb.GetRequest{Path: "secret/r", Read: &pb.ReadOptions{Consistency: stale, MinIndex: 99}})
	if !errors.Is(err, ErrMinIndex) {
		t.Fatalf("read with an unreached min_index: %v", err)
	}
}

// TestListPagesWithoutRaft: a list answers at most its limit (1,000 by
// default) with next_after to go on; a limit over 10,000 and an after that
// is no key of a list answer are refused.
func TestListPagesWithoutRaft(t *testing.T) {
	x := newKVFixture(t)
	ctx := context.Background()
	for i := range DefaultListLimit + 5 {
		if _, err := x.kv.Put(ctx, &pb.PutRequest{Path: fmt.Sprintf("secret/many/k%05d", i), Data: map[string]string{"v": "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	first, err := x.kv.List(ctx, &pb.ListRequest{Path: "secret/many/"})
	if err != nil || len(first.Keys) != DefaultListLimit || first.NextAfter != first.Keys[len(first.Keys)-1] {
		t.Fatalf("first page: %d keys, next_after %q, %v", len(first.GetKeys()), first.GetNextAfter(), err)
	}
	rest, err := x.kv.List(ctx, &pb.ListRequest{Path: "secret/many/", After: first.NextAfter})
	if err != nil || len(rest.Keys) != 5 || rest.NextAfter != "" || rest.Keys[0] != "k01000" {
		t.Fatalf("second page: %v %v", rest, err)
	}
	if _, err := x.kv.List(ctx, &pb.ListRequest{Path: "secret/many/", Limit: MaxListLimit + 1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a limit over the most: %v", err)
	}
	if _, err := x.kv.List(ctx, &pb.ListRequest{Path: "secret/", After: "many/k00001"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("an after that is no child: %v", err)
	}
}
