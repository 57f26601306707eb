package fsm

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"testing"
	"time"

	"coffer/fsm/fsmpb"
)

func u32(v uint32) *uint32 { return &v }
func i64(v int64) *int64   { return &v }
func bptr(v bool) *bool    { return &v }

func metaCmd(path string, u *fsmpb.MetadataUpdate) *fsmpb.Command {
	return &fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: path, Metadata: u}
}

// TestMetadataUpdate: an update changes only the settings it holds; custom
// metadata is replaced, merged key by key or cleared; a patch (must_exist)
// of a missing secret writes nothing.
func TestMetadataUpdate(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v1"))
	h.mustOK(metaCmd("s", &fsmpb.MetadataUpdate{MaxVersions: u32(4), CasRequired: bptr(true), ClearCustomMetadata: true, CustomMetadata: map[string]string{"owner": "ops", "tier": "1"}}))
	md, err := h.f.Metadata("s")
	if err != nil {
		t.Fatal(err)
	}
	if md.MaxVersions != 4 || !md.CASRequired || !maps.Equal(md.CustomMetadata, map[string]string{"owner": "ops", "tier": "1"}) || md.DeleteVersionAfter != 0 {
		t.Fatalf("after the first update: %+v", md)
	}
	// Only delete_version_after: the rest stays.
	h.mustOK(metaCmd("s", &fsmpb.MetadataUpdate{DeleteVersionAfterNanos: i64(int64(time.Hour))}))
	// A merge: set one key, remove another.
	h.mustOK(metaCmd("s", &fsmpb.MetadataUpdate{CustomMetadata: map[string]string{"team": "red"}, RemoveCustomMetadata: []string{"tier", "absent"}}))
	md, _ = h.f.Metadata("s")
	if md.MaxVersions != 4 || !md.CASRequired || md.DeleteVersionAfter != time.Hour || !maps.Equal(md.CustomMetadata, map[string]string{"owner": "ops", "team": "red"}) {
		t.Fatalf("after the merges: %+v", md)
	}
	// Get carries the custom metadata.
	if v, err := h.f.Get("s", 0); err != nil || !maps.Equal(v.CustomMetadata, md.CustomMetadata) {
		t.Fatalf("Get custom metadata = %v, %v", v, err)
	}
	// An old-form command (no metadata) sets max_versions and cas_required
	// as before and leaves the new settings alone.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", MaxVersions: 0, CasRequired: false})
	md, _ = h.f.Metadata("s")
	if md.MaxVersions != 4 || md.CASRequired || md.DeleteVersionAfter != time.Hour || len(md.CustomMetadata) != 2 {
		t.Fatalf("after an old-form write: %+v", md)
	}
	// Clearing.
	h.mustOK(metaCmd("s", &fsmpb.MetadataUpdate{ClearCustomMetadata: true, DeleteVersionAfterNanos: i64(0)}))
	md, _ = h.f.Metadata("s")
	if md.CustomMetadata != nil || md.DeleteVersionAfter != 0 {
		t.Fatalf("after clearing: %+v", md)
	}
	if v, _ := h.f.Get("s", 0); v.CustomMetadata != nil {
		t.Fatalf("Get after clearing: %v", v.CustomMetadata)
	}

	before := dump(t, h.f, bucketMeta)
	h.mustFail(metaCmd("missing", &fsmpb.MetadataUpdate{MaxVersions: u32(3), MustExist: true}), ErrNotFound)
	// Over the key limit after the merge: nothing changes.
	many := make(map[string]string)
	for i := range MaxCustomMetadataKeys + 1 {
		many[string(rune('A'+i))] = "x"
	}
	h.mustFail(metaCmd("s", &fsmpb.MetadataUpdate{CustomMetadata: many, MaxVersions: u32(2)}), ErrInvalidCommand)
	if !bytes.Equal(dump(t, h.f, bucketMeta), before) {
		t.Fatal("a refused metadata update changed the state")
	}
	// Without must_exist an update creates the secret's metadata.
	h.mustOK(metaCmd("fresh", &fsmpb.MetadataUpdate{CustomMetadata: map[string]string{"a": "b"}}))
	if md, err := h.f.Metadata("fresh"); err != nil || md.CurrentVersion != 0 || md.MaxVersions != DefaultMaxVersions || md.CustomMetadata["a"] != "b" {
		t.Fatalf("fresh: %+v, %v", md, err)
	}
}

