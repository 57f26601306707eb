package snapshotfile

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// writeSnap saves a snapshot of body into dir at t with index idx.
func writeSnap(t *testing.T, dir, node string, at time.Time, idx uint64, body string) Entry {
	t.Helper()
	e, err := Save(dir, node, at, func(w io.Writer) (Header, error) {
		h := Header{Format: Format, NodeID: node, AppliedIndex: idx, CreatedUnix: at.Unix()}
		return h, Write(w, h, hmac.New(sha256.New, []byte("k")), func(w io.Writer) error {
			_, err := io.WriteString(w, body)
			return err
		})
	})
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	return e
}

func TestWriteReadHeaderMAC(t *testing.T) {
	var buf bytes.Buffer
	h := Header{Format: Format, NodeID: "n1", AppliedIndex: 42, CreatedUnix: 7, SealFingerprint: "fp"}
	key := []byte("key")
	if err := Write(&buf, h, hmac.New(sha256.New, key), func(w io.Writer) error {
		_, err := io.WriteString(w, "state")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	got, n, err := ReadHeader(bytes.NewReader(buf.Bytes()))
	if err != nil || *got != h {
		t.Fatalf("ReadHeader: %+v %v", got, err)
	}
	b := buf.Bytes()
	if string(b[n:len(b)-MACSize]) != "state" {
		t.Fatalf("body %q", b[n:len(b)-MACSize])
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(b[:len(b)-MACSize])
	if !hmac.Equal(mac.Sum(nil), b[len(b)-MACSize:]) {
		t.Fatal("the trailer is not the MAC of what precedes it")
	}
	for _, bad := range [][]byte{nil, []byte("nope"), b[:len(Magic)+2], append([]byte(Magic), 0, 0, 0, 0)} {
		if _, _, err := ReadHeader(bytes.NewReader(bad)); err == nil {
			t.Errorf("ReadHeader(%q) accepted", bad)
		}
	}
}

func TestSaveListVerifyPrune(t *testing.T) {
	dir := t.TempDir()
	base := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	var saved []Entry
	for i := range 5 {
		saved = append(saved, writeSnap(t, dir, "node-1/x", base.Add(time.Duration(i)*time.Second), uint64(10+i), fmt.Sprint("body", i)))
	}
	// Files of others are never listed nor pruned.
	other := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(other, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, e := range saved {
		fi, err := os.Stat(e.Path)
		if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != e.Size {
			t.Fatalf("%s: %v %v (size %d)", e.Name, fi, err, e.Size)
		}
		if e.NodeID != "node-1_x" {
			t.Fatalf("node in the name: %q", e.NodeID)
		}
	}
	list, err := List(dir)
	if err != nil || len(list) != 5 {
		t.Fatalf("List: %d %v", len(list), err)
	}
	for i, e := range list {
		if e.Name != saved[4-i].Name {
			t.Fatalf("List[%d] = %s, want %s (newest first)", i, e.Name, saved[4-i].Name)
		}
		h, err := Verify(e)
		if err != nil || h.AppliedIndex != e.AppliedIndex || h.NodeID != "node-1/x" {
			t.Fatalf("Verify %s: %+v %v", e.Name, h, err)
		}
	}

	// A flipped byte, a truncation: BAD without any key.
	b, _ := os.ReadFile(list[0].Path)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(list[0].Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(list[0]); !errors.Is(err, ErrChecksum) {
		t.Fatalf("Verify of a corrupt file: %v", err)
	}
	if err := os.Truncate(list[1].Path, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(list[1]); !errors.Is(err, ErrChecksum) {
		t.Fatalf("Verify of a truncated file: %v", err)
	}

	removed, err := Prune(dir, 3, base.Add(time.Hour))
	if err != nil || len(removed) != 2 || removed[0] != saved[1].Name || removed[1] != saved[0].Name {
		t.Fatalf("Prune: %v %v", removed, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("Prune touched another file: %v", err)
	}
	if list, _ := List(dir); len(list) != 3 {
		t.Fatalf("after Prune: %d snapshots", len(list))
	}
}

func TestSaveFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("boom")
	_, err := Save(dir, "n1", time.Now(), func(w io.Writer) (Header, error) {
		io.WriteString(w, "partial")
		return Header{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Save: %v", err)
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 0 {
		t.Fatalf("a failed Save left %v", des)
	}
	if _, err := Save(filepath.Join(dir, "missing"), "n1", time.Now(), nil); err == nil {
		t.Fatal("Save into a missing directory succeeded")
	}
}

func TestCleanTempOnlyOwn(t *testing.T) {
	dir := t.TempDir()
	names := map[string]bool{
		".coffer-snapshot-n1-123.tmp":   true,  // n1's
		".coffer-snapshot-n1-x-456.tmp": false, // node n1-x's
		".coffer-snapshot-n2-789.tmp":   false,
		"coffer-snapshot-n1-1.tmp":      false,
	}
	for n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := CleanTemp(dir, "n1")
	if err != nil || len(removed) != 1 || removed[0] != ".coffer-snapshot-n1-123.tmp" {
		t.Fatalf("CleanTemp: %v %v", removed, err)
	}
	for n, gone := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); (err != nil) != gone {
			t.Errorf("%s: stat %v, want removed=%v", n, err, gone)
		}
	}
}

func TestListMalformedNames(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"coffer-snapshot-garbage.snap", "coffer-snapshot-20261207T020000.000Z-1-n1-" + strings.Repeat("z", 64) + ".snap"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	list, err := List(dir)
	if err != nil || len(list) != 2 {
		t.Fatalf("List: %v %v", list, err)
	}
	for _, e := range list {
		if e.NameErr == nil {
			t.Errorf("%s parsed", e.Name)
		}
		if _, err := Verify(e); err == nil {
			t.Errorf("%s verified", e.Name)
		}
	}
	if removed, err := Prune(dir, 0, time.Now()); err != nil || len(removed) != 0 {
		t.Fatalf("Prune removed malformed names: %v %v", removed, err)
	}
}

func FuzzReadHeader(f *testing.F) {
	var buf bytes.Buffer
	_ = Write(&buf, Header{Format: Format, NodeID: "n1"}, hmac.New(sha256.New, nil), func(io.Writer) error { return nil })
	f.Add(buf.Bytes())
	f.Add([]byte(Magic + "\x00\x00\x00\x02{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ReadHeader(bytes.NewReader(b))
		if err == nil && (h == nil || n > int64(len(b))) {
			t.Fatalf("header %v, %d of %d bytes", h, n, len(b))
		}
	})
}

func FuzzParseName(f *testing.F) {
	f.Add(Name(time.Now(), Header{AppliedIndex: 9, NodeID: "a-b"}, make([]byte, 32)))
	f.Add("coffer-snapshot-x.snap")
	f.Fuzz(func(t *testing.T, name string) {
		e, err := ParseName(name)
		if err != nil {
			return
		}
		again := Name(e.Time, Header{AppliedIndex: e.AppliedIndex, NodeID: e.NodeID}, mustHex(t, e.SHA256))
		if again != name {
			t.Fatalf("ParseName(%q) round-trips to %q", name, again)
		}
	})
}

func mustHex(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSharedDirConcurrentPrune: two nodes saving and pruning in one
// directory at once leave exactly the newest keep files of all.
func TestSharedDirConcurrentPrune(t *testing.T) {
	dir := t.TempDir()
	base := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	const keep, each = 3, 20
	var wg sync.WaitGroup
	for node := range 2 {
		wg.Go(func() {
			for i := range each {
				at := base.Add(time.Duration(2*i+node) * time.Millisecond)
				if _, err := Save(dir, fmt.Sprint("n", node), at, func(w io.Writer) (Header, error) {
					h := Header{Format: Format, NodeID: fmt.Sprint("n", node), AppliedIndex: uint64(i)}
					return h, Write(w, h, hmac.New(sha256.New, nil), func(io.Writer) error { return nil })
				}); err != nil {
					t.Error(err)
					return
				}
				if _, err := Prune(dir, keep, at); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	list, err := List(dir)
	if err != nil || len(list) != keep {
		t.Fatalf("List: %d files, %v", len(list), err)
	}
	for i, e := range list {
		// The newest: the last of n1 (2*19+1 ms), n0 (38 ms), n1 (37 ms).
		want := base.Add(time.Duration(2*each-1-i) * time.Millisecond)
		if !e.Time.Equal(want) {
			t.Errorf("kept %d is of %v, want %v", i, e.Time, want)
		}
	}
}

// TestPruneKeepsTheSnapshotJustTaken: names dated in the future (a node
// whose clock was ahead, a clock stepped back since, or files planted in
// the directory) must not outrank the snapshot a node has just taken:
// before, retention removed every new snapshot right after it was
// written, and kept the future-dated ones forever.
func TestPruneKeepsTheSnapshotJustTaken(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	var future []Entry
	for i := range 3 {
		future = append(future, writeSnap(t, dir, "ahead", now.AddDate(1, 0, i), uint64(i+1), "old state"))
	}
	var fresh []Entry
	for i := range 3 {
		at := now.Add(time.Duration(i) * time.Minute)
		fresh = append(fresh, writeSnap(t, dir, "n1", at, uint64(100+i), fmt.Sprint("new state ", i)))
		removed, err := Prune(dir, 3, at)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range removed {
			for _, f := range fresh {
				if name == f.Name {
					t.Fatalf("Prune removed %s, a snapshot dated up to now, and kept future-dated ones", name)
				}
			}
		}
	}
	list, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for _, e := range list {
		kept[e.Name] = true
	}
	if len(list) != 3 {
		t.Fatalf("%d files kept, want 3", len(list))
	}
	for _, f := range fresh {
		if !kept[f.Name] {
			t.Errorf("the fresh snapshot %s was removed", f.Name)
		}
	}
	if e, ok := Newest(list, now.Add(2*time.Minute)); !ok || e.Name != fresh[2].Name {
		t.Errorf("Newest = %s %v, want the newest not dated in the future, %s", e.Name, ok, fresh[2].Name)
	}
	if _, ok := Newest([]Entry{future[0]}, now); ok {
		t.Error("Newest returned a snapshot dated in the future")
	}
}

// TestVerifyRefusesARenamedSnapshot: the SHA-256 in a name covers the
// file's bytes, not its name: an old snapshot renamed with a newer time
// and index keeps a matching checksum. Verify must compare the name with
// the header, or `snapshot list` shows the old state as the newest OK one
// and the restore drill ("pick the newest OK file") restores it.
func TestVerifyRefusesARenamedSnapshot(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	old := writeSnap(t, dir, "n1", at, 10, "old state")
	for what, name := range map[string]string{
		"newer time and index": fmt.Sprintf("%s%s-%d-%s-%s%s", Prefix, at.Add(time.Hour).Format(timeLayout), 99, "n1", old.SHA256, Ext),
		"newer index":          fmt.Sprintf("%s%s-%d-%s-%s%s", Prefix, at.Format(timeLayout), 99, "n1", old.SHA256, Ext),
		"newer time":           fmt.Sprintf("%s%s-%d-%s-%s%s", Prefix, at.Add(time.Hour).Format(timeLayout), 10, "n1", old.SHA256, Ext),
		"another node":         fmt.Sprintf("%s%s-%d-%s-%s%s", Prefix, at.Format(timeLayout), 10, "n2", old.SHA256, Ext),
	} {
		path := filepath.Join(dir, name)
		if err := os.Link(old.Path, path); err != nil {
			t.Fatal(err)
		}
		e, err := ParseName(name)
		if err != nil {
			t.Fatal(err)
		}
		e.Path = path
		if _, err := Verify(e); err == nil {
			t.Errorf("%s: a renamed snapshot verified", what)
		}
		os.Remove(path)
	}
	if _, err := Verify(old); err != nil {
		t.Fatalf("the snapshot under its own name: %v", err)
	}
}

// TestVerifyDoesNotOpenAFIFO: a named pipe put under a snapshot's name
// between List and Verify (List saw a regular file) must be refused at
// once: opened for reading it would block `snapshot list` until someone
// writes into it.
func TestVerifyDoesNotOpenAFIFO(t *testing.T) {
	dir := t.TempDir()
	good := writeSnap(t, dir, "n1", time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC), 10, "state")
	if err := os.Remove(good.Path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(good.Path, 0o600); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := Verify(good); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a FIFO verified")
		}
	case <-time.After(10 * time.Second):
		// Unblock the reader so that the test ends without a leak.
		if f, err := os.OpenFile(good.Path, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Fatal("Verify blocked opening a FIFO")
	}
}

// TestReadLayout: the body of a Format 2 file lies between the header and
// the MAC, that of a Format 1 file runs to the end; a Format 2 file too
// short for its MAC, or without the magic, is refused.
func TestReadLayout(t *testing.T) {
	var buf bytes.Buffer
	body := "the state's bytes"
	h := Header{Format: Format, NodeID: "n1", AppliedIndex: 7}
	if err := Write(&buf, h, hmac.New(sha256.New, []byte("k")), func(w io.Writer) error {
		_, err := io.WriteString(w, body)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := ReadLayout(bytes.NewReader(b), int64(len(b)))
	if err != nil || !l.MAC || l.Header != h || string(b[l.BodyOffset:l.BodyOffset+l.BodyLen]) != body || l.BodyOffset+l.BodyLen+MACSize != int64(len(b)) {
		t.Fatalf("format 2: %+v, %v", l, err)
	}
	old := bytes.Replace(b[:len(b)-MACSize], []byte(`"format":2`), []byte(`"format":1`), 1)
	l, err = ReadLayout(bytes.NewReader(old), int64(len(old)))
	if err != nil || l.MAC || string(old[l.BodyOffset:]) != body || l.BodyLen != int64(len(body)) {
		t.Fatalf("format 1: %+v, %v", l, err)
	}
	short := b[:l.BodyOffset+MACSize-1]
	if _, err := ReadLayout(bytes.NewReader(short), int64(len(short))); !errors.Is(err, ErrTruncated) {
		t.Fatalf("a file shorter than its MAC: %v", err)
	}
	if _, err := ReadLayout(bytes.NewReader(b[1:]), int64(len(b)-1)); !errors.Is(err, ErrNotSnapshot) {
		t.Fatalf("no magic: %v", err)
	}
}

// FuzzReadLayout: whatever the bytes, a layout that is read lies within
// them.
func FuzzReadLayout(f *testing.F) {
	var buf bytes.Buffer
	_ = Write(&buf, Header{Format: Format, NodeID: "n1"}, hmac.New(sha256.New, nil), func(w io.Writer) error {
		_, err := w.Write(bytes.Repeat([]byte{1}, 100))
		return err
	})
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:buf.Len()-40])
	f.Add([]byte(Magic + "\x00\x00\x00\x0c{\"format\":1}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ReadLayout(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		end := l.BodyOffset + l.BodyLen
		if l.MAC {
			end += MACSize
		}
		if l.BodyOffset <= 0 || l.BodyLen < 0 || end != int64(len(b)) {
			t.Fatalf("layout %+v of %d bytes", l, len(b))
		}
	})
}
