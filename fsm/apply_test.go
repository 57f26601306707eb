package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

func TestPutAndGet(t *testing.T) {
	h := newHarness(t, Options{})
	t1 := h.now
	if res := h.mustOK(putCmd("secret/a", "c1")); res.Version != 1 || res.Index != 1 || res.Deduplicated {
		t.Fatalf("first put: %+v", res)
	}
	h.now = h.now.Add(time.Second)
	if res := h.mustOK(putCmd("secret/a", "c2")); res.Version != 2 || res.Index != 2 {
		t.Fatalf("second put: %+v", res)
	}

	cur, err := h.f.Get("secret/a", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := &Version{Version: 2, Ciphertext: ct("c2"), CreatedTime: h.now}
	if !reflect.DeepEqual(cur, want) {
		t.Fatalf("Get current = %+v, want %+v", cur, want)
	}
	v1, err := h.f.Get("secret/a", 1)
	if err != nil || plainOf(v1.Ciphertext) != "c1" || !v1.CreatedTime.Equal(t1) {
		t.Fatalf("Get v1 = %+v, %v", v1, err)
	}
	// The returned slice is a copy: scribbling on it changes nothing.
	v1.Ciphertext[0] = 'X'
	if again, _ := h.f.Get("secret/a", 1); plainOf(again.Ciphertext) != "c1" {
		t.Fatalf("Get aliases storage: %q", again.Ciphertext)
	}
	for _, tc := range []struct {
		path    string
		version uint64
	}{{"secret/a", 3}, {"secret/b", 0}, {"secret/b", 1}, {"", 0}} {
		if _, err := h.f.Get(tc.path, tc.version); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q, %d) err = %v, want ErrNotFound", tc.path, tc.version, err)
		}
	}

	md, err := h.f.Metadata("secret/a")
	if err != nil {
		t.Fatal(err)
	}
	wantMD := &Metadata{
		Path: "secret/a", CurrentVersion: 2, OldestVersion: 1, MaxVersions: DefaultMaxVersions,
		CreatedTime: t1, UpdatedTime: h.now,
		Versions: []VersionMeta{{Version: 1, CreatedTime: t1}, {Version: 2, CreatedTime: h.now}},
	}
	if !reflect.DeepEqual(md, wantMD) {
		t.Fatalf("Metadata = %+v\nwant %+v", md, wantMD)
	}
	if _, err := h.f.Metadata("secret/none"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Metadata(none) err = %v", err)
	}
}

func TestCheckAndSet(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(casPut("s", "v1", 0)) // cas=0 creates
	h.mustFail(casPut("s", "again", 0), ErrCASMismatch)
	h.mustFail(casPut("s", "v2", 2), ErrCASMismatch)
	if res := h.mustOK(casPut("s", "v2", 1)); res.Version != 2 {
		t.Fatalf("cas put version = %d", res.Version)
	}
	h.mustFail(casPut("s", "v3", 1), ErrCASMismatch)
	h.mustFail(casPut("new", "x", 5), ErrCASMismatch)
	if _, err := h.f.Get("new", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a failed CAS created the secret: %v", err)
	}
	md, _ := h.f.Metadata("s")
	if md.CurrentVersion != 2 || len(md.Versions) != 2 {
		t.Fatalf("mismatches wrote versions: %+v", md)
	}
	// cas=0 also succeeds on metadata without versions.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "empty"})
	h.mustOK(casPut("empty", "x", 0))
}

func TestCASRequired(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v1"))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", CasRequired: true})
	res := h.mustFail(putCmd("s", "v2"), ErrCASRequired)
	if res.Version != 0 {
		t.Fatalf("failed put reported version %d", res.Version)
	}
	h.mustFail(casPut("s", "v2", 7), ErrCASMismatch)
	h.mustOK(casPut("s", "v2", 1))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", CasRequired: false})
	h.mustOK(putCmd("s", "v3"))
	// Metadata created first, with cas_required, governs the first write.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "t", CasRequired: true, MaxVersions: 4})
	h.mustFail(putCmd("t", "x"), ErrCASRequired)
	h.mustOK(casPut("t", "x", 0))
	md, _ := h.f.Metadata("t")
	if !md.CASRequired || md.MaxVersions != 4 || md.CurrentVersion != 1 {
		t.Fatalf("metadata = %+v", md)
	}
}

