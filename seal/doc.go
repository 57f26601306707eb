// Package seal protects coffer's data at rest and in the Raft log.
//
// It owns three things, each in its own file:
//
//   - Shamir secret sharing over GF(2^8) (shamir.go, gf256.go): the unseal key
//     is split into n shares of which any k recover it.
//   - The barrier (keyring.go, barrier.go): AES-256-GCM data keys numbered by
//     term. Every value is encrypted as term | nonce | sealed box with the path
//     bound into the additional data, so ciphertext cannot be moved between
//     paths. Rotation adds a term; old terms stay readable.
//   - The per-node seal state machine (init.go, seal.go): a node starts
//     sealed, accumulates unseal key shares, combines them, unwraps the root
//     key and then the keyring, and becomes unsealed. Sealing zeroes the keys.
//
// The key hierarchy is: unseal key (split into shares, never stored) wraps the
// root key; the root key wraps the keyring; the keyring's data keys encrypt
// values. Only wrapped material is ever stored, and no key, share or plaintext
// appears in an error message.
//
// seal is a leaf package: it imports only the standard library.
package seal
