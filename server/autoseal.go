package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// nodeSeal is this node's seal configuration (Shamir or static, with the
// static key) and its part in a seal migration. The static key is read
// once at start; it never reaches a log line or an error.
type nodeSeal struct {
	typ string
	// key is the static seal key; nil under the Shamir seal or when it
	// could not be read (problem says why, in one line, without the key).
	key []byte

	mu sync.Mutex
	// problem says why the static key is unusable (unreadable, not a key,
	// or not the cluster's), in one line without the key; "" when fine.
	problem string
	// migrated: the node was unsealed with -migrate while the record was
	// under the other seal; it writes the migrated record when it leads.
	migrated bool
	// sealedByRequest: an operator sealed the node; it does not unseal
	// itself again until it restarts.
	sealedByRequest bool
	// noted is the last reason for staying sealed that was logged, so
	// that the reason is logged once, not at every applied entry.
	noted string
}

// newNodeSeal reads the node's seal configuration. A static key that
// cannot be read or parsed is not an error: the node starts, stays sealed
// and says why (problem).
func newNodeSeal(cfg Config) *nodeSeal {
	n := &nodeSeal{typ: cfg.Seal}
	if n.typ == "" {
		n.typ = SealShamir
	}
	if n.typ != SealStatic {
		return n
	}
	raw, src := cfg.SealKey, "$COFFER_SEAL_KEY"
	if len(raw) == 0 {
		src = "-seal-key-file " + cfg.SealKeyFile
		b, err := os.ReadFile(cfg.SealKeyFile)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err // the path is named once, in src
			}
			n.problem = fmt.Sprintf("static seal: cannot read %s (%v): the node stays sealed; put the cluster's 32-byte seal key there (raw, base64 or hex) and restart the node", src, err)
			return n
		}
		raw = b
		defer clear(b)
	}
	key, err := seal.ParseStaticKey(raw)
	if err != nil {
		n.problem = fmt.Sprintf("static seal: %s does not hold a seal key (%v): the node stays sealed; fix it and restart the node", src, err)
		return n
	}
	n.key = key
	return n
}

// static reports whether the node runs the static seal.
func (n *nodeSeal) static() bool { return n.typ == SealStatic }

// pending reports whether the record is under another seal than the
// node's (a migration is pending on this node).
func (n *nodeSeal) pending(stored *seal.Stored) bool {
	return stored != nil && stored.SealType() != n.typ
}

// keyProblem is why the static key is unusable, or "".
func (n *nodeSeal) keyProblem() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.problem
}

// zero drops the static key.
func (n *nodeSeal) zero() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.key)
	n.key = nil
}

// note logs why the node stays sealed, once per reason.
func (y *sysServer) note(reason string) {
	n := y.nseal
	n.mu.Lock()
	same := n.noted == reason
	n.noted = reason
	n.mu.Unlock()
	if !same && reason != "" {
		y.logger.Error(reason)
	}
}

// sealMessage is why a sealed node stays sealed when shares would not
// help (the status's message), or "".
func (y *sysServer) sealMessage(stored *seal.Stored) string {
	n := y.nseal
	switch {
	case stored == nil:
		return ""
	case n.pending(stored):
		return fmt.Sprintf("seal migration pending: this node runs the %s seal and the cluster's record is under the %s seal: unseal it with `coffer operator unseal -migrate` and a threshold of the current %s", n.typ, stored.SealType(), shareWord(stored))
	case n.static() && n.keyProblem() != "":
		return n.keyProblem()
	case n.static():
		n.mu.Lock()
		byRequest := n.sealedByRequest
		n.mu.Unlock()
		if byRequest {
			return "sealed by request: a node under the static seal unseals itself again when it restarts"
		}
	}
	return ""
}

// shareWord names the shares of stored's operator key.
func shareWord(stored *seal.Stored) string {
	if stored.SealType() == seal.TypeStatic {
		return "recovery shares"
	}
	return "unseal shares"
}

// autoUnseal runs on a node under the static seal until ctx ends: while
// the node is sealed (and was not sealed by request) it unseals it with
// the static key whenever the record allows, at start, right after the
// init is applied, and after a migration to the static seal. While sealed
// it waits for applied entries, not for time; while unsealed, for the node
// to seal again (a restored snapshot under other keys), so that it costs
// the apply path nothing.
func (y *sysServer) autoUnseal(ctx context.Context) {
	for {
		if !y.keys.Sealed() {
			select {
			case <-ctx.Done():
				return
			case <-y.keys.resealed:
			}
			continue
		}
		y.tryAutoUnseal()
		if !y.keys.Sealed() {
			continue
		}
		idx := y.store.AppliedIndex()
		if err := y.store.WaitApplied(ctx, idx+1); err != nil {
			return
		}
	}
}

