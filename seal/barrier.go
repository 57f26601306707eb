package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
)

// Ciphertext layout: term (4, big endian) | nonce (12) | GCM sealed box
// (plaintext length + 16-byte tag).
const (
	termSize      = 4
	nonceSize     = 12
	tagSize       = 16
	headerSize    = termSize + nonceSize
	minCiphertext = headerSize + tagSize
)

// barrierAADPrefix separates the barrier's additional data from every other
// use of AES-GCM in coffer. The additional data of a value is
// barrierAADPrefix | term (4) | path: the prefix and term are fixed-size, so
// the path is unambiguous.
const barrierAADPrefix = "coffer/barrier/v1\x00"

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

// Encrypt seals plaintext for path with the active key and returns
// term | nonce | sealed box. The nonce is 96 random bits, so a single term
// should seal well under 2^32 values; rotate long before that.
func (b *Barrier) Encrypt(path string, plaintext []byte) ([]byte, error) {
	aead := b.aeads[b.active]
	ctLen := headerSize + len(plaintext) + tagSize
	aadLen := len(barrierAADPrefix) + termSize + len(path)
	// One allocation: the ciphertext followed by the additional data. dst's
	// capacity ends where the additional data begins, so they do not overlap
	// as crypto/cipher requires.
	buf := make([]byte, ctLen+aadLen)
	binary.BigEndian.PutUint32(buf, b.active)
	randRead(buf[termSize:headerSize])
	aad := appendAAD(buf[ctLen:ctLen], b.active, path)
	ct := aead.Seal(buf[:headerSize:ctLen], buf[termSize:headerSize], plaintext, aad)
	return ct[:ctLen:ctLen], nil
}

// Decrypt opens ciphertext produced by Encrypt for the same path. It returns
// ErrUnknownTerm if the ciphertext's term is not in the keyring, and
// ErrDecrypt for anything truncated, altered or encrypted for another path.
// It never panics on any input.
func (b *Barrier) Decrypt(path string, ciphertext []byte) ([]byte, error) {
	if len(ciphertext) < minCiphertext {
		return nil, ErrDecrypt
	}
	term := binary.BigEndian.Uint32(ciphertext)
	aead, ok := b.aeads[term]
	if !ok {
		return nil, fmt.Errorf("%w: term %d", ErrUnknownTerm, term)
	}
	ptLen := len(ciphertext) - minCiphertext
	aadLen := len(barrierAADPrefix) + termSize + len(path)
	buf := make([]byte, ptLen+aadLen)
	aad := appendAAD(buf[ptLen:ptLen], term, path)
	pt, err := aead.Open(buf[:0:ptLen], ciphertext[termSize:headerSize], ciphertext[headerSize:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt[:ptLen:ptLen], nil
}

// TermOf returns the key term a ciphertext produced by Encrypt was sealed
// with, and false if the input is too short to be such a ciphertext or names
// term 0. It does not authenticate anything: a server uses it to notice a
// term it must load a newer keyring for.
func TermOf(ciphertext []byte) (uint32, bool) {
	if len(ciphertext) < minCiphertext {
		return 0, false
	}
	term := binary.BigEndian.Uint32(ciphertext)
	return term, term != 0
}

// appendAAD appends the barrier's additional data for term and path to dst.
func appendAAD(dst []byte, term uint32, path string) []byte {
	dst = append(dst, barrierAADPrefix...)
	dst = binary.BigEndian.AppendUint32(dst, term)
	return append(dst, path...)
}

// Labels binding wrapped keys to their role, so a wrapped keyring can never
// be unwrapped as a root key or the reverse.
const (
	aadRootKey = "coffer/root-key"
	aadKeyring = "coffer/keyring"
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
