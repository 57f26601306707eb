package seal

import (
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

// Stored is what the cluster stores about the seal, replicated through Raft.
// It holds no secret in clear.
type Stored struct {
	Shares, Threshold int
	WrappedRootKey    []byte // root key sealed by the unseal key (AES-GCM)
}

// storedVersion is the version of Stored's encoding.
const storedVersion = 1

// storedJSON is Stored's encoding.
type storedJSON struct {
	Version        int    `json:"version"`
	Shares         int    `json:"shares"`
	Threshold      int    `json:"threshold"`
	WrappedRootKey []byte `json:"wrapped_root_key"`
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
	return nil
}

// Marshal encodes s as JSON with a version field. The encoding is stable:
// the same Stored always gives the same bytes.
func (s *Stored) Marshal() []byte {
	b, err := json.Marshal(storedJSON{
		Version:        storedVersion,
		Shares:         s.Shares,
		Threshold:      s.Threshold,
		WrappedRootKey: s.WrappedRootKey,
	})
	if err != nil { // ints and a byte slice always encode
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
	if j.Version != storedVersion {
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrInvalidStored, j.Version)
	}
	s := &Stored{Shares: j.Shares, Threshold: j.Threshold, WrappedRootKey: j.WrappedRootKey}
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

	var shares [][]byte
	if cfg.Shares == 1 {
		shares = [][]byte{append([]byte(nil), unsealKey...)}
	} else if shares, err = Split(unsealKey, cfg.Shares, cfg.Threshold); err != nil {
		return nil, err
	}
	return &InitResult{
		Stored:         &Stored{Shares: cfg.Shares, Threshold: cfg.Threshold, WrappedRootKey: wrappedRootKey},
		WrappedKeyring: wrappedKeyring,
		Shares:         shares,
		Barrier:        barrier,
	}, nil
}
