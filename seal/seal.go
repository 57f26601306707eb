package seal

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
	"time"
)

// DefaultProgressTimeout is how long unseal progress is kept without a new
// share when Options.ProgressTimeout is zero.
const DefaultProgressTimeout = 10 * time.Minute

// Status describes a node's seal state.
type Status struct {
	Initialized, Sealed         bool
	Shares, Threshold, Progress int
	Term                        uint32 // active data-key term when unsealed, else 0
	// Type is the cluster's seal type (TypeShamir or TypeStatic; "" before
	// init).
	Type string
}

// Options configures a Seal. The zero value gives the defaults.
type Options struct {
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// ProgressTimeout discards unseal progress that has not received a
	// share for this long; it takes effect on the next share or status
	// call. Zero or negative means DefaultProgressTimeout.
	ProgressTimeout time.Duration
}

// Seal is one node's seal state: sealed (no keys in memory, possibly with
// unseal progress) or unsealed (root key and keyring in memory, barrier
// ready). It is safe for concurrent use; Encrypt and Decrypt, the hot path,
// take only a read lock.
//
// Keys are held in byte slices Seal owns and overwrites when it seals. This
// is best effort: crypto/aes keeps its own expanded key schedules, which we
// cannot reach and only drop references to, and the Go runtime may have
// copied memory while moving stacks.
type Seal struct {
	now     func() time.Time
	timeout time.Duration

	mu sync.RWMutex

	// Unsealed state; all nil while sealed.
	rootKey []byte
	keyring *Keyring
	barrier *Barrier

	// Unseal progress: copies of the shares submitted so far, the stored
	// configuration they were submitted against, and when the last one came.
	shares    [][]byte
	sharesFor Stored
	lastShare time.Time
}

// New returns a sealed Seal.
func New(opts Options) *Seal {
	s := &Seal{now: opts.Now, timeout: opts.ProgressTimeout}
	if s.now == nil {
		s.now = time.Now
	}
	if s.timeout <= 0 {
		s.timeout = DefaultProgressTimeout
	}
	return s
}

// Status returns the node's seal state for the cluster's stored seal
// configuration; stored == nil means the cluster is not initialized.
func (s *Seal) Status(stored *Stored) Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	if stored != nil {
		s.expireProgressLocked(stored)
	}
	return s.statusLocked(stored)
}

// statusLocked builds the Status; s.mu must be held.
func (s *Seal) statusLocked(stored *Stored) Status {
	if stored == nil {
		return Status{Sealed: true}
	}
	st := Status{
		Initialized: true,
		Sealed:      s.barrier == nil,
		Shares:      stored.Shares,
		Threshold:   stored.Threshold,
		Type:        stored.SealType(),
	}
	if s.barrier != nil {
		st.Term = s.barrier.ActiveTerm()
	} else if s.progressMatchesLocked(stored) {
		st.Progress = min(s.indexesLocked(), st.Threshold)
	}
	return st
}

