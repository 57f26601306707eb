package fsm

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// viaProto is the reference: decode the whole message, then search.
func viaProto(raw []byte, version uint64) (versionInfo, bool, error) {
	meta := new(fsmpb.SecretMeta)
	if err := proto.Unmarshal(raw, meta); err != nil {
		return versionInfo{}, false, err
	}
	if version == 0 {
		version = meta.GetCurrentVersion()
	}
	vm := findVersion(meta, version)
	if vm == nil {
		return versionInfo{}, false, nil
	}
	return versionInfo{vm.GetVersion(), vm.GetCreatedUnixNano(), vm.GetDeletedUnixNano(), vm.GetDestroyed(), vm.GetValueIndex()}, true, nil
}

// ascending reports whether the decoded versions are strictly ascending,
// as every metadata the FSM writes is (findVersion searches by halves).
func ascending(raw []byte) bool {
	meta := new(fsmpb.SecretMeta)
	if proto.Unmarshal(raw, meta) != nil {
		return false
	}
	vs := meta.GetVersions()
	for i := 1; i < len(vs); i++ {
		if vs[i].GetVersion() <= vs[i-1].GetVersion() {
			return false
		}
	}
	return true
}

func TestLookupVersionMatchesProto(t *testing.T) {
	meta := &fsmpb.SecretMeta{CurrentVersion: 14, OldestVersion: 5, MaxVersions: 10, CreatedUnixNano: 1, UpdatedUnixNano: 2}
	for v := uint64(5); v <= 14; v++ {
		vm := &fsmpb.VersionMeta{Version: v, CreatedUnixNano: int64(v) * 1000}
		if v > 8 { // written after format 2: its value is keyed by index
			vm.ValueIndex = 1<<40 + v
		}
		switch v % 3 {
		case 1:
			vm.DeletedUnixNano = -int64(v) // negative varints take ten bytes
		case 2:
			vm.Destroyed = true
		}
		meta.Versions = append(meta.Versions, vm)
	}
	raw, err := proto.Marshal(meta)
	if err != nil {
		t.Fatal(err)
	}
	for v := uint64(0); v <= 16; v++ {
		want, wantFound, _ := viaProto(raw, v)
		got, found, err := lookupVersion(raw, v)
		if err != nil || found != wantFound || got != want {
			t.Fatalf("version %d: got %+v %v %v, want %+v %v", v, got, found, err, want, wantFound)
		}
	}
	if _, _, err := lookupVersion(raw[:len(raw)-1], 14); err == nil {
		t.Fatal("truncated metadata read without error")
	}
	if _, found, err := lookupVersion(nil, 0); found || err != nil {
		t.Fatalf("empty metadata: found %v, err %v", found, err)
	}
}

// FuzzLookupVersion: lookupVersion never panics, and on every metadata
// proto.Unmarshal accepts with ascending versions it answers as the full
// decode does.
func FuzzLookupVersion(f *testing.F) {
	seed := &fsmpb.SecretMeta{CurrentVersion: 3, Versions: []*fsmpb.VersionMeta{
		{Version: 2, CreatedUnixNano: 7}, {Version: 3, DeletedUnixNano: 9, Destroyed: true, ValueIndex: 12},
	}}
	raw, err := proto.Marshal(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw, uint64(0))
	f.Add(raw, uint64(2))
	f.Add([]byte{0x08, 0x05, 0x08, 0x03, 0x3a, 0x02, 0x08, 0x03}, uint64(0))
	f.Fuzz(func(t *testing.T, raw []byte, version uint64) {
		got, found, err := lookupVersion(raw, version)
		if !ascending(raw) {
			return
		}
		want, wantFound, _ := viaProto(raw, version)
		if err != nil || found != wantFound || got != want {
			t.Fatalf("version %d: got %+v %v %v, want %+v %v", version, got, found, err, want, wantFound)
		}
	})
}

func BenchmarkLookupVersion(b *testing.B) {
	meta := &fsmpb.SecretMeta{CurrentVersion: 10, MaxVersions: 10}
	for v := uint64(1); v <= 10; v++ {
		meta.Versions = append(meta.Versions, &fsmpb.VersionMeta{Version: v, CreatedUnixNano: 1_800_000_000_000_000_000})
	}
	raw, err := proto.Marshal(meta)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := lookupVersion(raw, 0); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := viaProto(raw, 0); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}

// TestCurrentVersion: the one-field read agrees with the full metadata,
// and a missing secret is version 0.
func TestCurrentVersion(t *testing.T) {
	h := newHarness(t, Options{})
	if v, err := h.f.CurrentVersion("s"); err != nil || v != 0 {
		t.Fatalf("no secret: %d, %v", v, err)
	}
	for i := 1; i <= 3; i++ {
		h.mustOK(putCmd("s", "v"))
		md, err := h.f.Metadata("s")
		if err != nil {
			t.Fatal(err)
		}
		if v, err := h.f.CurrentVersion("s"); err != nil || v != md.CurrentVersion || v != uint64(i) {
			t.Fatalf("after %d puts: %d, %v (metadata says %d)", i, v, err, md.CurrentVersion)
		}
	}
}
