package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// Checking a bbolt file before bbolt reads it.
//
// bbolt trusts its file: it maps it and follows page ids and element
// offsets without bounds checks. On a damaged or crafted file that means
// an assertion (a panic, recovered by the callers), a read past the end of
// the mapping (a fault, which Go turns into a crash unless
// debug.SetPanicOnFault is on), a read of whatever memory lies beyond it,
// or, with a page that points to itself, a walk that never ends. bbolt's
// own Check follows the same pointers, in a goroutine of its own.
//
// checkBoltTree reads the file with ReadAt, as bbolt would map it (bbolt
// 1.4's layout and its choice of page size and meta page), and follows
// every pointer a read transaction can follow (the root bucket's tree,
// every nested bucket's, inline buckets) with bounds checks: each page
// within the high-water mark, a branch or leaf page whose header names its
// own id, reached once only (no cycles, no shared pages), with elements,
// keys and values inside the page. A file that passes can be walked by
// bbolt's cursors without touching memory outside the file's pages.

// bbolt's on-disk layout (go.etcd.io/bbolt/internal/common).
const (
	boltPageHeader   = 16 // id uint64, flags uint16, count uint16, overflow uint32
	boltElementSize  = 16 // branch: pos, ksize uint32, pgid uint64; leaf: flags, pos, ksize, vsize uint32
	boltBranchPage   = 0x01
	boltLeafPage     = 0x02
	boltFreelistPage = 0x10
	boltBucketLeaf   = 0x01
	boltBucketHeader = 16 // root pgid, sequence uint64
	boltVersion      = 2
	boltNoFreelist   = ^uint64(0)
	// boltMetaEnd is where a meta page's checksum ends: page header, then
	// magic, version, page size, flags (uint32 each), root bucket (16
	// bytes), freelist, high-water mark and txid (uint64 each), checksum.
	boltMetaEnd = boltPageHeader + 64
)

// Limits of a plausible state database: coffer's buckets are not nested,
// and a B+tree of 2^64 keys is far less than 64 levels deep.
const (
	maxBoltTreeDepth   = 64
	maxBoltBucketDepth = 16
)

// boltMeta is a parsed bbolt meta page.
type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64 // pages in use, the high-water mark
	txid     uint64
}

// parseBoltMeta reads the meta page at the start of b (page header
// included) and validates it as bbolt does: magic, version, checksum.
func parseBoltMeta(b []byte) (boltMeta, error) {
	if len(b) < boltMetaEnd {
		return boltMeta{}, errors.New("meta page is truncated")
	}
	m := b[boltPageHeader:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != bboltMagic {
		return boltMeta{}, errors.New("no bbolt magic")
	}
	if v := le.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("bbolt version %d", v)
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, errors.New("meta checksum mismatch")
	}
	return boltMeta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		hwm:      le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}, nil
}

// boltPageSize finds the page size as bbolt.Open does: from the first meta
// page when it is valid, else from the first valid meta page found at
// 1 KiB, 2 KiB, … 16 MiB.
func boltPageSize(r io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 4096)
	if n, _ := r.ReadAt(buf, 0); n == len(buf) {
		if m, err := parseBoltMeta(buf); err == nil {
			return int64(m.pageSize), nil
		}
	}
	for i := 0; i <= 14; i++ {
		pos := int64(1024) << i
		if pos >= size-1024 {
			break
		}
		clear(buf)
		n, err := r.ReadAt(buf, pos)
		if n == len(buf) || (errors.Is(err, io.EOF) && int64(n) == size-pos) {
			if m, err := parseBoltMeta(buf); err == nil {
				return int64(m.pageSize), nil
			}
		}
	}
	return 0, errors.New("no valid bbolt meta page: not a state database")
}

// boltTree is what checkBoltTree found: the page size, the pages under
// the high-water mark and how many of them are in use (the two meta pages,
// the freelist's and every page of every bucket's tree).
type boltTree struct {
	pageSize  int64
	pages     uint64
	usedPages uint64
	seen      []uint64 // bit per page: in use
}

// inUse reports whether page id is one of the pages in use.
func (t boltTree) inUse(id uint64) bool {
	return id < t.pages && t.seen[id/64]&(1<<(id%64)) != 0
}

