package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"coffer/fsm/fsmpb"
)

// inspectFixture is a state with every kind of record, its snapshot and
// what Inspect must find in it.
type inspectFixture struct {
	h                         *harness
	snap                      []byte
	secrets, versions, destr  int64
	dataKeys, dataValueBytes  int64
	valueLen                  int
	leaseKeys, sysKeys, idems int64
}

// newInspectFixture writes secrets secrets of three versions each,
// destroys the first version of every tenth, and adds system entries and
// leases.
func newInspectFixture(t testing.TB, secrets int) *inspectFixture {
	t.Helper()
	h := newHarness(t, Options{NoSync: true})
	fx := &inspectFixture{h: h}
	for i := range secrets {
		for v := 1; v <= 3; v++ {
			val := fmt.Sprintf("value-%05d-%d", i, v)
			fx.valueLen = len(ct(val))
			h.mustOK(putCmd(fmt.Sprintf("secret/app/%05d", i), val))
		}
		if i%10 == 0 {
			h.mustOK(versionsCmd(fsmpb.Op_OP_DESTROY, fmt.Sprintf("secret/app/%05d", i), 1))
			fx.destr++
		}
	}
	fx.secrets, fx.versions = int64(secrets), int64(3*secrets)
	fx.dataKeys = fx.versions - fx.destr
	fx.dataValueBytes = fx.dataKeys * int64(fx.valueLen)
	h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: "core/keyring", Value: []byte("wrapped")}, {Key: "policy/a", Value: ct("p")}}})
	fx.sysKeys = 2
	h.mustOK(leasePut(leaseW("database/creds/app/1", "app", 10), leaseW("database/creds/app/2", "app", 20)))
	fx.leaseKeys = 2
	fx.snap = snapshotBytes(t, h.f)
	return fx
}

func bucketByName(ins *Inspection, name string) *BucketStats {
	for i := range ins.Buckets {
		if ins.Buckets[i].Name == name {
			return &ins.Buckets[i]
		}
	}
	return nil
}

