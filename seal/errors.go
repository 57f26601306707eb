package seal

import "errors"

// Sentinel errors returned by this package. Functions wrap them with %w and a
// detail that never contains key material, shares or plaintext; compare with
// errors.Is.
var (
	// ErrSealed is returned by operations that need the keys while the node
	// is sealed.
	ErrSealed = errors.New("seal: node is sealed: unseal it with `coffer operator unseal`")

	// ErrNotInitialized is returned when the cluster has no seal
	// configuration yet.
	ErrNotInitialized = errors.New("seal: cluster is not initialized: initialize it with `coffer operator init`")

	// ErrInvalidConfig is returned for an unusable share count or threshold.
	ErrInvalidConfig = errors.New("seal: invalid seal configuration: choose -key-shares from 1 to 255 and -key-threshold from 2 to -key-shares (or 1 and 1 for a dev cluster)")

	// ErrInvalidSplit is returned by Split for unusable arguments.
	ErrInvalidSplit = errors.New("seal: invalid secret sharing arguments: use a non-empty secret and 2 <= threshold <= parts <= 255")

	// ErrInvalidShare is returned for a share that is malformed (wrong
	// length, zero index, inconsistent with the other shares).
	ErrInvalidShare = errors.New("seal: invalid unseal key share: submit the share exactly as printed by `coffer operator init`")

	// ErrDuplicateShare is returned when the same share (or another share
	// with the same index) is submitted twice; progress is unchanged.
	ErrDuplicateShare = errors.New("seal: unseal key share already submitted: submit a different share, or reset progress if a share was wrong")

	// ErrWrongShares is returned when a threshold of well-formed shares does
	// not open the root key: they belong to another cluster or one of them is
	// corrupt. Unseal progress has been reset.
	ErrWrongShares = errors.New("seal: unseal key shares do not match this cluster: progress was reset; submit a threshold of shares from this cluster's `coffer operator init`")

	// ErrUnknownTerm is returned when ciphertext names a key term the
	// keyring does not hold.
	ErrUnknownTerm = errors.New("seal: ciphertext uses a key term this node does not hold: reload the keyring (the node may have missed a rotation)")

	// ErrDecrypt is returned when ciphertext is truncated, corrupt or bound
	// to another path. It deliberately says no more than that.
	ErrDecrypt = errors.New("seal: decryption failed: the ciphertext is corrupt or does not belong to this path")

	// ErrInvalidKeyring is returned when a keyring cannot be decoded or
	// unwrapped with the root key.
	ErrInvalidKeyring = errors.New("seal: keyring is corrupt or belongs to another cluster: restore the cluster's data from a snapshot")

	// ErrInvalidStored is returned when the stored seal configuration cannot
	// be decoded or is inconsistent.
	ErrInvalidStored = errors.New("seal: stored seal configuration is corrupt: restore the cluster's data from a snapshot")

	// ErrTermsExhausted is returned by Rotate when no further key term can be
	// numbered.
	ErrTermsExhausted = errors.New("seal: key terms exhausted: this keyring cannot be rotated any further")

	// ErrInvalidStaticKey is returned for a static seal key that is not
	// 32 bytes (raw, or base64 or hex text).
	ErrInvalidStaticKey = errors.New("seal: invalid static seal key: give 32 random bytes, raw or as base64 or hex text (e.g. from `head -c 32 /dev/urandom | base64`)")

	// ErrWrongStaticKey is returned when the static seal key does not open
	// the root key the record holds for it.
	ErrWrongStaticKey = errors.New("seal: the static seal key does not open this cluster's root key: give the node the key the cluster's other nodes use and restart it")
)