func TestMaxVersionsTrimming(t *testing.T) {
	h := newHarness(t, Options{DefaultMaxVersions: 3})
	for i := 1; i <= 5; i++ {
		h.now = h.now.Add(time.Second)
		h.mustOK(putCmd("s", string(rune('a'+i))))
	}
	md, _ := h.f.Metadata("s")
	if md.CurrentVersion != 5 || md.OldestVersion != 3 || md.MaxVersions != 3 || len(md.Versions) != 3 || md.Versions[0].Version != 3 {
		t.Fatalf("after 5 puts: %+v", md)
	}
	for _, v := range []uint64{1, 2} {
		if _, err := h.f.Get("s", v); !errors.Is(err, ErrNotFound) {
			t.Fatalf("trimmed version %d: err = %v", v, err)
		}
	}
	if n := bucketLen(t, h.f, bucketSecretValues); n != 3 {
		t.Fatalf("secret_values holds %d values, want 3", n)
	}
	// Lowering max_versions trims at once; max_versions 0 leaves it alone.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", MaxVersions: 1})
	md, _ = h.f.Metadata("s")
	if md.OldestVersion != 5 || len(md.Versions) != 1 || md.MaxVersions != 1 {
		t.Fatalf("after lowering: %+v", md)
	}
	if n := bucketLen(t, h.f, bucketSecretValues); n != 1 {
		t.Fatalf("secret_values holds %d values, want 1", n)
	}
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", MaxVersions: 0})
	h.mustOK(putCmd("s", "z"))
	md, _ = h.f.Metadata("s")
	if md.MaxVersions != 1 || md.CurrentVersion != 6 || md.OldestVersion != 6 {
		t.Fatalf("after max 0: %+v", md)
	}
	// Raising keeps what is left and retains more from then on.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", MaxVersions: 20})
	h.mustOK(putCmd("s", "y"))
	md, _ = h.f.Metadata("s")
	if md.OldestVersion != 6 || len(md.Versions) != 2 {
		t.Fatalf("after raising: %+v", md)
	}
}

func TestDeleteUndeleteDestroy(t *testing.T) {
	h := newHarness(t, Options{})
	for i := 0; i < 3; i++ {
		h.mustOK(putCmd("s", "v"))
	}
	h.now = h.now.Add(time.Minute)
	delTime := h.now
	// Empty versions on delete: the current one.
	h.mustOK(versionsCmd(fsmpb.Op_OP_DELETE, "s"))
	v3, err := h.f.Get("s", 0)
	if err != nil || !v3.DeletedTime.Equal(delTime) || v3.Version != 3 || v3.Ciphertext == nil {
		t.Fatalf("deleted current = %+v, %v", v3, err)
	}
	// Deleting again keeps the first deletion time.
	h.now = h.now.Add(time.Minute)
	h.mustOK(versionsCmd(fsmpb.Op_OP_DELETE, "s", 3))
	if v3, _ = h.f.Get("s", 3); !v3.DeletedTime.Equal(delTime) {
		t.Fatalf("second delete moved DeletedTime to %v", v3.DeletedTime)
	}
	h.mustOK(versionsCmd(fsmpb.Op_OP_UNDELETE, "s", 3))
	if v3, _ = h.f.Get("s", 3); !v3.DeletedTime.IsZero() {
		t.Fatalf("undelete left DeletedTime %v", v3.DeletedTime)
	}

	// Destroy removes the value for good; undelete cannot bring it back.
	h.mustOK(versionsCmd(fsmpb.Op_OP_DELETE, "s", 1))
	h.mustOK(versionsCmd(fsmpb.Op_OP_DESTROY, "s", 1, 2, 99))
	for _, v := range []uint64{1, 2} {
		got, err := h.f.Get("s", v)
		if err != nil || !got.Destroyed || got.Ciphertext != nil {
			t.Fatalf("destroyed v%d = %+v, %v", v, got, err)
		}
	}
	if n := bucketLen(t, h.f, bucketSecretValues); n != 1 {
		t.Fatalf("secret_values holds %d values after destroy, want 1", n)
	}
	h.mustOK(versionsCmd(fsmpb.Op_OP_UNDELETE, "s", 1, 2))
	if v1, _ := h.f.Get("s", 1); !v1.Destroyed || v1.Ciphertext != nil || v1.DeletedTime.IsZero() {
		t.Fatalf("undelete touched destroyed v1: %+v", v1)
	}
	if v2, _ := h.f.Get("s", 2); !v2.Destroyed || !v2.DeletedTime.IsZero() {
		t.Fatalf("v2 = %+v", v2)
	}
	md, _ := h.f.Metadata("s")
	if !md.UpdatedTime.Equal(h.now) || md.CurrentVersion != 3 {
		t.Fatalf("metadata = %+v", md)
	}

	// Only missing versions, or a missing secret: not found.
	for _, cmd := range []*fsmpb.Command{
		versionsCmd(fsmpb.Op_OP_DELETE, "s", 7, 8),
		versionsCmd(fsmpb.Op_OP_UNDELETE, "s", 7),
		versionsCmd(fsmpb.Op_OP_DESTROY, "s", 9),
		versionsCmd(fsmpb.Op_OP_DELETE, "none"),
		versionsCmd(fsmpb.Op_OP_UNDELETE, "none", 1),
		versionsCmd(fsmpb.Op_OP_DESTROY, "none", 1),
	} {
		h.mustFail(cmd, ErrNotFound)
	}
	// Metadata-only secret has no current version to delete.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "meta-only"})
	h.mustFail(versionsCmd(fsmpb.Op_OP_DELETE, "meta-only"), ErrNotFound)
}