// Unseal submits one unseal key share against the cluster's stored seal
// configuration and its wrapped keyring, and returns the resulting status.
//
// Shares accumulate until Threshold are held; then they are combined, the
// root key is unwrapped with the resulting unseal key and the keyring with
// the root key, and the node is unsealed. Whatever the outcome of that
// attempt, the combined key and the share copies are zeroed and progress
// starts over.
//
// Errors: ErrNotInitialized when stored is nil; ErrInvalidStored for an
// inconsistent stored; ErrInvalidShare for a share of the wrong length or
// index 0; ErrDuplicateShare for a share already submitted, or a fourth
// different share for one index, leaving progress unchanged (up to three
// different shares of one index are kept as candidates, and each set of
// threshold shares they allow is tried); ErrWrongShares when the combined key does not
// open the root key (shares from another cluster or corrupt); and
// ErrInvalidKeyring when the root key opens but the keyring does not. An
// already unsealed node returns its status and no error.
func (s *Seal) Unseal(stored *Stored, wrappedKeyring []byte, share []byte) (Status, error) {
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
	s.expireProgressLocked(stored)

	cfg := stored.config()
	if len(share) != cfg.shareSize() {
		return s.statusLocked(stored), fmt.Errorf("%w: it is %d bytes, this cluster's shares are %d", ErrInvalidShare, len(share), cfg.shareSize())
	}
	if cfg.Shares > 1 && share[KeySize] == 0 {
		return s.statusLocked(stored), fmt.Errorf("%w: its index is 0", ErrInvalidShare)
	}
	sameIndex := 0
	for _, held := range s.shares {
		if subtle.ConstantTimeCompare(held, share) == 1 {
			return s.statusLocked(stored), ErrDuplicateShare
		}
		if cfg.Shares > 1 && held[KeySize] == share[KeySize] {
			sameIndex++
		}
	}
	// Two different shares with one index cannot both be right, but which
	// one is wrong is not known yet: both are kept as candidates, so that
	// a garbage share sent first under a real share's index cannot block
	// the real one. Bounded, so that candidates cannot make combining
	// costly.
	if sameIndex >= maxCandidatesPerIndex || len(s.shares) >= maxHeldShares {
		return s.statusLocked(stored), fmt.Errorf("%w: too many different shares held for one index; reset progress and submit the shares again", ErrDuplicateShare)
	}

	if len(s.shares) == 0 {
		s.sharesFor = Stored{Shares: stored.Shares, Threshold: stored.Threshold, WrappedRootKey: bytes.Clone(stored.WrappedRootKey)}
	}
	s.shares = append(s.shares, bytes.Clone(share))
	s.lastShare = s.now()
	if s.indexesLocked() < cfg.Threshold {
		return s.statusLocked(stored), nil
	}

	err := s.unsealLocked(stored, wrappedKeyring)
	s.clearProgressLocked()
	return s.statusLocked(stored), err
}

// Bounds of unseal progress: different shares kept for one index, and
// shares held in all.
const (
	maxCandidatesPerIndex = 3
	maxHeldShares         = 32
	// maxShareSets bounds the sets of shares one unseal attempt combines.
	maxShareSets = 256
)

// indexesLocked is the number of different share indexes held. s.mu must
// be held.
func (s *Seal) indexesLocked() int {
	if s.sharesFor.Shares == 1 {
		return len(s.shares)
	}
	return distinctIndexes(s.shares)
}

// distinctIndexes is the number of different share indexes in shares.
func distinctIndexes(shares [][]byte) int {
	var seen [256]bool
	n := 0
	for _, sh := range shares {
		if x := sh[KeySize]; !seen[x] {
			seen[x], n = true, n+1
		}
	}
	return n
}

// candidateSets returns the sets of threshold shares, one per index, that
// the held shares allow: one set when every index has one share, more
// when some index has candidates. s.mu must be held.
func (s *Seal) candidateSetsLocked(threshold int) [][][]byte {
	return candidateSets(s.shares, s.sharesFor.Shares == 1, threshold)
}

// candidateSets returns the sets of threshold shares, one per index, that
// shares allow (single: the cluster has one share, which is the key).
func candidateSets(shares [][]byte, single bool, threshold int) [][][]byte {
	if single {
		return [][][]byte{{shares[0]}}
	}
	byIndex := map[byte][][]byte{}
	var order []byte
	for _, sh := range shares {
		x := sh[KeySize]
		if _, ok := byIndex[x]; !ok {
			order = append(order, x)
		}
		byIndex[x] = append(byIndex[x], sh)
	}
	var sets [][][]byte
	var pick func(i int, set [][]byte)
	pick = func(i int, set [][]byte) {
		if len(sets) >= maxShareSets {
			return
		}
		if len(set) == threshold {
			sets = append(sets, append([][]byte(nil), set...))
			return
		}
		if i == len(order) || len(order)-i < threshold-len(set) {
			return
		}
		for _, cand := range byIndex[order[i]] {
			pick(i+1, append(set, cand))
		}
		pick(i+1, set)
	}
	pick(0, nil)
	return sets
}