// TestInspectReportsState: Inspect of a real snapshot reports its applied
// index, format, secrets and versions, and per bucket the keys and bytes
// bbolt itself counts; the stored bytes are the buckets' sum, and the
// free pages are those bbolt finds free when it opens the file.
func TestInspectReportsState(t *testing.T) {
	fx := newInspectFixture(t, 300)
	path := writeFile(t, fx.snap)
	ins, err := Inspect(path)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if ins.AppliedIndex != fx.h.f.AppliedIndex() || ins.AppliedTerm != 1 || ins.Format != formatVersion {
		t.Fatalf("index %d term %d format %d, want %d 1 %d", ins.AppliedIndex, ins.AppliedTerm, ins.Format, fx.h.f.AppliedIndex(), formatVersion)
	}
	if ins.Secrets != fx.secrets || ins.Versions != fx.versions || ins.DestroyedVersions != fx.destr {
		t.Fatalf("secrets %d versions %d destroyed %d, want %d %d %d", ins.Secrets, ins.Versions, ins.DestroyedVersions, fx.secrets, fx.versions, fx.destr)
	}
	if ins.FileBytes != int64(len(fx.snap)) {
		t.Fatalf("FileBytes %d, want %d", ins.FileBytes, len(fx.snap))
	}
	data := bucketByName(ins, "secret_values")
	if data == nil || data.Keys != fx.dataKeys || data.ValueBytes != fx.dataValueBytes {
		t.Fatalf("secret_values %+v, want %d keys and %d value bytes", data, fx.dataKeys, fx.dataValueBytes)
	}
	for name, want := range map[string]int64{"secret_meta": fx.secrets, "sys": fx.sysKeys, "lease": fx.leaseKeys} {
		if b := bucketByName(ins, name); b == nil || b.Keys != want {
			t.Errorf("%s: %+v, want %d keys", name, b, want)
		}
	}

	// Cross-check with bbolt's own view of the same file.
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sum int64
	if err := db.View(func(tx *bolt.Tx) error {
		names := 0
		err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			names++
			st := bucketByName(ins, string(name))
			if st == nil {
				return fmt.Errorf("bucket %s not reported", name)
			}
			if st.Unexpected {
				return fmt.Errorf("coffer's bucket %s reported as unexpected", name)
			}
			var kb, vb int64
			if err := b.ForEach(func(k, v []byte) error { kb += int64(len(k)); vb += int64(len(v)); return nil }); err != nil {
				return err
			}
			if int64(b.Stats().KeyN) != st.Keys || kb != st.KeyBytes || vb != st.ValueBytes {
				return fmt.Errorf("%s: reported %+v, bbolt counts %d keys, %d key bytes, %d value bytes", name, st, b.Stats().KeyN, kb, vb)
			}
			sum += kb + vb
			return nil
		})
		if err == nil && names != len(ins.Buckets) {
			err = fmt.Errorf("%d buckets reported, bbolt has %d", len(ins.Buckets), names)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if ins.StoredBytes != sum || ins.StoredBytes > ins.FileBytes {
		t.Fatalf("StoredBytes %d, bbolt's sum %d, file %d", ins.StoredBytes, sum, ins.FileBytes)
	}
	// Opened writable, bbolt rebuilds its freelist from the pages no
	// tree reaches (the snapshot keeps none on disk; NoFreelistSync, or
	// bbolt would write it into one of them).
	if free := uint64(db.Stats().FreePageN); ins.FreePages != free || ins.UsedPages+ins.FreePages != ins.Pages || int64(ins.Pages)*ins.PageSize > ins.FileBytes {
		t.Fatalf("pages %d used %d free %d (bbolt: %d free), page size %d, file %d", ins.Pages, ins.UsedPages, ins.FreePages, free, ins.PageSize, ins.FileBytes)
	}
}

// TestInspectCountsFreePages: the live database, not compacted, keeps the
// pages a churn freed; Inspect counts them as bbolt does.
func TestInspectCountsFreePages(t *testing.T) {
	h := newHarness(t, Options{NoSync: true})
	for i := range 500 {
		h.mustOK(putCmd(fmt.Sprintf("s/%04d", i), strings.Repeat("x", 200)))
	}
	for i := range 500 {
		h.mustOK(&fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: fmt.Sprintf("s/%04d", i)})
	}
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(h.path)
	if err != nil {
		t.Fatal(err)
	}
	h.reopen()
	path := writeFile(t, raw)
	ins, err := Inspect(path)
	if err != nil {
		t.Fatalf("Inspect of a churned database: %v", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true})
	if err != nil {
		t.Fatal(err)
	}
	free := uint64(db.Stats().FreePageN)
	db.Close()
	if ins.FreePages == 0 || ins.FreePages != free || ins.Secrets != 0 {
		t.Fatalf("free pages %d (bbolt: %d), secrets %d; want the churn's free pages and no secret", ins.FreePages, free, ins.Secrets)
	}
}

// setBoltMeta edits both meta pages of a bbolt file and fixes their
// checksums, as a crafted file would.
func setBoltMeta(raw []byte, pageSize int, edit func(meta []byte)) {
	for i := range 2 {
		m := raw[i*pageSize+boltPageHeader:]
		edit(m)
		h := fnv.New64a()
		h.Write(m[:56])
		binary.LittleEndian.PutUint64(m[56:], h.Sum64())
	}
}

// firstPage returns the first page of raw, from 2 on, whose flags are
// flags (-1 if none).
func firstPage(raw []byte, pageSize int, flags uint16) int {
	for id := 2; (id+1)*pageSize <= len(raw); id++ {
		p := raw[id*pageSize:]
		if binary.LittleEndian.Uint64(p) == uint64(id) && binary.LittleEndian.Uint16(p[8:]) == flags {
			return id
		}
	}
	return -1
}

