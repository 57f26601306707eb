package seal

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Config is the seal configuration chosen at init: the number of unseal key
// shares handed out and how many of them unseal a node.
type Config struct {
	Shares, Threshold int
}

// DefaultConfig returns the production default: 5 shares, any 3 unseal.
func DefaultConfig() Config { return Config{Shares: 5, Threshold: 3} }

// Validate reports whether c is usable: Shares from 1 to 255 and Threshold
// from 1 to Shares, where a threshold of 1 goes only with a single share (the
// dev setup) and a single share only with a threshold of 1. Errors wrap
// ErrInvalidConfig and name the -key-shares / -key-threshold flags.
func (c Config) Validate() error {
	switch {
	case c.Shares < 1 || c.Shares > maxParts:
		return fmt.Errorf("%w: -key-shares is %d, it must be from 1 to %d", ErrInvalidConfig, c.Shares, maxParts)
	case c.Threshold < 1 || c.Threshold > c.Shares:
		return fmt.Errorf("%w: -key-threshold is %d, it must be from 1 to -key-shares (%d)", ErrInvalidConfig, c.Threshold, c.Shares)
	case c.Threshold == 1 && c.Shares != 1:
		return fmt.Errorf("%w: threshold 1 requires a single share: use -key-shares 1 -key-threshold 1 for a dev cluster, or a -key-threshold of at least 2", ErrInvalidConfig)
	}
	return nil
}

// shareSize returns the length of one unseal key share under c: the bare
// unseal key for a single share, the key plus its x coordinate otherwise.
func (c Config) shareSize() int {
	if c.Shares == 1 {
		return KeySize
	}
	return KeySize + 1
}

// Seal types: how a node gets the key that opens the root key when it
// starts.
const (
	// TypeShamir: the operator key's shares unseal a node (the default).
	TypeShamir = "shamir"
	// TypeStatic: a static key every node holds (-seal-key-file) opens a
	// second copy of the root key, so nodes unseal themselves; the
	// operator key's shares are recovery shares.
	TypeStatic = "static"
)

// Stored is what the cluster stores about the seal, replicated through Raft.
// It holds no secret in clear.
//
// WrappedRootKey is the root key sealed by the operator key, whose shares
// are the unseal shares (Shamir seal) or the recovery shares (static
// seal): one key, so that rekey, generate-root and the migrations between
// the seals work alike in both. Under the static seal the record also
// holds the root key sealed by the static key.
type Stored struct {
	Shares, Threshold int
	WrappedRootKey    []byte // root key sealed by the operator key (AES-GCM)
	// Type is TypeShamir or TypeStatic; "" (records written before the
	// static seal existed) means TypeShamir.
	Type string
	// StaticWrappedRootKey (TypeStatic only) is the root key sealed by
	// the static seal key.
	StaticWrappedRootKey []byte
}

// Encoding versions of Stored: 1 is the Shamir record (byte for byte what
// builds before the static seal wrote, so they still read it), 2 a record
// with a seal type.
const (
	storedVersion      = 1
	storedVersionTyped = 2
)

// storedJSON is Stored's encoding.
type storedJSON struct {
	Version              int    `json:"version"`
	Shares               int    `json:"shares"`
	Threshold            int    `json:"threshold"`
	WrappedRootKey       []byte `json:"wrapped_root_key"`
	Type                 string `json:"type,omitempty"`
	StaticWrappedRootKey []byte `json:"static_wrapped_root_key,omitempty"`
}

// SealType is s's seal type, TypeShamir for a record without one.
func (s *Stored) SealType() string {
	if s.Type == "" {
		return TypeShamir
	}
	return s.Type
}

// Clone returns a deep copy of s.
func (s *Stored) Clone() *Stored {
	c := *s
	c.WrappedRootKey = bytes.Clone(s.WrappedRootKey)
	c.StaticWrappedRootKey = bytes.Clone(s.StaticWrappedRootKey)
	return &c
}

// WithStatic returns a copy of s under the static seal, with the root key
// sealed by the static key (from Seal.WrapRootKeyStatic): the migration
// from the Shamir seal, whose unseal shares become recovery shares.
func (s *Stored) WithStatic(staticWrapped []byte) *Stored {
	c := s.Clone()
	c.Type, c.StaticWrappedRootKey = TypeStatic, bytes.Clone(staticWrapped)
	return c
}

// WithoutStatic returns a copy of s under the Shamir seal: the migration
// from the static seal, whose recovery shares become unseal shares.
func (s *Stored) WithoutStatic() *Stored {
	c := s.Clone()
	c.Type, c.StaticWrappedRootKey = "", nil
	return c
}

// config returns the seal configuration s records.
func (s *Stored) config() Config { return Config{Shares: s.Shares, Threshold: s.Threshold} }

// validate reports whether s is consistent; errors wrap ErrInvalidStored.
func (s *Stored) validate() error {
	if err := s.config().Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidStored, err)
	}
	if len(s.WrappedRootKey) != wrappedKeySize {
		return fmt.Errorf("%w: wrapped root key is %d bytes, want %d", ErrInvalidStored, len(s.WrappedRootKey), wrappedKeySize)
	}
	switch s.Type {
	case "", TypeShamir:
		if len(s.StaticWrappedRootKey) != 0 {
			return fmt.Errorf("%w: a Shamir seal record holds a static-wrapped root key", ErrInvalidStored)
		}
	case TypeStatic:
		if len(s.StaticWrappedRootKey) != wrappedKeySize {
			return fmt.Errorf("%w: static-wrapped root key is %d bytes, want %d", ErrInvalidStored, len(s.StaticWrappedRootKey), wrappedKeySize)
		}
	default:
		return fmt.Errorf("%w: unknown seal type %q", ErrInvalidStored, s.Type)
	}
	return nil
}