// openRootKey combines each candidate set of shares until one opens the
// stored root key, and returns it (the caller zeroes it).
func openRootKey(stored *Stored, sets [][][]byte) ([]byte, error) {
	for _, set := range sets {
		var unsealKey []byte
		if stored.Shares == 1 {
			unsealKey = bytes.Clone(set[0])
		} else {
			var err error
			if unsealKey, err = Combine(set); err != nil {
				continue
			}
		}
		rk, err := unwrap(unsealKey, stored.WrappedRootKey, aadRootKey)
		clear(unsealKey)
		if err == nil {
			if len(rk) != KeySize {
				clear(rk)
				return nil, fmt.Errorf("%w: root key has the wrong size", ErrInvalidStored)
			}
			return rk, nil
		}
	}
	return nil, ErrWrongShares
}

// unsealLocked combines the held shares and, if they open the root key and
// keyring, installs them. With candidates for an index it tries each set
// of threshold shares until one opens the root key. s.mu must be held.
func (s *Seal) unsealLocked(stored *Stored, wrappedKeyring []byte) error {
	rootKey, err := openRootKey(stored, s.candidateSetsLocked(stored.Threshold))
	if err != nil {
		return err
	}
	keyring, barrier, err := openKeyring(rootKey, wrappedKeyring)
	if err != nil {
		clear(rootKey)
		return err
	}
	s.rootKey, s.keyring, s.barrier = rootKey, keyring, barrier
	return nil
}

// openKeyring unwraps and decodes a keyring with rootKey and builds its
// barrier. Errors wrap ErrInvalidKeyring.
func openKeyring(rootKey, wrappedKeyring []byte) (*Keyring, *Barrier, error) {
	encoded, err := unwrap(rootKey, wrappedKeyring, aadKeyring)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: it does not open with the root key", ErrInvalidKeyring)
	}
	keyring, err := UnmarshalKeyring(encoded)
	clear(encoded)
	if err != nil {
		return nil, nil, err
	}
	barrier, err := NewBarrier(keyring)
	if err != nil {
		keyring.Zero()
		return nil, nil, err
	}
	return keyring, barrier, nil
}

// ResetProgress discards the shares submitted so far.
func (s *Seal) ResetProgress() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clearProgressLocked()
}

// progressMatchesLocked reports whether the held shares were submitted
// against stored. s.mu must be held.
func (s *Seal) progressMatchesLocked(stored *Stored) bool {
	return len(s.shares) > 0 &&
		s.sharesFor.Shares == stored.Shares &&
		s.sharesFor.Threshold == stored.Threshold &&
		bytes.Equal(s.sharesFor.WrappedRootKey, stored.WrappedRootKey)
}

// expireProgressLocked discards progress that timed out or was collected
// against another seal configuration (the cluster was rekeyed or
// re-initialized meanwhile). s.mu must be held.
func (s *Seal) expireProgressLocked(stored *Stored) {
	if len(s.shares) == 0 {
		return
	}
	if !s.progressMatchesLocked(stored) || s.now().Sub(s.lastShare) >= s.timeout {
		s.clearProgressLocked()
	}
}

// clearProgressLocked zeroes and drops the held shares. s.mu must be held.
func (s *Seal) clearProgressLocked() {
	for _, share := range s.shares {
		clear(share)
	}
	s.shares = nil
	s.sharesFor = Stored{}
	s.lastShare = time.Time{}
}

// Seal zeroes the root key and keyring in memory, drops the barrier and
// discards unseal progress. It is idempotent.
func (s *Seal) Seal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.rootKey)
	s.rootKey = nil
	s.keyring.Zero()
	s.keyring = nil
	s.barrier = nil
	s.clearProgressLocked()
}

// Sealed reports whether the node is sealed.
func (s *Seal) Sealed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.barrier == nil
}

// Term returns the active data-key term, or 0 when sealed.
func (s *Seal) Term() uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.barrier == nil {
		return 0
	}
	return s.barrier.ActiveTerm()
}

// Encrypt seals plaintext as version of the secret at path under the
// active term (see Barrier.Encrypt). It returns ErrSealed when the node is
// sealed.
func (s *Seal) Encrypt(path string, version uint64, plaintext []byte) ([]byte, error) {
	b, err := s.current()
	if err != nil {
		return nil, err
	}
	return b.Encrypt(path, version, plaintext)
}