// TestDeleteVersionAfter: a version written while delete_version_after is
// set carries its deletion time from its creation; a delete before that
// time deletes it now; undelete clears it; versions written before the
// setting keep none.
func TestDeleteVersionAfter(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("s", "v1"))
	h.mustOK(metaCmd("s", &fsmpb.MetadataUpdate{DeleteVersionAfterNanos: i64(int64(time.Minute))}))
	h.now = h.now.Add(time.Second)
	created := h.now
	h.mustOK(putCmd("s", "v2"))
	v1, _ := h.f.Get("s", 1)
	v2, err := h.f.Get("s", 2)
	if err != nil {
		t.Fatal(err)
	}
	if !v1.DeletedTime.IsZero() {
		t.Fatalf("v1 got a deletion time: %v", v1.DeletedTime)
	}
	if want := created.Add(time.Minute); !v2.DeletedTime.Equal(want) {
		t.Fatalf("v2 deletion time %v, want %v", v2.DeletedTime, want)
	}
	if v2.Deleted(created.Add(59*time.Second)) || !v2.Deleted(created.Add(time.Minute)) {
		t.Fatal("v2 must count as deleted from its deletion time on, not before")
	}
	// A delete before the deletion time deletes it at the delete's time.
	h.now = h.now.Add(10 * time.Second)
	h.mustOK(versionsCmd(fsmpb.Op_OP_DELETE, "s"))
	if v2, _ = h.f.Get("s", 2); !v2.DeletedTime.Equal(h.now) {
		t.Fatalf("deleted at %v, want %v", v2.DeletedTime, h.now)
	}
	h.mustOK(versionsCmd(fsmpb.Op_OP_UNDELETE, "s", 2))
	if v2, _ = h.f.Get("s", 2); !v2.DeletedTime.IsZero() {
		t.Fatalf("undelete left %v", v2.DeletedTime)
	}
	// Both replicas compute the same time: it comes from the leader's clock.
	if md, _ := h.f.Metadata("s"); md.DeleteVersionAfter != time.Minute {
		t.Fatalf("DeleteVersionAfter = %v", md.DeleteVersionAfter)
	}
}

// TestOldFormatStillApplies: commands and snapshots written before custom
// metadata and delete_version_after existed (no fields 16 of Command, 8
// and 9 of SecretMeta) replay and restore into the same state, and the new
// settings start unset.
func TestOldFormatStillApplies(t *testing.T) {
	old := newHarness(t, Options{})
	forge := func(h *harness, cmd *fsmpb.Command) {
		t.Helper()
		cmd.LeaderTimeUnixNano = h.now.UnixNano()
		data, err := marshalOpts.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if res := h.applyData(data); res.Err != nil {
			t.Fatalf("%v: %v", cmd.Op, res.Err)
		}
	}
	forge(old, putCmd("s", "v1"))
	forge(old, &fsmpb.Command{Op: fsmpb.Op_OP_PUT_METADATA, Path: "s", MaxVersions: 3, CasRequired: true})
	forge(old, &fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: "s", Ciphertext: ct("v2"), HasCas: true, Cas: 1})
	snap := snapshotBytes(t, old.f)

	fresh := newHarness(t, Options{})
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	fresh.now, fresh.idx = old.now, old.idx
	md, err := fresh.f.Metadata("s")
	if err != nil {
		t.Fatal(err)
	}
	if md.CurrentVersion != 2 || md.MaxVersions != 3 || !md.CASRequired || md.CustomMetadata != nil || md.DeleteVersionAfter != 0 {
		t.Fatalf("restored old metadata: %+v", md)
	}
	if v, err := fresh.f.Get("s", 0); err != nil || !v.DeletedTime.IsZero() || v.CustomMetadata != nil || plainOf(v.Ciphertext) != "v2" {
		t.Fatalf("restored old version: %+v, %v", v, err)
	}
	// New commands work on the old state.
	fresh.mustOK(metaCmd("s", &fsmpb.MetadataUpdate{CustomMetadata: map[string]string{"k": "v"}, MustExist: true}))
	c := putCmd("s", "v3")
	c.HasCas, c.Cas = true, 2
	fresh.mustOK(c)
	if md, _ := fresh.f.Metadata("s"); md.CurrentVersion != 3 || !md.CASRequired || md.CustomMetadata["k"] != "v" {
		t.Fatalf("after new commands: %+v", md)
	}
	// A custom-metadata-free secret decodes without the new fields on the
	// fast Get path, too.
	if _, err := customMetadata(nil); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(fresh.apply(metaCmd("nope", &fsmpb.MetadataUpdate{MustExist: true})).Err, ErrNotFound) {
		t.Fatal("patch of a missing secret succeeded")
	}
}

