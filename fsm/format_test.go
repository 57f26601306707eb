package fsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// writeFormat1 writes the state a format-1 binary leaves: values in
// secret_data under path NUL version, no secret_values, no lease buckets,
// format 1, applied index 10. Secret "a" holds versions 1-3 (max_versions
// 3), "b" version 1.
func writeFormat1(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	secrets := map[string]int{"a": 3, "b": 1}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		for k, v := range map[string]uint64{string(keyFormat): 1, string(keyAppliedIndex): 10, string(keyAppliedTerm): 1} {
			if err := meta.Put([]byte(k), encodeUint64(v)); err != nil {
				return err
			}
		}
		for path, n := range secrets {
			sm := &fsmpb.SecretMeta{CurrentVersion: uint64(n), OldestVersion: 1, MaxVersions: 3, CreatedUnixNano: baseTime.UnixNano()}
			for v := 1; v <= n; v++ {
				sm.Versions = append(sm.Versions, &fsmpb.VersionMeta{Version: uint64(v), CreatedUnixNano: baseTime.UnixNano()})
				if err := tx.Bucket(bucketSecretData).Put(dataKey(path, uint64(v)), ct(path+string(rune('0'+v)))); err != nil {
					return err
				}
			}
			raw, err := proto.Marshal(sm)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketSecretMeta).Put([]byte(path), raw); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// storedFormat reads the format the state is stamped with.
func storedFormat(t *testing.T, f *FSM) uint64 {
	t.Helper()
	var v uint64
	if err := f.view(func(tx *bolt.Tx) error {
		var err error
		v, err = decodeUint64(tx.Bucket(bucketMeta).Get(keyFormat))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// wantValue fails unless version v of path reads as value.
func wantValue(t *testing.T, f *FSM, path string, v uint64, value string) {
	t.Helper()
	got, err := f.Get(path, v)
	if err != nil {
		t.Fatalf("Get(%q, %d): %v", path, v, err)
	}
	if string(got.Ciphertext) != string(ct(value)) {
		t.Fatalf("Get(%q, %d) = %q, want %q", path, v, got.Ciphertext, ct(value))
	}
}

// TestFormat1StateUpgrades: a state written by format 1 opens, is stamped
// 2, and its values stay readable where they are while new versions go to
// secret_values; trimming, destroying and deleting reach the old values
// too, and a snapshot of the mixed state restores whole.
func TestFormat1StateUpgrades(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fsm.db")
	writeFormat1(t, path)
	opts := Options{Logger: testLogger(t)}
	f, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open of a format-1 state: %v", err)
	}
	h := &harness{t: t, f: f, path: path, opts: opts, idx: 10, now: baseTime}
	t.Cleanup(func() { _ = h.f.Close() })
	if v := storedFormat(t, h.f); v != formatVersion {
		t.Fatalf("format after Open = %d, want %d", v, formatVersion)
	}
	wantValue(t, h.f, "a", 0, "a3")
	wantValue(t, h.f, "a", 1, "a1")
	wantValue(t, h.f, "b", 0, "b1")

	// Version 4 of a goes to secret_values; max_versions 3 trims version
	// 1 from secret_data.
	if res := h.mustOK(putCmd("a", "a4")); res.Version != 4 {
		t.Fatalf("put = %+v, want version 4", res)
	}
	wantValue(t, h.f, "a", 0, "a4")
	wantValue(t, h.f, "a", 2, "a2")
	if _, err := h.f.Get("a", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("trimmed version 1: %v", err)
	}
	if n, m := bucketLen(t, h.f, bucketSecretData), bucketLen(t, h.f, bucketSecretValues); n != 3 || m != 1 {
		t.Fatalf("secret_data holds %d, secret_values %d values, want 3 and 1", n, m)
	}
	h.mustOK(versionsCmd(fsmpb.Op_OP_DESTROY, "a", 2))
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: "b"})
	if n := bucketLen(t, h.f, bucketSecretData); n != 1 {
		t.Fatalf("secret_data holds %d values after destroy and delete, want only a's version 3", n)
	}

	dst := newHarness(t, Options{})
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !bytes.Equal(dump(t, h.f), dump(t, dst.f)) {
		t.Fatal("restored mixed state differs from the source")
	}
	wantValue(t, dst.f, "a", 3, "a3")
	wantValue(t, dst.f, "a", 4, "a4")
}

// TestRestoreOfFormat1Snapshot: a snapshot a format-1 node sent (the same
// bbolt file) installs, gets the buckets it lacks and is stamped 2.
func TestRestoreOfFormat1Snapshot(t *testing.T) {
	src := filepath.Join(t.TempDir(), "old.db")
	writeFormat1(t, src)
	snap, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Options{})
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatalf("Restore of a format-1 snapshot: %v", err)
	}
	if v := storedFormat(t, h.f); v != formatVersion {
		t.Fatalf("format after Restore = %d, want %d", v, formatVersion)
	}
	wantValue(t, h.f, "a", 0, "a3")
	h.idx = h.f.AppliedIndex()
	h.mustOK(putCmd("b", "b2"))
	h.mustOK(leasePut(leaseW("x", "g", baseTime.UnixNano())))
	wantValue(t, h.f, "b", 0, "b2")
	wantValue(t, h.f, "b", 1, "b1")
}

// TestNewerFormatRefused: a state of a format this binary does not know
// is refused by Open and by Restore, with a message that names it.
func TestNewerFormatRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fsm.db")
	writeFormat1(t, path)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyFormat, encodeUint64(formatVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	snap, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := Open(path, Options{NoSync: true}); err == nil {
		_ = f.Close()
		t.Fatal("Open accepted a state of a newer format")
	} else if !strings.Contains(err.Error(), "unsupported state format 3") {
		t.Fatalf("Open: %v, want it to name format 3", err)
	}
	h := newHarness(t, Options{})
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(snap))); !errors.Is(err, ErrInvalidSnapshot) {
		t.Fatalf("Restore of a newer format: %v, want ErrInvalidSnapshot", err)
	}
}