// Decrypt opens the ciphertext of version of the secret at path (see
// Barrier.Decrypt). It returns ErrSealed when the node is sealed,
// ErrUnknownTerm when the ciphertext's term is newer than the node's
// keyring, and ErrDecrypt otherwise on failure.
func (s *Seal) Decrypt(path string, version uint64, ciphertext []byte) ([]byte, error) {
	b, err := s.current()
	if err != nil {
		return nil, err
	}
	return b.Decrypt(path, version, ciphertext)
}

// SealEntry seals a system entry's value for its key (see
// Barrier.SealEntry). It returns ErrSealed when the node is sealed.
func (s *Seal) SealEntry(key string, plaintext []byte) ([]byte, error) {
	b, err := s.current()
	if err != nil {
		return nil, err
	}
	return b.SealEntry(key, plaintext)
}

// OpenEntry opens a system entry's value (see Barrier.OpenEntry), with the
// errors of Decrypt.
func (s *Seal) OpenEntry(key string, ciphertext []byte) ([]byte, error) {
	b, err := s.current()
	if err != nil {
		return nil, err
	}
	return b.OpenEntry(key, ciphertext)
}

// current returns the barrier of the installed keyring, or ErrSealed. A
// Barrier is immutable, so it is used after the lock is released.
func (s *Seal) current() (*Barrier, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.barrier == nil {
		return nil, ErrSealed
	}
	return s.barrier, nil
}

// Rotate builds the current keyring plus a new data-key term and returns it
// wrapped by the root key, with its active term. It does not install it:
// the server replicates the wrapped keyring through Raft and then calls
// InstallKeyring on every node. It returns ErrSealed when sealed.
func (s *Seal) Rotate() (wrappedKeyring []byte, term uint32, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.barrier == nil {
		return nil, 0, ErrSealed
	}
	next, err := s.keyring.Rotate()
	if err != nil {
		return nil, 0, err
	}
	defer next.Zero()
	encoded := next.Marshal()
	defer clear(encoded)
	wrapped, err := wrap(s.rootKey, encoded, aadKeyring)
	if err != nil {
		return nil, 0, err
	}
	return wrapped, next.ActiveTerm(), nil
}

// InstallKeyring unwraps wrappedKeyring with the in-memory root key and
// installs it if its active term is at least the current one; an older
// keyring is ignored. It returns ErrSealed when sealed and an error wrapping
// ErrInvalidKeyring when the keyring does not open or decode.
func (s *Seal) InstallKeyring(wrappedKeyring []byte) error {
	return s.installKeyring(wrappedKeyring)
}

// SnapshotMAC returns an HMAC-SHA256 keyed with a key derived from the
// root key (HKDF-SHA256 with its own label), which authenticates the
// cluster's snapshots: only a node that holds this cluster's keys can make
// one that another of its nodes accepts, and any change to the file (a
// truncation, a flipped byte, an edited header) fails it. The root key
// survives rotation, so a snapshot stays valid across data-key terms.
// ErrSealed when the node holds no keys.
func (s *Seal) SnapshotMAC() (hash.Hash, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.barrier == nil {
		return nil, ErrSealed
	}
	key, err := hkdf.Key(sha256.New, s.rootKey, nil, "coffer snapshot authentication v1", KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return hmac.New(sha256.New, key), nil
}

// Fingerprint names the cluster's keys without revealing them: the hex of
// 16 bytes derived from the root key (HKDF-SHA256 with its own label).
// The root key survives rekeys, seal migrations and data-key rotations,
// so the fingerprint does too; another cluster's (or a re-initialized
// one's) differs. ErrSealed when the node holds no keys.
func (s *Seal) Fingerprint() (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.barrier == nil {
		return "", ErrSealed
	}
	fp, err := hkdf.Key(sha256.New, s.rootKey, nil, "coffer cluster fingerprint v1", 16)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(fp), nil
}

// installKeyring is InstallKeyring.
func (s *Seal) installKeyring(wrappedKeyring []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.barrier == nil {
		return ErrSealed
	}
	keyring, barrier, err := openKeyring(s.rootKey, wrappedKeyring)
	if err != nil {
		return err
	}
	if keyring.ActiveTerm() < s.keyring.ActiveTerm() {
		keyring.Zero()
		return nil
	}
	s.keyring.Zero()
	s.keyring, s.barrier = keyring, barrier
	return nil
}