// rootPage returns the root bucket's page of raw (from meta 0).
func rootPage(raw []byte, pageSize int) int {
	return int(binary.LittleEndian.Uint64(raw[boltPageHeader+16:]))
}

// TestInspectRefusesDamagedFiles: truncated, flipped, crafted or foreign
// files fail with one line wrapping ErrInvalidSnapshot, never a panic or a
// fault; Inspect and InspectSnapshot agree.
func TestInspectRefusesDamagedFiles(t *testing.T) {
	fx := newInspectFixture(t, 300)
	good := fx.snap
	const ps = 4096
	if len(good) < 8*ps {
		t.Fatalf("the fixture's snapshot is only %d bytes", len(good))
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	branch := firstPage(good, ps, boltBranchPage)
	if branch < 0 {
		t.Fatal("the fixture's snapshot has no branch page")
	}
	cases := []struct {
		name string
		data []byte
		want string // in the error
	}{
		{"empty", nil, "too short"},
		{"one page", good[:ps], "truncated"},
		{"truncated half", good[:len(good)/2], "truncated"},
		{"truncated last page", good[:len(good)-ps], "truncated"},
		{"truncated mid page", good[:len(good)-100], "truncated"},
		{"wrong magic", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[boltPageHeader:], 0xdeadbeef)
			binary.LittleEndian.PutUint32(b[ps+boltPageHeader:], 0xdeadbeef)
			return b
		}), "meta page"},
		{"meta checksums", mutate(func(b []byte) []byte {
			b[boltPageHeader+60]++
			b[ps+boltPageHeader+60]++
			return b
		}), "meta page"},
		{"garbage", bytes.Repeat([]byte{0x5a}, 8*ps), "meta page"},
		{"root out of range", mutate(func(b []byte) []byte {
			setBoltMeta(b, ps, func(m []byte) { binary.LittleEndian.PutUint64(m[16:], 1<<40) })
			return b
		}), "outside the file's pages"},
		{"root is a meta page", mutate(func(b []byte) []byte {
			setBoltMeta(b, ps, func(m []byte) { binary.LittleEndian.PutUint64(m[16:], 1) })
			return b
		}), "outside the file's pages"},
		{"high-water mark past the end", mutate(func(b []byte) []byte {
			setBoltMeta(b, ps, func(m []byte) { binary.LittleEndian.PutUint64(m[40:], uint64(len(good)/ps+5)) })
			return b
		}), "truncated"},
		{"odd page size", mutate(func(b []byte) []byte {
			setBoltMeta(b, ps, func(m []byte) { binary.LittleEndian.PutUint32(m[8:], 3000) })
			return b
		}), "page size"},
		{"branch points to itself", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[branch*ps+boltPageHeader+8:], uint64(branch))
			return b
		}), "reached twice"},
		{"branch past the file", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[branch*ps+boltPageHeader+8:], 1<<50)
			return b
		}), "outside the file's pages"},
		{"empty branch", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[branch*ps+10:], 0)
			return b
		}), "empty"},
		{"too many elements", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[branch*ps+10:], 0xffff)
			return b
		}), "do not fit"},
		{"key past the page", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[branch*ps+boltPageHeader+4:], 1<<20)
			return b
		}), "ends past the page"},
		{"page names another id", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[branch*ps:], uint64(branch+1))
			return b
		}), "says it is page"},
		{"overflow past the end", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[branch*ps+12:], 1<<30)
			return b
		}), "run past"},
		{"bucket shares the root page", mutate(func(b []byte) []byte {
			// The root leaf's first element is a bucket: its value's root
			// page becomes the root leaf itself.
			root := rootPage(b, ps)
			el := root*ps + boltPageHeader
			pos := int(binary.LittleEndian.Uint32(b[el+4:]))
			ks := int(binary.LittleEndian.Uint32(b[el+8:]))
			binary.LittleEndian.PutUint64(b[el+pos+ks:], uint64(root))
			return b
		}), "reached twice"},
		{"plain bbolt", plainBoltFile(t), "bucket meta missing"},
	}
	// Every page but the meta pages gets an invalid page type, as in
	// TestCompactDamagedPageFailsCleanly.
	cases = append(cases, struct {
		name string
		data []byte
		want string
	}{"damaged page types", mutate(func(b []byte) []byte {
		for id := 2; (id+1)*ps <= len(b); id++ {
			binary.LittleEndian.PutUint16(b[id*ps+8:], 0xdead)
		}
		return b
	}), "neither a branch nor a leaf"})
	for _, c := range cases {
		path := writeFile(t, c.data)
		_, err := Inspect(path)
		if !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line wrapping ErrInvalidSnapshot and saying %q", c.name, err, c.want)
		}
		if _, err := InspectSnapshot(path); !errors.Is(err, ErrInvalidSnapshot) {
			t.Errorf("%s: InspectSnapshot: %v, want ErrInvalidSnapshot", c.name, err)
		}
	}
}

