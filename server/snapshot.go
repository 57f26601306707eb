package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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
// JSON snapshotHeader, then the state machine's own snapshot (a copy of its
// bbolt database, ciphertext only).
const (
	snapshotMagic     = "COFFER-SNAPSHOT\n"
	maxSnapshotHeader = 64 << 10
	snapshotChunk     = 256 << 10
)

// snapshotHeader describes a snapshot file.
type snapshotHeader struct {
	Format       int    `json:"format"`
	NodeID       string `json:"node_id"`
	AppliedIndex uint64 `json:"applied_index"`
	CreatedUnix  int64  `json:"created_unix"`
	// SealFingerprint identifies the keys the data is encrypted under
	// (a hash of the replicated seal record, which holds no secret).
	SealFingerprint string `json:"seal_fingerprint"`
}

// ErrForeignSnapshot means a snapshot was made under other keys.
var ErrForeignSnapshot = errors.New("server: the snapshot was made under other keys (another cluster, or before a re-init): this cluster's shares could not read it; pass -force to restore it anyway")

// sealFingerprint hashes the replicated seal record ("" before init).
func (o *operatorServer) sealFingerprint() string {
	raw, err := o.state.SysGet(sysSealKey)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
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
	if err := requireRoot(stream.Context()); err != nil {
		return err
	}
	snap, err := o.state.Snapshot()
	if err != nil {
		return err
	}
	defer snap.Release()
	hdr, _ := json.Marshal(snapshotHeader{
		Format:          1,
		NodeID:          o.nodeID,
		AppliedIndex:    o.state.AppliedIndex(),
		CreatedUnix:     time.Now().Unix(),
		SealFingerprint: o.sealFingerprint(),
	})
	w := &chunkWriter{send: stream.Send, buf: make([]byte, 0, snapshotChunk)}
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
	return w.flush()
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
	if err := json.Unmarshal(raw, &h); err != nil || h.Format != 1 {
		return nil, 0, invalidf("snapshot header is unreadable or of an unknown format")
	}
	return &h, int64(len(snapshotMagic)) + 4 + int64(n), nil
}

// SnapshotRestore replaces the cluster's state with an uploaded snapshot.
// It runs on the leader, which installs it on every node through Raft.
func (o *operatorServer) SnapshotRestore(stream pb.Operator_SnapshotRestoreServer) error {
	if err := requireRoot(stream.Context()); err != nil {
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
	if cur := o.sealFingerprint(); cur != "" && hdr.SealFingerprint != cur && !force {
		return ErrForeignSnapshot
	}
	body := io.NewSectionReader(tmp, hdrLen, size-hdrLen)
	// Index: Raft places the restore above the snapshot's own applied
	// index, so that entries after it are not skipped as already applied.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size - hdrLen, Index: hdr.AppliedIndex}
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
	o.logger.Info("restored snapshot", "from_node", hdr.NodeID, "snapshot_applied_index", hdr.AppliedIndex, "forced", force)
	return stream.SendAndClose(&pb.SnapshotRestoreResponse{Index: o.raft.LastIndex()})
}