func TestNotFoundWritesNothing(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v"))
	// Only the applied index and term may differ.
	before := dump(t, h.f, bucketMeta)
	h.now = h.now.Add(time.Hour)
	h.mustFail(versionsCmd(fsmpb.Op_OP_DELETE, "s", 7, 8), ErrNotFound)
	h.mustFail(versionsCmd(fsmpb.Op_OP_DESTROY, "x", 1), ErrNotFound)
	after := dump(t, h.f, bucketMeta)
	if !bytes.Equal(before, after) {
		t.Fatalf("a failed command changed the state")
	}
}

func TestDeleteMetadata(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "a"))
	h.mustOK(putCmd("s", "b"))
	h.mustOK(versionsCmd(fsmpb.Op_OP_DESTROY, "s", 1))
	h.mustOK(putCmd("other", "o"))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: "s"})
	if _, err := h.f.Metadata("s"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Metadata after delete: %v", err)
	}
	if _, err := h.f.Get("s", 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after delete: %v", err)
	}
	if n := bucketLen(t, h.f, bucketSecretValues); n != 1 {
		t.Fatalf("secret_values holds %d values, want only the other secret's", n)
	}
	h.mustFail(&fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: "s"}, ErrNotFound)
	if res := h.mustOK(putCmd("s", "c")); res.Version != 1 {
		t.Fatalf("put after metadata delete: version %d, want 1", res.Version)
	}
}

