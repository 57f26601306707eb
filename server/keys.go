package server

import (
	"errors"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"coffer/seal"
)

// kvHealthName is the name the health service reports for the KV API: it is
// SERVING only while the node is unsealed.
const kvHealthName = "coffer.v1.KV"

// sysStore reads the replicated sys table.
type sysStore interface {
	SysGet(key string) ([]byte, error)
}

// sealFlag tells peers (through gossip) whether this node is sealed.
type sealFlag interface {
	SetSealed(sealed bool)
}

// keys is the node's barrier as the services use it: the seal, with the
// replicated keyring reloaded when a value names a term this node has not
// loaded yet, and the transitions between sealed and unsealed, which
// health, gossip and the leader duties learn of.
type keys struct {
	seal   *seal.Seal
	sys    sysStore
	health *health.Server
	gossip sealFlag
	logger hclog.Logger
	// nudge wakes the leader duties (a sealed leader hands over).
	nudge chan struct{}
	// resealed is signalled when the node seals (the static seal's
	// auto-unseal waits on it while the node is unsealed).
	resealed chan struct{}
	// onSeal runs when the node seals (the audit log drops its salt).
	onSeal func()
	// restoring is set while this node runs an operator's restore: the
	// keys are checked once Raft is done.
	restoring atomic.Bool
}

// Sealed reports whether the node holds no keys.
func (k *keys) Sealed() bool { return k.seal.Sealed() }

// Encrypt seals plaintext as version of the secret at path under the
// active term.
func (k *keys) Encrypt(path string, version uint64, plaintext []byte) ([]byte, error) {
	return k.seal.Encrypt(path, version, plaintext)
}

// Decrypt opens the stored value of version of the secret at path.
func (k *keys) Decrypt(path string, version uint64, ciphertext []byte) ([]byte, error) {
	return k.withReload(func() ([]byte, error) { return k.seal.Decrypt(path, version, ciphertext) })
}

// SealEntry seals a system entry's value for its key.
func (k *keys) SealEntry(key string, plaintext []byte) ([]byte, error) {
	return k.seal.SealEntry(key, plaintext)
}

// OpenEntry opens a system entry's value stored at key.
func (k *keys) OpenEntry(key string, ciphertext []byte) ([]byte, error) {
	return k.withReload(func() ([]byte, error) { return k.seal.OpenEntry(key, ciphertext) })
}

// withReload runs open, and once more after reloading the keyring when the
// value uses a term this node has not loaded yet (a rotation it only
// replicated).
func (k *keys) withReload(open func() ([]byte, error)) ([]byte, error) {
	pt, err := open()
	if errors.Is(err, seal.ErrUnknownTerm) {
		if rerr := k.reloadKeyring(); rerr != nil {
			return nil, rerr
		}
		pt, err = open()
	}
	return pt, err
}

// reloadKeyring installs the newest replicated keyring.
func (k *keys) reloadKeyring() error {
	wrapped, err := k.sys.SysGet(sysKeyringKey)
	if err != nil {
		return err
	}
	return k.seal.InstallKeyring(wrapped)
}

// sealNode drops the keys and tells clients, peers and the leader duties.
func (k *keys) sealNode() {
	k.seal.Seal()
	if k.onSeal != nil {
		k.onSeal()
	}
	k.health.SetServingStatus(kvHealthName, healthpb.HealthCheckResponse_NOT_SERVING)
	k.gossip.SetSealed(true)
	k.nudgeDuties()
	select {
	case k.resealed <- struct{}{}:
	default:
	}
}

// nudgeDuties wakes the leader duties (when this node leads).
func (k *keys) nudgeDuties() {
	select {
	case k.nudge <- struct{}{}:
	default:
	}
}

// unsealedNode tells clients and peers that the node serves again.
func (k *keys) unsealedNode() {
	k.health.SetServingStatus(kvHealthName, healthpb.HealthCheckResponse_SERVING)
	k.gossip.SetSealed(false)
}

// stateRestored runs after the state machine installed a snapshot (an
// operator's restore, or the leader's snapshot sent to a lagging node). The
// state may hold another keyring: older terms, or under -force another
// cluster's keys. An unsealed node loads it, and seals itself when its keys
// cannot open it, so that it never serves under keys the state no longer
// matches.
func (k *keys) stateRestored() {
	if k.Sealed() || k.restoring.Load() {
		return
	}
	if err := k.reloadKeyring(); err != nil {
		k.logger.Warn("restored state is not readable with this node's keys; sealing: unseal with the shares of the cluster the snapshot came from", "error", err)
		k.sealNode()
	}
}
