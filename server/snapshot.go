package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
)

// A snapshot file is snapshotMagic, a 4-byte big-endian header length, the
// JSON snapshotHeader, the state machine's own snapshot (a copy of its
// bbolt database, ciphertext only), and (format 2) a 32-byte HMAC-SHA256 of
// everything before it, keyed from the cluster's root key
// (seal.SnapshotMAC): a restore checks it before anything parses the
// state, so a truncated, corrupt, edited or foreign file is refused whole.
// Format 1 files (no MAC, older builds) restore only with -force.
const (
	snapshotMagic     = "COFFER-SNAPSHOT\n"
	maxSnapshotHeader = 64 << 10
	snapshotChunk     = 256 << 10
	// snapshotFormat is the format this build writes.
	snapshotFormat = 2
	macSize        = sha256.Size
)

// snapshotHeader describes a snapshot file.
type snapshotHeader struct {
	Format       int    `json:"format"`
	NodeID       string `json:"node_id"`
	AppliedIndex uint64 `json:"applied_index"`
	CreatedUnix  int64  `json:"created_unix"`
	// SealFingerprint identifies the keys the data is encrypted under:
	// derived from the root key (seal.Seal.Fingerprint), so it stays the
	// same across rekeys and seal migrations. Older files hold a hash of
	// the seal record instead; the restore never trusts it (the MAC
	// decides).
	SealFingerprint string `json:"seal_fingerprint"`
}

// ErrForeignSnapshot means a snapshot was made under other keys.
var ErrForeignSnapshot = errors.New("server: the snapshot was made under other keys (another cluster, or before a re-init): this cluster's shares could not read it; pass -force to restore it anyway")

// sealFingerprint names the cluster's root key ("" while sealed).
func (o *operatorServer) sealFingerprint() string {
	fp, err := o.keys.seal.Fingerprint()
	if err != nil {
		return ""
	}
	return fp
}

// chunkWriter sends what is written as SnapshotChunk messages.
type chunkWriter struct {
	send func(*pb.SnapshotChunk) error
	buf  []byte
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		room := snapshotChunk - len(w.buf)
		take := min(room, len(p))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		if len(w.buf) == snapshotChunk {
			if err := w.flush(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(&pb.SnapshotChunk{Data: w.buf})
	w.buf = make([]byte, 0, snapshotChunk)
	return err
}

// streamSink adapts a writer to raft.SnapshotSink for FSMSnapshot.Persist.
type streamSink struct {
	io.Writer
	cancelled bool
}

func (s *streamSink) ID() string    { return "stream" }
func (s *streamSink) Close() error  { return nil }
func (s *streamSink) Cancel() error { s.cancelled = true; return nil }

// SnapshotSave streams a consistent snapshot of this node's state.
func (o *operatorServer) SnapshotSave(_ *pb.SnapshotSaveRequest, stream pb.Operator_SnapshotSaveServer) error {
	if err := requireCaller(stream.Context()); err != nil {
		return err
	}
	snap, err := o.state.Snapshot()
	if err != nil {
		return err
	}
	defer snap.Release()
	mac, err := o.keys.seal.SnapshotMAC()
	if err != nil {
		return err
	}
	hdr, _ := json.Marshal(snapshotHeader{
		Format:          snapshotFormat,
		NodeID:          o.nodeID,
		AppliedIndex:    o.state.AppliedIndex(),
		CreatedUnix:     time.Now().Unix(),
		SealFingerprint: o.sealFingerprint(),
	})
	cw := &chunkWriter{send: stream.Send, buf: make([]byte, 0, snapshotChunk)}
	// Everything before the trailer goes through the MAC.
	w := io.MultiWriter(cw, mac)
	var lenBuf [4]byte
	binary.BigEndian.PutUint32(lenBuf[:], uint32(len(hdr)))
	for _, part := range [][]byte{[]byte(snapshotMagic), lenBuf[:], hdr} {
		if _, err := w.Write(part); err != nil {
			return err
		}
	}
	sink := &streamSink{Writer: w}
	if err := snap.Persist(sink); err != nil {
		return err
	}
	if sink.cancelled {
		return fmt.Errorf("server: snapshot failed while streaming")
	}
	if _, err := cw.Write(mac.Sum(nil)); err != nil {
		return err
	}
	return cw.flush()
}

// readSnapshotHeader checks the magic and reads the header of a snapshot;
// it returns the header and the number of bytes it took.
func readSnapshotHeader(r io.Reader) (*snapshotHeader, int64, error) {
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic, []byte(snapshotMagic)) {
		return nil, 0, invalidf("not a coffer snapshot file (save one with `coffer operator raft snapshot save FILE`)")
	}
	var lenBuf [4]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return nil, 0, invalidf("snapshot header is truncated")
	}
	n := binary.BigEndian.Uint32(lenBuf[:])
	if n == 0 || n > maxSnapshotHeader {
		return nil, 0, invalidf("snapshot header length %d is invalid", n)
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, 0, invalidf("snapshot header is truncated")
	}
	var h snapshotHeader
	if err := json.Unmarshal(raw, &h); err != nil || (h.Format != 1 && h.Format != 2) {
		return nil, 0, invalidf("snapshot header is unreadable or of an unknown format")
	}
	return &h, int64(len(snapshotMagic)) + 4 + int64(n), nil
}