func TestList(t *testing.T) {
	h := newHarness(t, Options{})
	for _, p := range []string{"secret/a", "secret/b/c", "secret/b/d/e", "secret/b", "secret/ba", "secret/b-x", "other/x", "top", "secret0"} {
		h.mustOK(putCmd(p, "v"))
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"other/", "secret/", "secret0", "top"}},
		{"secret/", []string{"a", "b", "b-x", "b/", "ba"}},
		{"secret", []string{"a", "b", "b-x", "b/", "ba"}},
		{"secret/b/", []string{"c", "d/"}},
		{"secret/b/d/", []string{"e"}},
		{"nope/", nil},
		{"secret/a/", nil},
	} {
		got, err := h.f.List(tc.prefix)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("List(%q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

func TestSys(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, SysRequireAbsent: "core/config", Sys: []*fsmpb.SysEntry{
		{Key: "core/config", Value: []byte("cfg")},
		{Key: "core/keyring", Value: []byte("ring")},
		{Key: "core/empty"},
	}})
	for k, want := range map[string]string{"core/config": "cfg", "core/keyring": "ring", "core/empty": ""} {
		got, err := h.f.SysGet(k)
		if err != nil || string(got) != want || got == nil {
			t.Fatalf("SysGet(%q) = %q (nil=%v), %v", k, got, got == nil, err)
		}
	}
	// A second init finds the key present and writes nothing at all.
	h.mustFail(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, SysRequireAbsent: "core/config", Sys: []*fsmpb.SysEntry{
		{Key: "core/config", Value: []byte("other")},
		{Key: "new", Value: ct("x")},
	}}, ErrAlreadyExists)
	if got, _ := h.f.SysGet("core/config"); string(got) != "cfg" {
		t.Fatalf("conditional put overwrote: %q", got)
	}
	if _, err := h.f.SysGet("new"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("conditional put wrote a sibling: %v", err)
	}
	keys, err := h.f.SysList("core/")
	if err != nil || !reflect.DeepEqual(keys, []string{"core/config", "core/empty", "core/keyring"}) {
		t.Fatalf("SysList = %q, %v", keys, err)
	}
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: []string{"core/keyring", "never-existed"}})
	if _, err := h.f.SysGet("core/keyring"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SysGet after delete: %v", err)
	}
	got, _ := h.f.SysGet("core/config")
	got[0] = 'X'
	if again, _ := h.f.SysGet("core/config"); string(again) != "cfg" {
		t.Fatalf("SysGet aliases storage")
	}
}

// TestSysCAS: a conditional system change takes effect only while every
// expected key holds exactly the expected bytes, and then writes and
// removes all at once; a stale expectation changes nothing. Two changes
// that expect the same value (two logins spending the same use) cannot
// both take effect.
func TestSysCAS(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{
		{Key: "secret-id/a", Value: ct("uses=2")},
		{Key: "secret-id/b", Value: ct("uses=1")},
		{Key: "accessor/b", Value: ct("b")},
	}})
	spend := func(key string, from, to []byte, remove ...string) *fsmpb.Command {
		c := &fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: key, Value: from}}, SysKeys: remove}
		if to != nil {
			c.Sys = []*fsmpb.SysEntry{{Key: key, Value: to}}
		}
		return c
	}
	// Two changes read the same value; the first wins, the second finds it
	// changed and writes nothing, not even its other entry.
	first := spend("secret-id/a", ct("uses=2"), ct("uses=1"))
	first.Sys = append(first.Sys, &fsmpb.SysEntry{Key: "token/t1", Value: ct("t1")})
	h.mustOK(first)
	second := spend("secret-id/a", ct("uses=2"), ct("uses=1"))
	second.Sys = append(second.Sys, &fsmpb.SysEntry{Key: "token/t2", Value: ct("t2")})
	h.mustFail(second, ErrCASMismatch)
	if _, err := h.f.SysGet("token/t2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused cas wrote its token: %v", err)
	}
	if got, _ := h.f.SysGet("secret-id/a"); plainOf(got) != "uses=1" {
		t.Fatalf("after one spend: %q", plainOf(got))
	}
	if got, _ := h.f.SysGet("token/t1"); plainOf(got) != "t1" {
		t.Fatalf("the winning cas did not write its token: %q", plainOf(got))
	}

	// The last use removes the entry and its index together.
	last := spend("secret-id/b", ct("uses=1"), nil, "secret-id/b", "accessor/b")
	last.Sys = []*fsmpb.SysEntry{{Key: "token/t3", Value: ct("t3")}}
	h.mustOK(last)
	for _, k := range []string{"secret-id/b", "accessor/b"} {
		if _, err := h.f.SysGet(k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s after the last use: %v", k, err)
		}
	}
	// An entry that is gone never matches, so a use cannot be spent twice
	// after the removal either.
	h.mustFail(spend("secret-id/b", ct("uses=1"), nil, "secret-id/b"), ErrCASMismatch)
	if _, err := h.f.SysGet("token/t3"); err != nil {
		t.Fatalf("token/t3: %v", err)
	}
	// Expectations are exact bytes: a prefix or a longer value is not it.
	h.mustFail(spend("secret-id/a", ct("uses="), ct("uses=0")), ErrCASMismatch)
	h.mustFail(spend("secret-id/a", ct("uses=1x"), ct("uses=0")), ErrCASMismatch)
	h.mustOK(spend("secret-id/a", ct("uses=1"), ct("uses=0")))

	// Values are held to the same rule as a sys put: sealed only.
	now := h.now.UnixNano()
	forged, err := marshalOpts.Marshal(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, LeaderTimeUnixNano: now,
		SysExpect: []*fsmpb.SysEntry{{Key: "secret-id/a", Value: ct("uses=0")}},
		Sys:       []*fsmpb.SysEntry{{Key: "token/root", Value: []byte(`{"policies":["root"]}`)}}})
	if err != nil {
		t.Fatal(err)
	}
	h.mustOK(putCmd("sealed-from-here", "x"))
	if res := h.applyData(forged); !errors.Is(res.Err, ErrInvalidCommand) {
		t.Fatalf("a plaintext value in a cas: %v", res.Err)
	}
	if _, err := h.f.SysGet("token/root"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused cas stored a plaintext token: %v", err)
	}
}