// TestInspectFlippedBytes flips bytes all over a real snapshot's pages
// (headers, elements, keys, values): each file is refused with an
// ErrInvalidSnapshot or inspected whole, never a panic or a fault, and a
// flip in the id or type of a page in use is always refused. (A flip in a
// key, a value or an element count can leave a sound file that holds
// other data: the SHA-256 of a scheduled snapshot's name and the MAC a
// restore checks are what catch those.)
func TestInspectFlippedBytes(t *testing.T) {
	fx := newInspectFixture(t, 300)
	const ps = 4096
	pages := len(fx.snap) / ps
	tree, err := checkBoltReader(bytes.NewReader(fx.snap), int64(len(fx.snap)))
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	dir := t.TempDir()
	tried := 0
	for id := 2; id < pages; id++ {
		for _, off := range []int{0, 8, 10, 12, 16, 20, 24, 28, 40, 100, 1000, 2000, 4000} {
			for _, x := range []byte{0x01, 0xff} {
				b := bytes.Clone(fx.snap)
				b[id*ps+off] ^= x
				path := filepath.Join(dir, fmt.Sprintf("p%d-%d-%d", id, off, x))
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
				tried++
				ins, err := Inspect(path)
				switch {
				case err != nil && !errors.Is(err, ErrInvalidSnapshot):
					t.Fatalf("page %d offset %d ^%#x: %v, want ErrInvalidSnapshot", id, off, x, err)
				case err != nil:
					refused++
				case off < 10 && tree.inUse(uint64(id)):
					t.Fatalf("page %d offset %d ^%#x: a flipped page header was inspected: %+v", id, off, x, ins)
				}
				os.Remove(path)
			}
		}
	}
	if refused == 0 {
		t.Fatalf("no flipped file of %d was refused", tried)
	}
	t.Logf("%d of %d flipped files refused", refused, tried)
}

// TestInspectUnexpectedBuckets: a valid coffer state with buckets coffer
// does not know is inspected (as Restore accepts it): the buckets are
// listed as unexpected, nested ones counted, their bytes in the total,
// and a name that is not printable is quoted.
func TestInspectUnexpectedBuckets(t *testing.T) {
	fx := newInspectFixture(t, 20)
	path := writeFile(t, fx.snap)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	const evil = "\x1b[2J\x1b[31mred"
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("extra"))
		if err != nil {
			return err
		}
		if err := b.Put([]byte("k1"), []byte("v1")); err != nil {
			return err
		}
		nb, err := b.CreateBucket([]byte("nested"))
		if err != nil {
			return err
		}
		for i := range 3 {
			if err := nb.Put([]byte{byte(i)}, []byte("abc")); err != nil {
				return err
			}
		}
		e, err := tx.CreateBucket([]byte(evil))
		if err != nil {
			return err
		}
		return e.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ins, err := Inspect(path)
	if err != nil {
		t.Fatalf("Inspect of a state with extra buckets: %v", err)
	}
	extra := bucketByName(ins, "extra")
	// k1=v1, the nested bucket's key, and its three keys of 1+3 bytes.
	if extra == nil || !extra.Unexpected || extra.Keys != 5 || extra.Buckets != 1 || extra.KeyBytes != 2+6+3 || extra.ValueBytes != 2+9 {
		t.Fatalf("extra: %+v", extra)
	}
	quoted := bucketByName(ins, fmt.Sprintf("%q", evil))
	if quoted == nil || !quoted.Unexpected {
		t.Fatalf("the bucket with control characters is not listed quoted: %+v", ins.Buckets)
	}
	if meta := bucketByName(ins, "meta"); meta == nil || meta.Unexpected {
		t.Fatalf("meta: %+v", meta)
	}
	var sum int64
	for _, b := range ins.Buckets {
		sum += b.KeyBytes + b.ValueBytes
	}
	if ins.StoredBytes != sum || ins.Secrets != fx.secrets {
		t.Fatalf("stored %d, buckets' sum %d, secrets %d", ins.StoredBytes, sum, ins.Secrets)
	}
}

