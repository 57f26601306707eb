package seal

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// ParseStaticKey reads a static seal key: exactly KeySize raw bytes, or
// text (surrounding whitespace ignored) in hex or base64 (standard or URL
// alphabet, padding optional) that decodes to KeySize bytes. The result
// is a new slice the caller zeroes. The error never holds the key, only
// what was wrong with its shape.
func ParseStaticKey(b []byte) ([]byte, error) {
	if len(b) == KeySize {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimSpace(b)
	if len(t) == 2*KeySize {
		key := make([]byte, KeySize)
		if _, err := hex.Decode(key, t); err == nil {
			return key, nil
		}
		clear(key)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		key := make([]byte, enc.DecodedLen(len(t)))
		n, err := enc.Decode(key, t)
		if err == nil && n == KeySize {
			return key[:n], nil
		}
		clear(key)
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("%w (it is empty)", ErrInvalidStaticKey)
	}
	return nil, fmt.Errorf("%w (it is %d bytes and neither raw, hex nor base64 of %d bytes)", ErrInvalidStaticKey, len(b), KeySize)
}

// UnsealStatic unseals the node with the static seal key: it opens the
// root key the record holds for the static seal, then the keyring. An
// unsealed node returns its status and no error.
//
// Errors: ErrNotInitialized when stored is nil; ErrInvalidStored for an
// inconsistent record, or one that is not under the static seal (a
// migration is pending); ErrInvalidStaticKey for a key of the wrong size;
// ErrWrongStaticKey when the key does not open the root key;
// ErrInvalidKeyring when the root key does not open the keyring.
func (s *Seal) UnsealStatic(stored *Stored, wrappedKeyring, staticKey []byte) (Status, error) {
	if stored == nil {
		return Status{Sealed: true}, ErrNotInitialized
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.barrier != nil {
		return s.statusLocked(stored), nil
	}
	if err := stored.validate(); err != nil {
		return s.statusLocked(stored), err
	}
	if stored.SealType() != TypeStatic {
		return s.statusLocked(stored), fmt.Errorf("%w: the cluster is under the %s seal, not the static seal", ErrInvalidStored, stored.SealType())
	}
	if len(staticKey) != KeySize {
		return s.statusLocked(stored), ErrInvalidStaticKey
	}
	rootKey, err := unwrap(staticKey, stored.StaticWrappedRootKey, aadStaticRootKey)
	if err != nil {
		return s.statusLocked(stored), ErrWrongStaticKey
	}
	if len(rootKey) != KeySize {
		clear(rootKey)
		return s.statusLocked(stored), fmt.Errorf("%w: root key has the wrong size", ErrInvalidStored)
	}
	keyring, barrier, err := openKeyring(rootKey, wrappedKeyring)
	if err != nil {
		clear(rootKey)
		return s.statusLocked(stored), err
	}
	s.clearProgressLocked()
	s.rootKey, s.keyring, s.barrier = rootKey, keyring, barrier
	return s.statusLocked(stored), nil
}

// WrapRootKeyStatic returns the in-memory root key sealed by staticKey,
// for the record of a migration to the static seal (Stored.WithStatic).
// ErrSealed when the node holds no keys.
func (s *Seal) WrapRootKeyStatic(staticKey []byte) ([]byte, error) {
	if len(staticKey) != KeySize {
		return nil, ErrInvalidStaticKey
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.barrier == nil {
		return nil, ErrSealed
	}
	return wrap(staticKey, s.rootKey, aadStaticRootKey)
}