// tryAutoUnseal unseals the node with its static key if it can, and
// logs (once) why it cannot.
func (y *sysServer) tryAutoUnseal() {
	n := y.nseal
	n.mu.Lock()
	byRequest := n.sealedByRequest
	n.mu.Unlock()
	if byRequest {
		return
	}
	stored, err := y.storedSeal()
	if err != nil {
		y.note(fmt.Sprintf("static seal: the seal record does not decode (%v): the node stays sealed", err))
		return
	}
	if stored == nil {
		return // not initialized yet: the init's entry wakes us
	}
	if msg := y.sealMessage(stored); msg != "" {
		y.note(msg)
		return
	}
	wrapped, err := y.store.SysGet(sysKeyringKey)
	if err != nil {
		return
	}
	n.mu.Lock()
	st, err := y.keys.seal.UnsealStatic(stored, wrapped, n.key)
	n.mu.Unlock()
	if errors.Is(err, seal.ErrWrongStaticKey) {
		n.mu.Lock()
		n.problem = "static seal: the seal key does not open this cluster's root key: the node stays sealed; give it the key the cluster's other nodes use (-seal-key-file or $COFFER_SEAL_KEY) and restart it"
		n.mu.Unlock()
		y.note(n.keyProblem())
		return
	}
	if err != nil {
		y.note(fmt.Sprintf("static seal: unsealing failed (%v): the node stays sealed", err))
		return
	}
	if !st.Sealed {
		y.note("")
		y.logger.Info("unsealed with the static seal key", "key_term", st.Term)
		y.keys.unsealedNode()
	}
}

// unsealReady checks, before a share is taken, that the share goes to the
// seal the node and the record agree on: shares never unseal a node that
// unseals itself, and a migration needs -migrate (and only then).
func (y *sysServer) unsealReady(stored *seal.Stored, migrate bool) error {
	n := y.nseal
	pending := n.pending(stored)
	switch {
	case pending && migrate && n.static() && n.keyProblem() != "":
		// A migration to the static seal needs the key it wraps with.
		return withMessage(ErrAutoUnseal, "%s", n.keyProblem())
	case pending && !migrate:
		return withMessage(ErrSealMigration, "%s", y.sealMessage(stored))
	case !pending && migrate:
		return withMessage(ErrSealMigration, "no seal migration is pending on node %s: it and the cluster's record both use the %s seal; unseal without -migrate", y.nodeID, n.typ)
	case !pending && n.static():
		if p := n.keyProblem(); p != "" {
			return withMessage(ErrAutoUnseal, "%s", p)
		}
		return ErrAutoUnseal
	}
	return nil
}

// unsealedForMigration records that the node was unsealed with -migrate:
// it holds the root key and writes the migrated record when it leads.
func (y *sysServer) unsealedForMigration() {
	n := y.nseal
	n.mu.Lock()
	n.migrated = true
	n.mu.Unlock()
	y.logger.Info("unsealed for a seal migration: the migrated seal record is written when this node leads", "seal", n.typ)
	y.keys.nudgeDuties()
}

// migrateRecord runs in the leader duties: a leader unsealed with
// -migrate writes the record under its own seal, replacing the exact
// bytes it read (OP_SYS_CAS), so that a rekey or another migration
// meanwhile makes it fail rather than be lost. Shamir → static adds the
// root key sealed by the static key (the unseal shares become recovery
// shares); static → Shamir drops it (the recovery shares become unseal
// shares).
func (y *sysServer) migrateRecord(ctx context.Context) error {
	n := y.nseal
	n.mu.Lock()
	migrated := n.migrated
	n.mu.Unlock()
	if !migrated || y.keys.Sealed() {
		return nil
	}
	raw, err := y.store.SysGet(sysSealKey)
	if err != nil {
		return err
	}
	stored, err := seal.UnmarshalStored(raw)
	if err != nil {
		return err
	}
	if !n.pending(stored) {
		n.mu.Lock()
		n.migrated = false
		n.mu.Unlock()
		return nil
	}
	var next *seal.Stored
	if n.static() {
		n.mu.Lock()
		sw, err := y.keys.seal.WrapRootKeyStatic(n.key)
		n.mu.Unlock()
		if err != nil {
			return err
		}
		next = stored.WithStatic(sw)
	} else {
		next = stored.WithoutStatic()
	}
	_, err = y.props.propose(ctx, &fsmpb.Command{
		Op:        fsmpb.Op_OP_SYS_CAS,
		SysExpect: []*fsmpb.SysEntry{{Key: sysSealKey, Value: raw}},
		Sys:       []*fsmpb.SysEntry{{Key: sysSealKey, Value: next.Marshal()}},
	})
	if errors.Is(err, fsm.ErrCASMismatch) {
		return nil // the record changed: the next round looks again
	}
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.migrated = false
	n.mu.Unlock()
	y.logger.Info("seal migrated: the cluster's seal record is now under this node's seal", "from", stored.SealType(), "to", next.SealType())
	return nil
}