func TestInvalidCommands(t *testing.T) {
	h := newHarness(t, Options{})
	now := h.now.UnixNano()
	valid := func(c *fsmpb.Command) []byte {
		b, err := marshalOpts.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, data := range map[string][]byte{
		"garbage":            {0xff, 0xff, 0xff},
		"empty":              nil,
		"unknown op":         valid(&fsmpb.Command{Op: 99, LeaderTimeUnixNano: now}),
		"no leader time":     valid(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "a", Ciphertext: ct("x")}),
		"no path":            valid(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Ciphertext: ct("x"), LeaderTimeUnixNano: now}),
		"trailing slash":     valid(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "a/", Ciphertext: ct("x"), LeaderTimeUnixNano: now}),
		"double slash":       valid(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "a//b", Ciphertext: ct("x"), LeaderTimeUnixNano: now}),
		"nul in path":        valid(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "a\x00b", Ciphertext: ct("x"), LeaderTimeUnixNano: now}),
		"no ciphertext":      valid(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "a", LeaderTimeUnixNano: now}),
		"destroy no version": valid(&fsmpb.Command{Op: fsmpb.Op_OP_DESTROY, Path: "a", LeaderTimeUnixNano: now}),
		"version zero":       valid(&fsmpb.Command{Op: fsmpb.Op_OP_DELETE, Path: "a", Versions: []uint64{0}, LeaderTimeUnixNano: now}),
		"sys no entries":     valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, LeaderTimeUnixNano: now}),
		"sys dup":            valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "k"}, {Key: "k"}}, LeaderTimeUnixNano: now}),
		"sys empty key":      valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: []string{""}, LeaderTimeUnixNano: now}),
		"cas no expectation": valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, Sys: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, LeaderTimeUnixNano: now}),
		"cas empty expected": valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k"}}, SysKeys: []string{"k"}, LeaderTimeUnixNano: now}),
		"cas no change":      valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, LeaderTimeUnixNano: now}),
		"cas put and remove": valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, Sys: []*fsmpb.SysEntry{{Key: "j", Value: ct("v")}}, SysKeys: []string{"j"}, LeaderTimeUnixNano: now}),
		"cas dup expect":     valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}, {Key: "k", Value: ct("w")}}, SysKeys: []string{"j"}, LeaderTimeUnixNano: now}),
		"cas dup write":      valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, Sys: []*fsmpb.SysEntry{{Key: "j", Value: ct("v")}, {Key: "j", Value: ct("w")}}, LeaderTimeUnixNano: now}),
		"cas empty key":      valid(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_CAS, SysExpect: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}, SysKeys: []string{""}, LeaderTimeUnixNano: now}),
		"long request id":    valid(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP, RequestId: string(make([]byte, MaxRequestIDLen+1))}),
	} {
		res := h.applyData(data)
		if !errors.Is(res.Err, ErrInvalidCommand) || res.Index != h.idx {
			t.Errorf("%s: result %+v, want ErrInvalidCommand at %d", name, res, h.idx)
		}
		if _, err := DecodeCommand(data); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: DecodeCommand err = %v", name, err)
		}
	}
	if _, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT}); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("EncodeCommand accepted an invalid command: %v", err)
	}
	if _, err := EncodeCommand(nil); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("EncodeCommand(nil) err = %v", err)
	}
	if n := bucketLen(t, h.f, bucketSecretMeta) + bucketLen(t, h.f, bucketSys); n != 0 {
		t.Fatalf("invalid commands wrote %d keys", n)
	}
}