// SnapshotRestore replaces the cluster's state with an uploaded snapshot.
// It runs on the leader, which installs it on every node through Raft.
func (o *operatorServer) SnapshotRestore(stream pb.Operator_SnapshotRestoreServer) error {
	if err := requireCaller(stream.Context()); err != nil {
		return err
	}
	if !o.raft.IsLeader() {
		return o.link.notLeaderError()
	}
	tmp, err := os.CreateTemp(o.dataDir, "restore-*.snap")
	if err != nil {
		return fmt.Errorf("server: spool snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	force := false
	for first := true; ; first = false {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if first {
			force = chunk.Force
		}
		if _, err := tmp.Write(chunk.Data); err != nil {
			return fmt.Errorf("server: spool snapshot: %w", err)
		}
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	hdr, hdrLen, err := readSnapshotHeader(io.NewSectionReader(tmp, 0, size))
	if err != nil {
		return err
	}
	bodyEnd := size
	if hdr.Format >= 2 {
		if size < hdrLen+macSize {
			return invalidf("the snapshot is truncated: save it again with `coffer operator raft snapshot save`")
		}
		bodyEnd = size - macSize
		if err := o.authenticate(tmp, bodyEnd); err != nil && !force {
			return err
		}
	} else if !force {
		return withMessage(ErrForeignSnapshot, "the snapshot was saved by an older coffer, without authentication: pass -force to restore it anyway")
	}
	// The state is checked whole before Raft sees it: hashicorp/raft
	// stores a user snapshot first and panics when the state machine then
	// refuses it, and the stored file keeps the node from starting again.
	bodyPath := tmp.Name() + ".state"
	defer os.Remove(bodyPath)
	if err := copyToFile(bodyPath, io.NewSectionReader(tmp, hdrLen, bodyEnd-hdrLen)); err != nil {
		return fmt.Errorf("server: spool snapshot: %w", err)
	}
	info, err := fsm.InspectSnapshot(bodyPath)
	if err != nil {
		return invalidf("the snapshot is not a whole coffer state (%v): save it again with `coffer operator raft snapshot save`", err)
	}
	body, err := os.Open(bodyPath)
	if err != nil {
		return fmt.Errorf("server: restore: %w", err)
	}
	defer body.Close()
	// Index: Raft places the restore above the snapshot's own applied
	// index (the state's, not the header's), so that entries after it are
	// not skipped as already applied.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: bodyEnd - hdrLen, Index: info.AppliedIndex}
	// This node checks its keys itself once Raft is done: sealing in the
	// middle would hand leadership away and fail the restore's last step.
	o.keys.restoring.Store(true)
	err = o.raft.Restore(meta, body, time.Minute)
	o.keys.restoring.Store(false)
	defer o.keys.stateRestored()
	if err != nil {
		if errors.Is(err, fsm.ErrInvalidSnapshot) {
			return invalidf("%v", err)
		}
		return fmt.Errorf("server: restore: %w", err)
	}
	o.logger.Info("restored snapshot", "from_node", hdr.NodeID, "snapshot_applied_index", info.AppliedIndex, "forced", force)
	return stream.SendAndClose(&pb.SnapshotRestoreResponse{Index: o.raft.LastIndex()})
}

// authenticate checks the MAC trailer of a spooled snapshot (the bytes
// from bodyEnd) against everything before it, with this cluster's keys.
func (o *operatorServer) authenticate(f *os.File, bodyEnd int64) error {
	mac, err := o.keys.seal.SnapshotMAC()
	if err != nil {
		return err
	}
	if _, err := io.Copy(mac, io.NewSectionReader(f, 0, bodyEnd)); err != nil {
		return fmt.Errorf("server: read snapshot: %w", err)
	}
	want := make([]byte, macSize)
	if _, err := f.ReadAt(want, bodyEnd); err != nil {
		return fmt.Errorf("server: read snapshot: %w", err)
	}
	if !hmac.Equal(mac.Sum(nil), want) {
		return withMessage(ErrForeignSnapshot, "the snapshot does not authenticate with this cluster's keys: it is truncated, corrupt or edited (save it again), or from another cluster or before a re-init (pass -force to restore another cluster's snapshot you trust)")
	}
	return nil
}

// copyToFile writes r to a new file at path, synced.
func copyToFile(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