// checkBoltTree checks the bbolt file at path as the top of this file
// describes; its errors name what is wrong, never a key or a value.
func checkBoltTree(path string) (boltTree, error) {
	f, err := os.Open(path)
	if err != nil {
		return boltTree{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return boltTree{}, err
	}
	return checkBoltReader(f, fi.Size())
}

// checkBoltReader is checkBoltTree over size bytes of r.
func checkBoltReader(r io.ReaderAt, size int64) (boltTree, error) {
	ps, err := boltPageSize(r, size)
	if err != nil {
		return boltTree{}, err
	}
	if ps < 1024 || ps > 1<<16 || ps&(ps-1) != 0 {
		return boltTree{}, fmt.Errorf("the meta page names a page size of %d", ps)
	}
	if size < 2*ps {
		return boltTree{}, fmt.Errorf("the file is %d bytes, too short for two meta pages of %d bytes", size, ps)
	}
	// The meta page bbolt uses: the one with the higher txid if valid,
	// else the other (bbolt's DB.meta).
	var metas [2]boltMeta
	var errs [2]error
	buf := make([]byte, boltMetaEnd)
	for i := range metas {
		if _, err := r.ReadAt(buf, int64(i)*ps); err != nil {
			return boltTree{}, fmt.Errorf("reading meta page %d: %v", i, err)
		}
		metas[i], errs[i] = parseBoltMeta(buf)
	}
	a, b := 0, 1
	if metas[1].txid > metas[0].txid {
		a, b = 1, 0
	}
	var m boltMeta
	switch {
	case errs[a] == nil:
		m = metas[a]
	case errs[b] == nil:
		m = metas[b]
	default:
		return boltTree{}, fmt.Errorf("both meta pages are invalid (%v; %v)", errs[0], errs[1])
	}
	if m.hwm > uint64(size/ps) {
		return boltTree{}, fmt.Errorf("the meta page claims %d pages of %d bytes, the file has %d bytes: it is truncated", m.hwm, ps, size)
	}
	w := &boltWalker{r: r, pageSize: ps, hwm: m.hwm, seen: make([]uint64, (m.hwm+63)/64)}
	w.mark(0)
	w.mark(1)
	if m.freelist != boltNoFreelist {
		hdr, err := w.header(m.freelist)
		if err != nil {
			return boltTree{}, fmt.Errorf("freelist: %w", err)
		}
		if hdr.flags != boltFreelistPage {
			return boltTree{}, fmt.Errorf("freelist page %d is not a freelist page (flags %#x)", m.freelist, hdr.flags)
		}
		if err := w.markSpan(m.freelist, hdr.overflow); err != nil {
			return boltTree{}, fmt.Errorf("freelist: %w", err)
		}
	}
	if m.root == 0 {
		return boltTree{}, errors.New("the meta page names no root page")
	}
	if err := w.walk(m.root, 0, 0); err != nil {
		return boltTree{}, err
	}
	return boltTree{pageSize: ps, pages: m.hwm, usedPages: w.used, seen: w.seen}, nil
}

// boltWalker follows a bbolt file's pages (checkBoltReader).
type boltWalker struct {
	r        io.ReaderAt
	pageSize int64
	hwm      uint64
	seen     []uint64 // bit per page: reached already
	used     uint64
	bufs     [][]byte // one read buffer per depth: a page's bytes stay valid while its children are walked
}

// boltPageHeader is a page's header.
type boltHeader struct {
	id       uint64
	flags    uint16
	count    uint16
	overflow uint32
}

// header reads the header of page id, which must be within the high-water
// mark and name itself.
func (w *boltWalker) header(id uint64) (boltHeader, error) {
	if id < 2 || id >= w.hwm {
		return boltHeader{}, fmt.Errorf("page %d is outside the file's pages 2..%d", id, w.hwm)
	}
	var b [boltPageHeader]byte
	if _, err := w.r.ReadAt(b[:], int64(id)*w.pageSize); err != nil {
		return boltHeader{}, fmt.Errorf("reading page %d: %v", id, err)
	}
	le := binary.LittleEndian
	h := boltHeader{id: le.Uint64(b[0:]), flags: le.Uint16(b[8:]), count: le.Uint16(b[10:]), overflow: le.Uint32(b[12:])}
	if h.id != id {
		return boltHeader{}, fmt.Errorf("page %d says it is page %d", id, h.id)
	}
	return h, nil
}

// mark records that page id is reached; false if it was already.
func (w *boltWalker) mark(id uint64) bool {
	word, bit := id/64, uint64(1)<<(id%64)
	if w.seen[word]&bit != 0 {
		return false
	}
	w.seen[word] |= bit
	w.used++
	return true
}

// markSpan marks page id and its overflow pages.
func (w *boltWalker) markSpan(id uint64, overflow uint32) error {
	if uint64(overflow) >= w.hwm-id {
		return fmt.Errorf("page %d and its %d overflow pages run past the file's %d pages", id, overflow, w.hwm)
	}
	for p := id; p <= id+uint64(overflow); p++ {
		if !w.mark(p) {
			return fmt.Errorf("page %d is reached twice", p)
		}
	}
	return nil
}

// walk checks the tree whose root is page id, at depth pages below the
// file's root, in a bucket nested nest deep.
func (w *boltWalker) walk(id uint64, depth, nest int) error {
	if depth >= maxBoltTreeDepth*(nest+1) {
		return fmt.Errorf("page %d is %d levels deep", id, depth)
	}
	h, err := w.header(id)
	if err != nil {
		return err
	}
	if err := w.markSpan(id, h.overflow); err != nil {
		return err
	}
	n := (int64(h.overflow) + 1) * w.pageSize
	for len(w.bufs) <= depth {
		w.bufs = append(w.bufs, nil)
	}
	if int64(cap(w.bufs[depth])) < n {
		w.bufs[depth] = make([]byte, n)
	}
	p := w.bufs[depth][:n]
	if _, err := w.r.ReadAt(p, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("reading page %d: %v", id, err)
	}
	switch h.flags {
	case boltBranchPage:
		if h.count == 0 {
			return fmt.Errorf("branch page %d is empty", id)
		}
		if err := checkElements(p, h.count, false); err != nil {
			return fmt.Errorf("branch page %d: %w", id, err)
		}
		for i := range int(h.count) {
			child := binary.LittleEndian.Uint64(p[boltPageHeader+i*boltElementSize+8:])
			if err := w.walk(child, depth+1, nest); err != nil {
				return err
			}
		}
		return nil
	case boltLeafPage:
		return w.leaf(p, h.count, fmt.Sprintf("leaf page %d", id), depth, nest, false)
	}
	return fmt.Errorf("page %d is neither a branch nor a leaf page (flags %#x)", id, h.flags)
}

// checkElements checks that count elements and their keys (and, on a
// leaf, values) lie within the page p. An element's pos is relative to
// the element itself.
func checkElements(p []byte, count uint16, leaf bool) error {
	end := uint64(boltPageHeader) + uint64(count)*boltElementSize
	if end > uint64(len(p)) {
		return fmt.Errorf("%d elements do not fit in %d bytes", count, len(p))
	}
	le := binary.LittleEndian
	for i := range uint64(count) {
		off := boltPageHeader + i*boltElementSize
		var pos, kv uint64
		if leaf {
			pos, kv = uint64(le.Uint32(p[off+4:])), uint64(le.Uint32(p[off+8:]))+uint64(le.Uint32(p[off+12:]))
		} else {
			pos, kv = uint64(le.Uint32(p[off:])), uint64(le.Uint32(p[off+4:]))
		}
		if off+pos+kv > uint64(len(p)) {
			return fmt.Errorf("element %d ends past the page", i)
		}
	}
	return nil
}

// leaf checks the leaf page (or inline bucket) p, named where in errors,
// and walks the buckets its elements hold.
func (w *boltWalker) leaf(p []byte, count uint16, where string, depth, nest int, inline bool) error {
	if err := checkElements(p, count, true); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	le := binary.LittleEndian
	for i := range uint64(count) {
		off := boltPageHeader + i*boltElementSize
		if le.Uint32(p[off:])&boltBucketLeaf == 0 {
			continue
		}
		switch {
		case inline:
			return fmt.Errorf("%s, element %d: an inline bucket holds a bucket", where, i)
		case nest+1 > maxBoltBucketDepth:
			return fmt.Errorf("%s, element %d: buckets nested %d deep", where, i, nest+1)
		}
		start := off + uint64(le.Uint32(p[off+4:])) + uint64(le.Uint32(p[off+8:]))
		v := p[start : start+uint64(le.Uint32(p[off+12:]))]
		if len(v) < boltBucketHeader {
			return fmt.Errorf("%s, element %d: a bucket value of %d bytes", where, i, len(v))
		}
		root := le.Uint64(v)
		if root != 0 {
			if err := w.walk(root, depth+1, nest+1); err != nil {
				return err
			}
			continue
		}
		// An inline bucket: a leaf page inside the value.
		in := v[boltBucketHeader:]
		if len(in) < boltPageHeader {
			return fmt.Errorf("%s, element %d: an inline bucket of %d bytes", where, i, len(in))
		}
		if flags := le.Uint16(in[8:]); flags != boltLeafPage {
			return fmt.Errorf("%s, element %d: an inline bucket that is not a leaf (flags %#x)", where, i, flags)
		}
		if err := w.leaf(in, le.Uint16(in[10:]), fmt.Sprintf("%s, element %d, inline bucket", where, i), depth, nest+1, true); err != nil {
			return err
		}
	}
	return nil
}
