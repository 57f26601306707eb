package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
)

// Ciphertext layout: term (4, big endian) | nonce (12) | GCM sealed box
// (plaintext length + 16-byte tag). The term's top bit (boundFlag) marks a
// bound ciphertext, whose additional data names what it was sealed for in
// full (a secret's version, or a system entry); a ciphertext without it was
// written before versions were bound and is only ever decrypted as a
// secret's value. The flag is part of the authenticated term, so it cannot
// be flipped.
const (
	termSize      = 4
	nonceSize     = 12
	tagSize       = 16
	headerSize    = termSize + nonceSize
	minCiphertext = headerSize + tagSize
	versionSize   = 8
)

// boundFlag is the top bit of a bound ciphertext's term; key terms stay
// below it (MaxTerm).
const boundFlag = 1 << 31

// MaxTerm is the largest key term a keyring can reach.
const MaxTerm = boundFlag - 1

// The barrier's additional data, which separates it from every other use of
// AES-GCM in coffer:
//
//   - bound (written by this version): aadBound | kind (1) | term (4) |
//     version (8) | path, where kind is kindVersion for a secret's version
//     (version ≥ 1) or kindEntry for a system entry (version 0, path = the
//     entry's key). A version's ciphertext opens only as that version of
//     that path, so a stored ciphertext replayed as another version, at
//     another path, or as a system entry fails to decrypt.
//   - legacy: aadLegacy | term (4) | path, bound to the path only.
//
// Every field but the path has a fixed size, so the encoding is
// unambiguous.
const (
	aadBound    = "coffer/barrier/v2\x00"
	aadLegacy   = "coffer/barrier/v1\x00"
	kindVersion = 'v'
	kindEntry   = 'e'
)

// Barrier encrypts and decrypts values with the data keys of a keyring. It
// is the single point of encryption between the server and storage. A
// Barrier is immutable and safe for concurrent use.
type Barrier struct {
	active uint32
	aeads  map[uint32]cipher.AEAD
}

// NewBarrier returns a barrier over the keys of k. The barrier keeps AES key
// schedules, not k's key bytes: k may be zeroed afterwards. The schedules
// live inside crypto/aes where they cannot be overwritten; dropping the
// Barrier (as Seal.Seal does) is the best that can be done for them.
func NewBarrier(k *Keyring) (*Barrier, error) {
	if k == nil || len(k.keys) == 0 {
		return nil, fmt.Errorf("%w: keyring is empty", ErrInvalidKeyring)
	}
	if _, ok := k.keys[k.active]; !ok {
		return nil, fmt.Errorf("%w: active term %d has no key", ErrInvalidKeyring, k.active)
	}
	b := &Barrier{active: k.active, aeads: make(map[uint32]cipher.AEAD, len(k.keys))}
	for term, key := range k.keys {
		if term > MaxTerm {
			return nil, fmt.Errorf("%w: term %d is above the largest (%d)", ErrInvalidKeyring, term, MaxTerm)
		}
		aead, err := newGCM(key)
		if err != nil {
			return nil, fmt.Errorf("%w: term %d: %v", ErrInvalidKeyring, term, err)
		}
		b.aeads[term] = aead
	}
	return b, nil
}

// ActiveTerm returns the term Encrypt uses.
func (b *Barrier) ActiveTerm() uint32 { return b.active }

// Encrypt seals plaintext as version of the secret at path with the active
// key and returns a bound ciphertext: it decrypts only as that version of
// that path. Versions start at 1. The nonce is 96 random bits, so a single
// term should seal well under 2^32 values; rotate long before that.
func (b *Barrier) Encrypt(path string, version uint64, plaintext []byte) ([]byte, error) {
	if version == 0 {
		return nil, fmt.Errorf("seal: internal error: a secret's version starts at 1")
	}
	return b.seal(kindVersion, path, version, plaintext), nil
}

// SealEntry seals a system entry's value (a token record, a policy) for its
// key: it decrypts only as the entry at that key.
func (b *Barrier) SealEntry(key string, plaintext []byte) ([]byte, error) {
	return b.seal(kindEntry, key, 0, plaintext), nil
}

// seal produces a bound ciphertext.
func (b *Barrier) seal(kind byte, path string, version uint64, plaintext []byte) []byte {
	aead := b.aeads[b.active]
	term := b.active | boundFlag
	ctLen := headerSize + len(plaintext) + tagSize
	aadLen := boundAADLen(path)
	// One allocation: the ciphertext followed by the additional data. dst's
	// capacity ends where the additional data begins, so they do not overlap
	// as crypto/cipher requires.
	buf := make([]byte, ctLen+aadLen)
	binary.BigEndian.PutUint32(buf, term)
	randRead(buf[termSize:headerSize])
	aad := appendBoundAAD(buf[ctLen:ctLen], kind, term, version, path)
	ct := aead.Seal(buf[:headerSize:ctLen], buf[termSize:headerSize], plaintext, aad)
	return ct[:ctLen:ctLen]
}