// Marshal encodes s as JSON with a version field. The encoding is stable:
// the same Stored always gives the same bytes, and a Shamir record the
// bytes of encoding version 1.
func (s *Stored) Marshal() []byte {
	j := storedJSON{
		Version:        storedVersion,
		Shares:         s.Shares,
		Threshold:      s.Threshold,
		WrappedRootKey: s.WrappedRootKey,
	}
	if s.SealType() != TypeShamir {
		j.Version, j.Type, j.StaticWrappedRootKey = storedVersionTyped, s.Type, s.StaticWrappedRootKey
	}
	b, err := json.Marshal(j)
	if err != nil { // ints, strings and byte slices always encode
		panic("seal: internal error: encoding the seal configuration: " + err.Error())
	}
	return b
}

// UnmarshalStored decodes and validates the output of Stored.Marshal. It
// never panics; malformed or inconsistent input gives an error wrapping
// ErrInvalidStored.
func UnmarshalStored(b []byte) (*Stored, error) {
	var j storedJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidStored, err)
	}
	switch {
	case j.Version == storedVersion && (j.Type != "" || len(j.StaticWrappedRootKey) != 0):
		return nil, fmt.Errorf("%w: a version 1 record has no seal type", ErrInvalidStored)
	case j.Version == storedVersionTyped && (j.Type == "" || j.Type == TypeShamir):
		return nil, fmt.Errorf("%w: a version 2 record names a seal type other than Shamir", ErrInvalidStored)
	case j.Version != storedVersion && j.Version != storedVersionTyped:
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrInvalidStored, j.Version)
	}
	s := &Stored{Shares: j.Shares, Threshold: j.Threshold, WrappedRootKey: j.WrappedRootKey, Type: j.Type, StaticWrappedRootKey: j.StaticWrappedRootKey}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// InitResult is the output of Initialize. Shares are returned once and
// never stored: hand them to their holders and zero them.
type InitResult struct {
	Stored         *Stored
	WrappedKeyring []byte   // keyring (term 1) sealed by the root key
	Shares         [][]byte // unseal key shares; with Shares==1 the single share IS the 32-byte unseal key
	// Barrier is the new keyring's barrier, for the entries written with
	// the keys (the root token's record): drop it once they are sealed.
	Barrier *Barrier
}

// Initialize creates the keys of a new cluster: a random unseal key split
// into cfg.Shares shares (threshold cfg.Threshold), a random root key wrapped
// by the unseal key, and a keyring with one data key (term 1) wrapped by the
// root key. The unseal key, root key and keyring are zeroed before it
// returns. Invalid configurations give an error wrapping ErrInvalidConfig.
func Initialize(cfg Config) (*InitResult, error) {
	return initialize(cfg, nil)
}

// InitializeStatic is Initialize under the static seal: the record also
// holds the root key sealed by staticKey (see ParseStaticKey), and the
// shares are recovery shares, needed for generate-root, rekey and a
// migration back to the Shamir seal, but not to unseal.
func InitializeStatic(cfg Config, staticKey []byte) (*InitResult, error) {
	if len(staticKey) != KeySize {
		return nil, ErrInvalidStaticKey
	}
	return initialize(cfg, staticKey)
}

func initialize(cfg Config, staticKey []byte) (*InitResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	unsealKey := make([]byte, KeySize)
	defer clear(unsealKey)
	randRead(unsealKey)
	rootKey := make([]byte, KeySize)
	defer clear(rootKey)
	randRead(rootKey)

	keyring, err := NewKeyring()
	if err != nil {
		return nil, err
	}
	defer keyring.Zero()
	encoded := keyring.Marshal()
	defer clear(encoded)

	barrier, err := NewBarrier(keyring)
	if err != nil {
		return nil, err
	}
	wrappedRootKey, err := wrap(unsealKey, rootKey, aadRootKey)
	if err != nil {
		return nil, err
	}
	wrappedKeyring, err := wrap(rootKey, encoded, aadKeyring)
	if err != nil {
		return nil, err
	}
	stored := &Stored{Shares: cfg.Shares, Threshold: cfg.Threshold, WrappedRootKey: wrappedRootKey}
	if staticKey != nil {
		sw, err := wrap(staticKey, rootKey, aadStaticRootKey)
		if err != nil {
			return nil, err
		}
		stored = stored.WithStatic(sw)
	}

	var shares [][]byte
	if cfg.Shares == 1 {
		shares = [][]byte{append([]byte(nil), unsealKey...)}
	} else if shares, err = Split(unsealKey, cfg.Shares, cfg.Threshold); err != nil {
		return nil, err
	}
	return &InitResult{
		Stored:         stored,
		WrappedKeyring: wrappedKeyring,
		Shares:         shares,
		Barrier:        barrier,
	}, nil
}