func TestNonCommandLogsAndSkipping(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v1"))
	// Configuration entries only advance the index.
	resps := h.f.ApplyBatch([]*raft.Log{
		{Index: 2, Term: 2, Type: raft.LogConfiguration, Data: []byte("not ours")},
		{Index: 3, Term: 2, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "v2"), h.now)},
		{Index: 4, Term: 2, Type: raft.LogConfiguration},
	})
	if resps[0] != nil || resps[2] != nil {
		t.Fatalf("non-command responses = %v", resps)
	}
	if res := resps[1].(Result); res.Err != nil || res.Version != 2 || res.Index != 3 {
		t.Fatalf("command response = %+v", res)
	}
	if h.f.AppliedIndex() != 4 {
		t.Fatalf("AppliedIndex = %d, want 4", h.f.AppliedIndex())
	}
	// Replayed logs at or below the applied index are skipped: nil, no change.
	before := dump(t, h.f)
	resps = h.f.ApplyBatch([]*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "dup"), h.now)},
		{Index: 3, Term: 2, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "dup"), h.now)},
	})
	if resps[0] != nil || resps[1] != nil {
		t.Fatalf("skipped logs returned %v", resps)
	}
	if resp := h.f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "dup"), h.now)}); resp != nil {
		t.Fatalf("Apply of applied index returned %v", resp)
	}
	if !reflect.DeepEqual(before, dump(t, h.f)) || h.f.AppliedIndex() != 4 {
		t.Fatalf("replay changed the state")
	}
	// A batch straddling the applied index applies only the new part.
	resps = h.f.ApplyBatch([]*raft.Log{
		{Index: 4, Term: 2, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "dup"), h.now)},
		{Index: 5, Term: 3, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "v3"), h.now)},
	})
	if resps[0] != nil || resps[1].(Result).Version != 3 {
		t.Fatalf("straddling batch = %v", resps)
	}
	var term uint64
	if err := h.f.view(func(tx *bolt.Tx) error {
		var err error
		_, term, err = readApplied(tx)
		return err
	}); err != nil || term != 3 {
		t.Fatalf("persisted term = %d, %v; want 3", term, err)
	}
}

func TestNoopOp(t *testing.T) {
	h := newHarness(t, Options{})
	res := h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_NOOP})
	if res.Index != 1 || res.Version != 0 {
		t.Fatalf("noop result %+v", res)
	}
}

func TestRestart(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v1"))
	h.mustOK(putCmd("s", "v2"))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "k", Value: ct("v")}}})
	before := dump(t, h.f)
	h.reopen()
	if h.f.AppliedIndex() != 3 {
		t.Fatalf("AppliedIndex after reopen = %d, want 3", h.f.AppliedIndex())
	}
	if !reflect.DeepEqual(before, dump(t, h.f)) {
		t.Fatal("state changed across reopen")
	}
	// Raft replays from its last snapshot: everything up to 3 is skipped.
	for i := uint64(1); i <= 3; i++ {
		if resp := h.f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "replay"), h.now)}); resp != nil {
			t.Fatalf("replayed index %d returned %v", i, resp)
		}
	}
	if v, _ := h.f.Get("s", 0); v.Version != 2 {
		t.Fatalf("replay wrote version %d", v.Version)
	}
	if res := h.mustOK(putCmd("s", "v3")); res.Version != 3 || res.Index != 4 {
		t.Fatalf("put after restart = %+v", res)
	}
}

func TestCloseIdempotentAndAfterClose(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v"))
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := h.f.Get("s", 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if _, err := h.f.Snapshot(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Snapshot after Close: %v", err)
	}
	resp := h.f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "v"), h.now)})
	if res, ok := resp.(Result); !ok || !errors.Is(res.Err, ErrClosed) {
		t.Fatalf("Apply after Close = %v", resp)
	}
}