// TestInspectUndecodableMetadata: a secret_meta record that is not a
// SecretMeta (a crafted file) is refused by Inspect, which counts
// versions, with an error that names no path.
func TestInspectUndecodableMetadata(t *testing.T) {
	fx := newInspectFixture(t, 5)
	path := writeFile(t, fx.snap)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSecretMeta).Put([]byte("secret/app/00002"), []byte{0x3a, 0xff})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Inspect(path)
	if !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), "does not decode") || strings.Contains(err.Error(), "secret/app") {
		t.Fatalf("Inspect: %v, want a refusal that names no path", err)
	}
}

// FuzzInspect feeds Inspect arbitrary files, from a real snapshot and
// damaged copies of it: it must refuse them with ErrInvalidSnapshot or
// report figures that add up, never panic or fault, and agree with
// InspectSnapshot.
func FuzzInspect(f *testing.F) {
	fx := newInspectFixture(f, 30)
	good := fx.snap
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(good[:len(good)-4096])
	f.Add(good[:8192])
	for _, off := range []int{2*4096 + 8, 3*4096 + 16, 3*4096 + 20, len(good) - 4096 + 24, 16} {
		if off < len(good) {
			b := bytes.Clone(good)
			b[off] ^= 0xff
			f.Add(b)
		}
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		tmp, err := os.CreateTemp(dir, "fuzz-*.db")
		if err != nil {
			t.Fatal(err)
		}
		path := tmp.Name()
		defer os.Remove(path)
		if _, err := tmp.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := tmp.Close(); err != nil {
			t.Fatal(err)
		}
		ins, err := Inspect(path)
		info, serr := InspectSnapshot(path)
		if err != nil {
			if !errors.Is(err, ErrInvalidSnapshot) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Inspect: %q, want one line wrapping ErrInvalidSnapshot", err)
			}
			if serr != nil && !errors.Is(serr, ErrInvalidSnapshot) {
				t.Fatalf("InspectSnapshot: %v", serr)
			}
			return
		}
		if serr != nil || info.AppliedIndex != ins.AppliedIndex {
			t.Fatalf("Inspect passed (index %d), InspectSnapshot: %+v, %v", ins.AppliedIndex, info, serr)
		}
		var sum int64
		for _, b := range ins.Buckets {
			sum += b.KeyBytes + b.ValueBytes
		}
		if sum != ins.StoredBytes || ins.StoredBytes > ins.FileBytes || ins.UsedPages+ins.FreePages != ins.Pages ||
			int64(ins.Pages)*ins.PageSize > ins.FileBytes || ins.DestroyedVersions > ins.Versions {
			t.Fatalf("figures do not add up: %+v", ins)
		}
		if meta := bucketByName(ins, "secret_meta"); meta == nil || meta.Keys != ins.Secrets {
			t.Fatalf("secrets %d, secret_meta %+v", ins.Secrets, meta)
		}
	})
}
