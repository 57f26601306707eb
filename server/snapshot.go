package server

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/server/snapshotfile"
)

// Snapshot files are in the format of package snapshotfile: magic, JSON
// header, the state machine's bbolt copy (ciphertext only) and an
// HMAC-SHA256 trailer keyed from the cluster's root key
// (seal.SnapshotMAC): a restore checks it before anything parses the
// state, so a truncated, corrupt, edited or foreign file is refused whole.
// Format 1 files (no MAC, older builds) restore only with -force.
const (
	snapshotChunk = 256 << 10
	macSize       = snapshotfile.MACSize
)

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

// SnapshotSave streams a consistent snapshot of this node's state.
func (o *operatorServer) SnapshotSave(_ *pb.SnapshotSaveRequest, stream pb.Operator_SnapshotSaveServer) error {
	if err := requireCaller(stream.Context()); err != nil {
		return err
	}
	cw := &chunkWriter{send: stream.Send, buf: make([]byte, 0, snapshotChunk)}
	if _, err := o.writeSnapshot(cw, time.Now()); err != nil {
		return err
	}
	return cw.flush()
}

// writeSnapshot writes a snapshot file of this node's state, as of now,
// to w, and returns its header. It is the one writer of snapshots: saved
// through the API or scheduled (snapshots.go). It needs the keys (the
// MAC): it fails with seal.ErrSealed on a sealed node.
func (o *operatorServer) writeSnapshot(w io.Writer, now time.Time) (snapshotfile.Header, error) {
	// Read before the snapshot begins: the state it holds is at least at
	// this index (read after, it could name entries the copy lacks).
	applied := o.state.AppliedIndex()
	snap, err := o.state.Snapshot()
	if err != nil {
		return snapshotfile.Header{}, err
	}
	defer snap.Release()
	mac, err := o.keys.seal.SnapshotMAC()
	if err != nil {
		return snapshotfile.Header{}, err
	}
	hdr := snapshotfile.Header{
		Format:          snapshotfile.Format,
		NodeID:          o.nodeID,
		AppliedIndex:    applied,
		CreatedUnix:     now.Unix(),
		SealFingerprint: o.sealFingerprint(),
	}
	// The copy is written without Persist, which reports to the node's
	// coffer_raft_snapshot_* metrics: a snapshot file is not Raft's own.
	copier, ok := snap.(io.WriterTo)
	if !ok {
		return snapshotfile.Header{}, fmt.Errorf("server: the state's snapshot (%T) cannot be copied", snap)
	}
	return hdr, snapshotfile.Write(w, hdr, mac, func(w io.Writer) error {
		_, err := copier.WriteTo(w)
		return err
	})
}

// readSnapshotLayout checks the magic and header of a size-byte snapshot
// and locates its body (snapshotfile.ReadLayout), with errors for the
// caller.
func readSnapshotLayout(r io.ReaderAt, size int64) (snapshotfile.Layout, error) {
	l, err := snapshotfile.ReadLayout(r, size)
	switch {
	case errors.Is(err, snapshotfile.ErrNotSnapshot):
		return l, invalidf("not a coffer snapshot file (save one with `coffer operator raft snapshot save FILE`)")
	case errors.Is(err, snapshotfile.ErrTruncated):
		return l, invalidf("the snapshot is truncated: save it again with `coffer operator raft snapshot save`")
	case err != nil:
		return l, invalidf("%v", err)
	}
	return l, nil
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
	lay, err := readSnapshotLayout(tmp, size)
	if err != nil {
		return err
	}
	hdr, hdrLen, bodyEnd := lay.Header, lay.BodyOffset, lay.BodyOffset+lay.BodyLen
	if lay.MAC {
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