func TestOpenLockedAndOptions(t *testing.T) {
	h := newHarness(t, Options{})
	if _, err := Open(h.path, Options{}); err == nil {
		t.Fatal("a second Open of the same file succeeded")
	}
	if _, err := Open(h.path+"2", Options{IdempotencyWindow: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("negative window: %v", err)
	}
}

func TestStorageFailure(t *testing.T) {
	var told []error
	h := newHarness(t, Options{OnFailure: func(err error) { told = append(told, err) }})
	h.mustOK(putCmd("s", "v1"))
	// Pull the database out from under the FSM: every commit now fails, as
	// it would on a full or failing disk.
	if err := h.f.db.Close(); err != nil {
		t.Fatal(err)
	}
	resps := h.f.ApplyBatch([]*raft.Log{
		{Index: 2, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "v2"), h.now)},
		{Index: 3, Type: raft.LogConfiguration},
	})
	if res, ok := resps[0].(Result); !ok || !errors.Is(res.Err, ErrStorage) || res.Index != 2 {
		t.Fatalf("failed batch result = %v", resps[0])
	}
	if resps[1] != nil {
		t.Fatalf("configuration response = %v", resps[1])
	}
	if !errors.Is(h.f.Err(), ErrStorage) {
		t.Fatalf("Err() = %v", h.f.Err())
	}
	if len(told) != 1 || told[0] == nil || errors.Is(told[0], ErrStorage) {
		t.Fatalf("OnFailure was told %v, want bbolt's error once", told)
	}
	if h.f.AppliedIndex() != 1 {
		t.Fatalf("AppliedIndex advanced to %d on a failed commit", h.f.AppliedIndex())
	}
	if _, err := h.f.Snapshot(); !errors.Is(err, ErrStorage) {
		t.Fatalf("Snapshot after failure: %v", err)
	}
	// Later batches are refused too, even though they could commit.
	if res := h.f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: mustEncode(t, putCmd("s", "v2"), h.now)}).(Result); !errors.Is(res.Err, ErrStorage) {
		t.Fatalf("apply after failure = %+v", res)
	}
	// Restart: the node replays the logs it never committed.
	h.reopen()
	if h.f.Err() != nil || h.f.AppliedIndex() != 1 {
		t.Fatalf("after restart: Err=%v applied=%d", h.f.Err(), h.f.AppliedIndex())
	}
	h.idx = 1
	if res := h.mustOK(putCmd("s", "v2")); res.Version != 2 {
		t.Fatalf("replayed put = %+v", res)
	}
}

func mustEncode(t testing.TB, c *fsmpb.Command, now time.Time) []byte {
	t.Helper()
	if c.LeaderTimeUnixNano == 0 {
		c.LeaderTimeUnixNano = now.UnixNano()
	}
	b, err := EncodeCommand(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSysGeneration: the generation that token caches depend on moves with
// every change to the system keys, and only then.
func TestSysGeneration(t *testing.T) {
	h := newHarness(t, Options{})
	g0 := h.f.SysGeneration()
	h.mustOK(putCmd("a/b", "v1"))
	if h.f.SysGeneration() != g0 {
		t.Fatal("a secret write moved the system generation")
	}
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "token/x", Value: ct("{}")}}})
	g1 := h.f.SysGeneration()
	if g1 == g0 {
		t.Fatal("a system write left the generation unchanged")
	}
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: []string{"token/x"}})
	g2 := h.f.SysGeneration()
	if g2 == g1 {
		t.Fatal("a system delete left the generation unchanged")
	}
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if h.f.SysGeneration() == g2 {
		t.Fatal("installing a snapshot left the generation unchanged")
	}
}