// Decrypt opens the ciphertext of version of the secret at path. A bound
// ciphertext opens only for the version and path it was sealed for; an
// unbound one (written before versions were bound) for its path. It returns
// ErrUnknownTerm if the ciphertext's term is not in the keyring, and
// ErrDecrypt for anything truncated, altered or sealed for something else.
// It never panics on any input.
func (b *Barrier) Decrypt(path string, version uint64, ciphertext []byte) ([]byte, error) {
	return b.open(kindVersion, path, version, ciphertext, true)
}

// OpenEntry opens a system entry's value sealed by SealEntry for key. Only
// bound ciphertexts are entries: anything else is ErrDecrypt.
func (b *Barrier) OpenEntry(key string, ciphertext []byte) ([]byte, error) {
	return b.open(kindEntry, key, 0, ciphertext, false)
}

func (b *Barrier) open(kind byte, path string, version uint64, ciphertext []byte, legacyOK bool) ([]byte, error) {
	if len(ciphertext) < minCiphertext {
		return nil, ErrDecrypt
	}
	raw := binary.BigEndian.Uint32(ciphertext)
	bound := raw&boundFlag != 0
	if !bound && !legacyOK {
		return nil, ErrDecrypt
	}
	term := raw &^ boundFlag
	aead, ok := b.aeads[term]
	if !ok {
		return nil, fmt.Errorf("%w: term %d", ErrUnknownTerm, term)
	}
	ptLen := len(ciphertext) - minCiphertext
	var aadLen int
	if bound {
		aadLen = boundAADLen(path)
	} else {
		aadLen = len(aadLegacy) + termSize + len(path)
	}
	buf := make([]byte, ptLen+aadLen)
	var aad []byte
	if bound {
		aad = appendBoundAAD(buf[ptLen:ptLen], kind, raw, version, path)
	} else {
		aad = appendLegacyAAD(buf[ptLen:ptLen], raw, path)
	}
	pt, err := aead.Open(buf[:0:ptLen], ciphertext[termSize:headerSize], ciphertext[headerSize:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt[:ptLen:ptLen], nil
}

// TermOf returns the key term a barrier ciphertext was sealed with, and
// false if the input is too short to be such a ciphertext or names term 0.
// It does not authenticate anything: a server uses it to notice a term it
// must load a newer keyring for.
func TermOf(ciphertext []byte) (uint32, bool) {
	if len(ciphertext) < minCiphertext {
		return 0, false
	}
	term := binary.BigEndian.Uint32(ciphertext) &^ boundFlag
	return term, term != 0
}

// IsBound reports whether ciphertext is laid out as a bound barrier
// ciphertext (Encrypt, SealEntry). It does not authenticate anything, but
// the flag it reads is authenticated by Decrypt and OpenEntry: the state
// machine refuses to store a new value without it, so that no value sealed
// before versions were bound can be replayed as a new one.
func IsBound(ciphertext []byte) bool {
	return len(ciphertext) >= minCiphertext && binary.BigEndian.Uint32(ciphertext)&boundFlag != 0
}

func boundAADLen(path string) int { return len(aadBound) + 1 + termSize + versionSize + len(path) }

// appendBoundAAD appends a bound ciphertext's additional data to dst.
func appendBoundAAD(dst []byte, kind byte, rawTerm uint32, version uint64, path string) []byte {
	dst = append(dst, aadBound...)
	dst = append(dst, kind)
	dst = binary.BigEndian.AppendUint32(dst, rawTerm)
	dst = binary.BigEndian.AppendUint64(dst, version)
	return append(dst, path...)
}

// appendLegacyAAD appends an unbound ciphertext's additional data to dst.
func appendLegacyAAD(dst []byte, term uint32, path string) []byte {
	dst = append(dst, aadLegacy...)
	dst = binary.BigEndian.AppendUint32(dst, term)
	return append(dst, path...)
}

// Labels binding wrapped keys to their role, so a wrapped keyring can never
// be unwrapped as a root key or the reverse.
const (
	aadRootKey       = "coffer/root-key"
	aadStaticRootKey = "coffer/static-root-key"
	aadKeyring       = "coffer/keyring"
)

// wrappedKeySize is the size of a wrapped KeySize-byte key.
const wrappedKeySize = nonceSize + KeySize + tagSize

// wrap seals plaintext under key with AES-256-GCM and the label aad, and
// returns nonce (12) | sealed box.
func wrap(key, plaintext []byte, aad string) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	randRead(out)
	return aead.Seal(out, out, plaintext, []byte(aad)), nil
}

// unwrap opens the output of wrap. Any failure, including a wrong key,
// wrong label or truncated input, is ErrDecrypt.
func unwrap(key, wrapped []byte, aad string) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < nonceSize+tagSize {
		return nil, ErrDecrypt
	}
	pt, err := aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], []byte(aad))
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// newGCM returns AES-256-GCM with the standard 12-byte nonce for a
// KeySize-byte key.
func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: internal error: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