// TestKVConfig: a mount's configuration gives its secrets their defaults:
// max_versions for secrets without their own (those created after the
// mount was configured), cas_required for every write, and the shorter of
// the two delete_version_after settings; it survives a snapshot.
func TestKVConfig(t *testing.T) {
	h := newHarness(t, Options{})
	h.mustOK(putCmd("secret/old", "v1"))
	if cfg, err := h.f.KVConfig("secret/"); err != nil || *cfg != (KVConfig{}) {
		t.Fatalf("unset config = %+v, %v", cfg, err)
	}
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_KV_CONFIG, Path: "secret/", Metadata: &fsmpb.MetadataUpdate{
		MaxVersions: u32(3), CasRequired: bptr(true), DeleteVersionAfterNanos: i64(int64(time.Hour)),
	}})
	// Only what an update holds changes.
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_KV_CONFIG, Path: "secret/", Metadata: &fsmpb.MetadataUpdate{MaxVersions: u32(2)}})
	if cfg, _ := h.f.KVConfig("secret/"); *cfg != (KVConfig{MaxVersions: 2, CASRequired: true, DeleteVersionAfter: time.Hour}) {
		t.Fatalf("config = %+v", cfg)
	}
	h.mustFail(putCmd("secret/new", "v1"), ErrCASRequired)
	cas := func(path, v string, n uint64) *fsmpb.Command {
		c := putCmd(path, v)
		c.HasCas, c.Cas = true, n
		return c
	}
	for i := range uint64(4) {
		h.mustOK(cas("secret/new", "v", i))
	}
	md, _ := h.f.Metadata("secret/new")
	if md.MaxVersions != 0 || len(md.Versions) != 2 || md.OldestVersion != 3 {
		t.Fatalf("new secret under max_versions=2: %+v", md)
	}
	if d := md.Versions[1].DeletedTime.Sub(md.Versions[1].CreatedTime); d != time.Hour {
		t.Fatalf("deletion after %v, want the mount's 1h", d)
	}
	// The secret created before keeps its own max_versions (10).
	for i := range uint64(4) {
		h.mustOK(cas("secret/old", "v", i+1))
	}
	if md, _ := h.f.Metadata("secret/old"); md.MaxVersions != DefaultMaxVersions || len(md.Versions) != 5 {
		t.Fatalf("old secret: %+v", md)
	}
	// A secret's shorter delete_version_after wins; a longer one does not.
	for _, tc := range []struct{ own, want time.Duration }{{30 * time.Minute, 30 * time.Minute}, {2 * time.Hour, time.Hour}} {
		h.mustOK(metaCmd("secret/new", &fsmpb.MetadataUpdate{DeleteVersionAfterNanos: i64(int64(tc.own))}))
		cur, _ := h.f.Metadata("secret/new")
		h.mustOK(cas("secret/new", "v", cur.CurrentVersion))
		v, _ := h.f.Get("secret/new", 0)
		if d := v.DeletedTime.Sub(v.CreatedTime); d != tc.want {
			t.Fatalf("own %v: deletion after %v, want %v", tc.own, d, tc.want)
		}
	}
	// Another mount is not configured by it.
	if cfg, _ := h.f.KVConfig("other/"); *cfg != (KVConfig{}) {
		t.Fatalf("other mount: %+v", cfg)
	}
	if _, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT_KV_CONFIG, Path: "secret/app", LeaderTimeUnixNano: 1}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("config of a path that is not a mount: %v", err)
	}

	fresh := newHarness(t, Options{})
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := fresh.f.KVConfig("secret/"); *cfg != (KVConfig{MaxVersions: 2, CASRequired: true, DeleteVersionAfter: time.Hour}) {
		t.Fatalf("restored config = %+v", cfg)
	}
}