// TestStateRefusesUnsealedValues: the state machine holds no key, but it
// refuses every new value that is not laid out as a bound barrier
// ciphertext, so a forged log entry can store neither a plaintext token
// record nor a value sealed before versions were bound.
func TestStateRefusesUnsealedValues(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("first", "sealed"))                       // from here on, only sealed values
	legacy := append([]byte{0, 0, 0, 1}, make([]byte, 40)...) // term 1, unbound
	for name, cmd := range map[string]*fsmpb.Command{
		"plaintext put":     {Op: fsmpb.Op_OP_PUT, Path: "a", Ciphertext: []byte(`{"v":"x"}`)},
		"unbound put":       {Op: fsmpb.Op_OP_PUT, Path: "a", Ciphertext: legacy},
		"short bound put":   {Op: fsmpb.Op_OP_PUT, Path: "a", Ciphertext: []byte{0x80, 0, 0, 1}},
		"plaintext token":   {Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "token/ab", Value: []byte(`{"policies":["root"]}`)}}},
		"unbound sys value": {Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "policy/x", Value: legacy}}},
		"one bad of two":    {Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "token/a", Value: ct("ok")}, {Key: "token/b", Value: []byte("plain")}}},
	} {
		cmd.LeaderTimeUnixNano = h.now.UnixNano()
		data, err := marshalOpts.Marshal(cmd) // as a forger would: EncodeCommand refuses too
		if err != nil {
			t.Fatal(err)
		}
		if res := h.applyData(data); !errors.Is(res.Err, ErrInvalidCommand) {
			t.Errorf("%s: result %v, want ErrInvalidCommand", name, res.Err)
		}
	}
	if _, err := h.f.Get("a", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused put stored a version: %v", err)
	}
	for _, k := range []string{"token/ab", "policy/x", "token/a", "token/b"} {
		if _, err := h.f.SysGet(k); !errors.Is(err, ErrNotFound) {
			t.Errorf("a refused sys put stored %s: %v", k, err)
		}
	}
}

// TestPutVersionConflict: a put sealed for another version than the next
// one writes nothing, is not remembered under its request id, and the same
// request id sealed for the right version then succeeds.
func TestPutVersionConflict(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v1"))
	stale := putCmd("s", "sealed for 1")
	stale.Version, stale.RequestId = 1, "r-conflict"
	h.mustFail(stale, ErrVersionConflict)
	if md, _ := h.f.Metadata("s"); md.CurrentVersion != 1 {
		t.Fatalf("conflicting put changed the secret: current %d", md.CurrentVersion)
	}
	again := putCmd("s", "sealed for 2")
	again.Version, again.RequestId = 2, "r-conflict"
	if res := h.mustOK(again); res.Version != 2 || res.Deduplicated {
		t.Fatalf("retry after a conflict: %+v", res)
	}
	if v, _ := h.f.Get("s", 0); plainOf(v.Ciphertext) != "sealed for 2" {
		t.Fatalf("current = %q", plainOf(v.Ciphertext))
	}
}

// TestOlderLogStillReplays: a log written by a version from before values
// were sealed (plaintext token records, unbound ciphertexts) replays until
// the first command with sealed values; from that index on, unsealed values
// are refused, also after a restart.
func TestOlderLogStillReplays(t *testing.T) {
	h := newHarness(t, Options{})
	legacy := append([]byte{0, 0, 0, 1}, make([]byte, 40)...)
	forge := func(cmd *fsmpb.Command) Result {
		cmd.LeaderTimeUnixNano = h.now.UnixNano()
		data, err := marshalOpts.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		return h.applyData(data)
	}
	if res := forge(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "old", Ciphertext: legacy}); res.Err != nil {
		t.Fatalf("an older version's put: %v", res.Err)
	}
	if res := forge(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "token/old", Value: []byte(`{"policies":["root"]}`)}}}); res.Err != nil {
		t.Fatalf("an older version's token record: %v", res.Err)
	}
	// Key material and deletes never turn the check on.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "core/keyring", Value: []byte("wrapped")}}})
	if res := forge(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "old", Ciphertext: legacy}); res.Err != nil {
		t.Fatalf("a second older put: %v", res.Err)
	}
	first := h.mustOK(putCmd("new", "sealed"))
	h.reopen()
	if res := forge(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "old", Ciphertext: legacy}); !errors.Is(res.Err, ErrInvalidCommand) {
		t.Fatalf("an unsealed put after index %d: %v", first.Index, res.Err)
	}
	if md, err := h.f.Metadata("old"); err != nil || md.CurrentVersion != 2 {
		t.Fatalf("older versions: %+v, %v", md, err)
	}
	if v, err := h.f.SysGet("token/old"); err != nil || string(v) != `{"policies":["root"]}` {
		t.Fatalf("older token record: %q, %v", v, err)
	}
}
