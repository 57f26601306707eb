package seal

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// KeySize is the size in bytes of every key in this package: data keys, the
// root key and the unseal key are all AES-256 keys.
const KeySize = 32

// Keyring encoding: version (1) | active term (4) | count (4) |
// count × (term (4) | key (32)), terms strictly increasing.
const (
	keyringVersion    = 1
	keyringHeaderSize = 1 + 4 + 4
	keyringEntrySize  = 4 + KeySize
)

// Keyring holds the data keys, numbered by term from 1, and the active term
// used for new encryptions. Older terms stay so that older ciphertext stays
// readable. A Keyring is not safe for concurrent mutation; Seal guards its
// own.
type Keyring struct {
	active uint32
	keys   map[uint32][]byte // term → KeySize bytes owned by the keyring
}

// NewKeyring returns a keyring holding one random key, term 1, active.
func NewKeyring() (*Keyring, error) {
	key := make([]byte, KeySize)
	randRead(key)
	return &Keyring{active: 1, keys: map[uint32][]byte{1: key}}, nil
}

// Rotate returns a new keyring holding copies of every key of k plus a fresh
// random key under term ActiveTerm()+1, which is active in the new keyring.
// k itself is unchanged. It fails with ErrTermsExhausted when the term
// would pass MaxTerm.
func (k *Keyring) Rotate() (*Keyring, error) {
	if k.active >= MaxTerm {
		return nil, ErrTermsExhausted
	}
	next := &Keyring{active: k.active + 1, keys: make(map[uint32][]byte, len(k.keys)+1)}
	for term, key := range k.keys {
		next.keys[term] = slices.Clone(key)
	}
	key := make([]byte, KeySize)
	randRead(key)
	next.keys[next.active] = key
	return next, nil
}

// ActiveTerm returns the term new encryptions use.
func (k *Keyring) ActiveTerm() uint32 { return k.active }

// terms returns the keyring's terms in increasing order.
func (k *Keyring) terms() []uint32 {
	terms := make([]uint32, 0, len(k.keys))
	for term := range k.keys {
		terms = append(terms, term)
	}
	slices.Sort(terms)
	return terms
}

// Marshal encodes the keyring deterministically. The result contains the
// keys in clear: wrap it (as Seal does) and zero it after use.
func (k *Keyring) Marshal() []byte {
	terms := k.terms()
	b := make([]byte, keyringHeaderSize, keyringHeaderSize+len(terms)*keyringEntrySize)
	b[0] = keyringVersion
	binary.BigEndian.PutUint32(b[1:], k.active)
	binary.BigEndian.PutUint32(b[5:], uint32(len(terms)))
	for _, term := range terms {
		b = binary.BigEndian.AppendUint32(b, term)
		b = append(b, k.keys[term]...)
	}
	return b
}

// UnmarshalKeyring decodes a keyring encoded by Marshal. It copies the keys,
// so the caller may zero b afterwards. It never panics; for any malformed
// input (wrong version or length, zero, duplicate or unordered terms, an
// active term that is not the newest) it returns an error wrapping
// ErrInvalidKeyring.
func UnmarshalKeyring(b []byte) (*Keyring, error) {
	if len(b) < keyringHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrInvalidKeyring, len(b))
	}
	if b[0] != keyringVersion {
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrInvalidKeyring, b[0])
	}
	active := binary.BigEndian.Uint32(b[1:])
	count := binary.BigEndian.Uint32(b[5:])
	body := b[keyringHeaderSize:]
	if count == 0 || len(body)%keyringEntrySize != 0 || uint64(len(body)/keyringEntrySize) != uint64(count) {
		return nil, fmt.Errorf("%w: length does not match %d keys", ErrInvalidKeyring, count)
	}
	k := &Keyring{active: active, keys: make(map[uint32][]byte, count)}
	var prev uint32
	for off := 0; off < len(body); off += keyringEntrySize {
		term := binary.BigEndian.Uint32(body[off:])
		if term <= prev { // also rejects term 0
			k.Zero()
			return nil, fmt.Errorf("%w: terms are not strictly increasing from 1", ErrInvalidKeyring)
		}
		if term > MaxTerm {
			k.Zero()
			return nil, fmt.Errorf("%w: term %d is above the largest (%d)", ErrInvalidKeyring, term, MaxTerm)
		}
		prev = term
		k.keys[term] = slices.Clone(body[off+4 : off+keyringEntrySize])
	}
	if active != prev {
		k.Zero()
		return nil, fmt.Errorf("%w: active term %d is not the newest term %d", ErrInvalidKeyring, active, prev)
	}
	return k, nil
}

// Zero overwrites every key of the keyring with zeros and empties it. A
// zeroed keyring must not be used again. Zero is idempotent and safe on a nil
// keyring.
func (k *Keyring) Zero() {
	if k == nil {
		return
	}
	for term, key := range k.keys {
		clear(key)
		delete(k.keys, term)
	}
	k.active = 0
}
