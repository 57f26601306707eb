// Package snapshotfile is the format of coffer's snapshot files and the
// directory the leader keeps its scheduled snapshots in.
//
// A snapshot file is Magic, a 4-byte big-endian header length, the JSON
// Header, the state machine's own snapshot (a copy of its bbolt database,
// ciphertext only) and (Format 2) a MACSize-byte HMAC-SHA256 of everything
// before it, keyed from the cluster's root key: a restore checks it before
// anything parses the state, so a truncated, corrupt, edited or foreign
// file is refused whole. Format 1 files (no MAC, older builds) restore only
// with -force. Write is the one writer of the format; the server streams it
// to `snapshot save` and into scheduled snapshot files alike.
//
// A scheduled snapshot's name carries the SHA-256 of its bytes (see Name),
// so that `coffer operator raft snapshot list` tells a corrupt file from a
// good one without any key; the MAC stays the authenticity check.
package snapshotfile

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Format constants.
const (
	// Magic opens every snapshot file.
	Magic = "COFFER-SNAPSHOT\n"
	// MaxHeader bounds the JSON header a reader accepts.
	MaxHeader = 64 << 10
	// Format is the format this build writes (2: with the MAC trailer).
	Format = 2
	// MACSize is the length of the MAC trailer of a Format 2 file.
	MACSize = 32
)

// Header describes a snapshot file.
type Header struct {
	Format       int    `json:"format"`
	NodeID       string `json:"node_id"`
	AppliedIndex uint64 `json:"applied_index"`
	CreatedUnix  int64  `json:"created_unix"`
	// SealFingerprint identifies the keys the data is encrypted under:
	// derived from the root key (seal.Seal.Fingerprint), so it stays the
	// same across rekeys and seal migrations. Older files hold a hash of
	// the seal record instead; a restore never trusts it (the MAC
	// decides).
	SealFingerprint string `json:"seal_fingerprint"`
}

// Errors of ReadHeader.
var (
	// ErrNotSnapshot means the bytes do not start with Magic.
	ErrNotSnapshot = errors.New("not a coffer snapshot file")
	// ErrTruncatedHeader means the file ends inside its header.
	ErrTruncatedHeader = errors.New("snapshot header is truncated")
	// ErrBadHeader means the header's length or content is invalid, or
	// of a format this build does not know.
	ErrBadHeader = errors.New("snapshot header is unreadable or of an unknown format")
	// ErrTruncated means a Format 2 file ends before its MAC trailer.
	ErrTruncated = errors.New("the snapshot is truncated: it ends before its MAC trailer")
)

// Write writes a snapshot to w: the header h, what body writes (the state
// machine's snapshot) and the MAC trailer. Everything before the trailer
// also goes through mac, a fresh HMAC keyed for snapshots.
func Write(w io.Writer, h Header, mac hash.Hash, body func(io.Writer) error) error {
	hdr, err := json.Marshal(h)
	if err != nil {
		return err
	}
	mw := io.MultiWriter(w, mac)
	var lenBuf [4]byte
	binary.BigEndian.PutUint32(lenBuf[:], uint32(len(hdr)))
	for _, part := range [][]byte{[]byte(Magic), lenBuf[:], hdr} {
		if _, err := mw.Write(part); err != nil {
			return err
		}
	}
	if err := body(mw); err != nil {
		return err
	}
	_, err = w.Write(mac.Sum(nil))
	return err
}

// ReadHeader checks the magic and reads the header of a snapshot; it
// returns the header and the number of bytes it took.
func ReadHeader(r io.Reader) (*Header, int64, error) {
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic, []byte(Magic)) {
		return nil, 0, ErrNotSnapshot
	}
	var lenBuf [4]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return nil, 0, ErrTruncatedHeader
	}
	n := binary.BigEndian.Uint32(lenBuf[:])
	if n == 0 || n > MaxHeader {
		return nil, 0, fmt.Errorf("%w: length %d", ErrBadHeader, n)
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, 0, ErrTruncatedHeader
	}
	var h Header
	if err := json.Unmarshal(raw, &h); err != nil || (h.Format != 1 && h.Format != 2) {
		return nil, 0, ErrBadHeader
	}
	return &h, int64(len(Magic)) + 4 + int64(n), nil
}

// Layout is where the parts of a snapshot file lie.
type Layout struct {
	Header Header
	// BodyOffset and BodyLen delimit the state machine's snapshot.
	BodyOffset, BodyLen int64
	// MAC is set when the file ends in a MAC trailer (Format 2); it is
	// the MACSize bytes after the body.
	MAC bool
}

// ReadLayout reads the header of the size-byte snapshot r holds and
// locates its body and MAC trailer. It checks the magic, the header and
// that a Format 2 file is long enough for its trailer; it needs no key
// (the MAC is checked at restore).
func ReadLayout(r io.ReaderAt, size int64) (Layout, error) {
	h, n, err := ReadHeader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return Layout{}, err
	}
	l := Layout{Header: *h, BodyOffset: n, BodyLen: size - n}
	if h.Format >= 2 {
		if l.BodyLen < MACSize {
			return Layout{}, ErrTruncated
		}
		l.BodyLen -= MACSize
		l.MAC = true
	}
	return l, nil
}
