package fsm

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// Limits enforced by DecodeCommand. The server validates user input against
// its own (equal or tighter) limits first; these keep bbolt keys within bounds
// and the key layout unambiguous.
const (
	// MaxPathLen is the longest secret path in bytes.
	MaxPathLen = 1024
	// MaxSysKeyLen is the longest system key in bytes.
	MaxSysKeyLen = 1024
	// MaxRequestIDLen is the longest request_id in bytes.
	MaxRequestIDLen = 128
	// MaxLeaseIDLen is the longest lease id in bytes.
	MaxLeaseIDLen = 1024
	// MaxLeaseGroupLen is the longest lease quota group in bytes.
	MaxLeaseGroupLen = 256
	// MaxLeaseOps is the most leases one OP_LEASE_PUT or OP_LEASE_DELETE
	// may name.
	MaxLeaseOps = 4096
)

// marshalOpts is the one encoding used for commands and stored records:
// deterministic, so equal messages encode to equal bytes on every node.
var marshalOpts = proto.MarshalOptions{Deterministic: true}

// EncodeCommand validates c and returns its deterministic protobuf encoding,
// ready for raft.Apply. It returns an error wrapping ErrInvalidCommand when c
// would be refused by Apply.
func EncodeCommand(c *fsmpb.Command) ([]byte, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil command", ErrInvalidCommand)
	}
	if err := validateCommand(c); err != nil {
		return nil, err
	}
	if layout := sealedLayoutOf(c); layout == valuesUnsealed {
		return nil, newResultError(ErrInvalidCommand, "%v of %q: a value is not a bound barrier ciphertext", c.GetOp(), c.GetPath())
	}
	b, err := marshalOpts.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	return b, nil
}

// DecodeCommand decodes and validates a command from a log entry. Any input,
// however malformed, yields either a valid command or an error wrapping
// ErrInvalidCommand; it never panics.
func DecodeCommand(b []byte) (*fsmpb.Command, error) {
	c := new(fsmpb.Command)
	if err := proto.Unmarshal(b, c); err != nil {
		// protobuf-go varies its error text between binaries on purpose; a
		// fixed message keeps results identical on every node.
		return nil, newResultError(ErrInvalidCommand, "not a protobuf-encoded command")
	}
	if err := validateCommand(c); err != nil {
		return nil, err
	}
	return c, nil
}

// System keys under sysKeyMaterial hold the seal's own key material (the
// seal configuration with the root key wrapped by the unseal key, the
// keyring wrapped by the root key): each is authenticated by a key derived
// from the unseal shares, and is read while the node is sealed, so the
// barrier cannot seal it. Every other system entry grants access (token
// records, policies) and must be sealed by the barrier.
const sysKeyMaterial = "core/"

// SysKeyNeedsBarrier reports whether the state machine stores key only with
// a barrier-sealed value (see IsSealedValue).
func SysKeyNeedsBarrier(key string) bool { return !strings.HasPrefix(key, sysKeyMaterial) }

// Bound barrier ciphertexts (seal.Barrier.Encrypt and SealEntry) start with
// a 4-byte term whose top bit is set, and are at least 32 bytes long (term,
// nonce, tag). The state machine cannot authenticate a value, since it holds
// no key, but it can refuse every value not laid out as a bound ciphertext:
// then no value sealed before versions were bound (bound to its path only),
// and no plaintext, can be stored by a forged log entry as a new version or
// as a token record. It does so from the first command whose values are
// laid out as sealed (recorded in the state: sealed_since), so that a log
// written by an older version still replays. EncodeCommand always refuses
// them. The server's tests check this agrees with seal.IsBound.
const (
	sealedMinLen  = 32
	sealedBoundFl = 0x80
)

// IsSealedValue reports whether v is laid out as a bound barrier
// ciphertext.
func IsSealedValue(v []byte) bool { return len(v) >= sealedMinLen && v[0]&sealedBoundFl != 0 }

// sealedLayout says whether a command's values are laid out as sealed.
type sealedLayout int

const (
	noValues       sealedLayout = iota // the command stores no value that must be sealed
	valuesSealed                       // every such value is laid out as sealed
	valuesUnsealed                     // at least one is not
)

// sealedLayoutOf classifies the values cmd stores: a put's ciphertext, and
// a sys put's entries outside core/.
func sealedLayoutOf(c *fsmpb.Command) sealedLayout {
	switch c.GetOp() {
	case fsmpb.Op_OP_PUT:
		if IsSealedValue(c.GetCiphertext()) {
			return valuesSealed
		}
		return valuesUnsealed
	case fsmpb.Op_OP_SYS_PUT, fsmpb.Op_OP_SYS_CAS:
		layout := noValues
		for _, e := range c.GetSys() {
			if !SysKeyNeedsBarrier(e.GetKey()) {
				continue
			}
			if !IsSealedValue(e.GetValue()) {
				return valuesUnsealed
			}
			layout = valuesSealed
		}
		return layout
	}
	return noValues
}

// validateCommand checks the fields an op needs. Fields an op does not use
// are ignored.
func validateCommand(c *fsmpb.Command) error {
	invalid := func(format string, args ...any) error {
		return newResultError(ErrInvalidCommand, format, args...)
	}
	if len(c.GetRequestId()) > MaxRequestIDLen {
		return invalid("request_id longer than %d bytes", MaxRequestIDLen)
	}
	op := c.GetOp()
	if op != fsmpb.Op_OP_NOOP && c.GetLeaderTimeUnixNano() <= 0 {
		return invalid("leader_time_unix_nano must be set by the leader (op %v)", op)
	}
	switch op {
	case fsmpb.Op_OP_PUT:
		if err := validatePath(c.GetPath()); err != nil {
			return err
		}
		if len(c.GetCiphertext()) == 0 {
			return invalid("put of %q without ciphertext", c.GetPath())
		}
	case fsmpb.Op_OP_DELETE, fsmpb.Op_OP_UNDELETE, fsmpb.Op_OP_DESTROY:
		if err := validatePath(c.GetPath()); err != nil {
			return err
		}
		if op != fsmpb.Op_OP_DELETE && len(c.GetVersions()) == 0 {
			return invalid("%v of %q names no versions", op, c.GetPath())
		}
		for _, v := range c.GetVersions() {
			if v == 0 {
				return invalid("%v of %q names version 0", op, c.GetPath())
			}
		}
	case fsmpb.Op_OP_DELETE_METADATA, fsmpb.Op_OP_PUT_METADATA:
		if err := validatePath(c.GetPath()); err != nil {
			return err
		}
	case fsmpb.Op_OP_SYS_PUT:
		if len(c.GetSys()) == 0 {
			return invalid("sys put without entries")
		}
		seen := make(map[string]struct{}, len(c.GetSys()))
		for _, e := range c.GetSys() {
			if err := validateSysKey(e.GetKey()); err != nil {
				return err
			}
			if _, dup := seen[e.GetKey()]; dup {
				return invalid("sys put writes key %q twice", e.GetKey())
			}
			seen[e.GetKey()] = struct{}{}
		}
		if k := c.GetSysRequireAbsent(); k != "" {
			if err := validateSysKey(k); err != nil {
				return err
			}
		}
	case fsmpb.Op_OP_SYS_DELETE:
		if len(c.GetSysKeys()) == 0 {
			return invalid("sys delete without keys")
		}
		for _, k := range c.GetSysKeys() {
			if err := validateSysKey(k); err != nil {
				return err
			}
		}
	case fsmpb.Op_OP_SYS_CAS:
		if err := validateSysCAS(c); err != nil {
			return err
		}
	case fsmpb.Op_OP_PUT_KV_CONFIG:
		if m := c.GetPath(); len(m) < 2 || strings.IndexByte(m, '/') != len(m)-1 || strings.IndexByte(m, 0) >= 0 {
			return invalid("kv config of %q: name a mount such as \"secret/\"", m)
		}
	case fsmpb.Op_OP_LEASE_PUT:
		if err := validateLeasePut(c); err != nil {
			return err
		}
	case fsmpb.Op_OP_LEASE_DELETE:
		if err := validateLeaseDelete(c); err != nil {
			return err
		}
	case fsmpb.Op_OP_NOOP:
	default:
		return invalid("unknown op %d", int32(op))
	}
	return nil
}

// validateSysCAS checks a conditional system change: at least one
// expectation, with a value, on distinct keys; something to write or
// remove; no key both written and removed, or written twice.
func validateSysCAS(c *fsmpb.Command) error {
	invalid := func(format string, args ...any) error {
		return newResultError(ErrInvalidCommand, format, args...)
	}
	if len(c.GetSysExpect()) == 0 {
		return invalid("sys cas without expectations")
	}
	if len(c.GetSys()) == 0 && len(c.GetSysKeys()) == 0 {
		return invalid("sys cas that writes and removes nothing")
	}
	expected := make(map[string]struct{}, len(c.GetSysExpect()))
	for _, e := range c.GetSysExpect() {
		if err := validateSysKey(e.GetKey()); err != nil {
			return err
		}
		if len(e.GetValue()) == 0 {
			return invalid("sys cas expects no value for key %q", e.GetKey())
		}
		if _, dup := expected[e.GetKey()]; dup {
			return invalid("sys cas expects key %q twice", e.GetKey())
		}
		expected[e.GetKey()] = struct{}{}
	}
	written := make(map[string]struct{}, len(c.GetSys()))
	for _, e := range c.GetSys() {
		if err := validateSysKey(e.GetKey()); err != nil {
			return err
		}
		if _, dup := written[e.GetKey()]; dup {
			return invalid("sys cas writes key %q twice", e.GetKey())
		}
		written[e.GetKey()] = struct{}{}
	}
	for _, k := range c.GetSysKeys() {
		if err := validateSysKey(k); err != nil {
			return err
		}
		if _, both := written[k]; both {
			return invalid("sys cas both writes and removes key %q", k)
		}
	}
	return nil
}

// validateLeasePut checks a lease write command: 1..MaxLeaseOps writes on
// distinct valid ids, each with a group within bounds, a due time that is
// not negative (the due index orders keys as unsigned), a record laid out
// as a bound barrier ciphertext (lease ops are newer than sealed values:
// no log holds an unsealed one), and no create_only with an expect_index.
func validateLeasePut(c *fsmpb.Command) error {
	invalid := func(format string, args ...any) error {
		return newResultError(ErrInvalidCommand, format, args...)
	}
	ws := c.GetLeaseWrites()
	if len(ws) == 0 {
		return invalid("lease put without writes")
	}
	if len(ws) > MaxLeaseOps {
		return invalid("lease put of %d leases, over the limit of %d", len(ws), MaxLeaseOps)
	}
	seen := make(map[string]struct{}, len(ws))
	for _, w := range ws {
		id := w.GetId()
		if err := validateLeaseID(id); err != nil {
			return err
		}
		if _, dup := seen[id]; dup {
			return invalid("lease put writes lease %q twice", id)
		}
		seen[id] = struct{}{}
		if len(w.GetGroup()) > MaxLeaseGroupLen {
			return invalid("lease %q: group longer than %d bytes", id, MaxLeaseGroupLen)
		}
		if w.GetDueUnixNano() < 0 {
			return invalid("lease %q: negative due time %d", id, w.GetDueUnixNano())
		}
		if !IsSealedValue(w.GetRecord()) {
			return invalid("lease %q: the record is not a bound barrier ciphertext", id)
		}
		if w.GetCreateOnly() && w.GetExpectIndex() != 0 {
			return invalid("lease %q: create_only with expect_index %d can never hold", id, w.GetExpectIndex())
		}
	}
	return nil
}

// validateLeaseDelete checks a lease delete command: 1..MaxLeaseOps
// distinct valid ids.
func validateLeaseDelete(c *fsmpb.Command) error {
	invalid := func(format string, args ...any) error {
		return newResultError(ErrInvalidCommand, format, args...)
	}
	ds := c.GetLeaseDeletes()
	if len(ds) == 0 {
		return invalid("lease delete without ids")
	}
	if len(ds) > MaxLeaseOps {
		return invalid("lease delete of %d leases, over the limit of %d", len(ds), MaxLeaseOps)
	}
	seen := make(map[string]struct{}, len(ds))
	for _, d := range ds {
		if err := validateLeaseID(d.GetId()); err != nil {
			return err
		}
		if _, dup := seen[d.GetId()]; dup {
			return invalid("lease delete names lease %q twice", d.GetId())
		}
		seen[d.GetId()] = struct{}{}
	}
	return nil
}

// validateLeaseID accepts any non-empty id up to MaxLeaseIDLen bytes.
func validateLeaseID(id string) error {
	switch {
	case id == "":
		return newResultError(ErrInvalidCommand, "empty lease id")
	case len(id) > MaxLeaseIDLen:
		return newResultError(ErrInvalidCommand, "lease id longer than %d bytes", MaxLeaseIDLen)
	}
	return nil
}

// validatePath accepts slash-separated paths without empty segments: no
// leading or trailing slash, no "//", no NUL (the value key layout uses NUL
// as the separator). Protobuf already guarantees valid UTF-8.
func validatePath(p string) error {
	switch {
	case p == "":
		return newResultError(ErrInvalidCommand, "empty path")
	case len(p) > MaxPathLen:
		return newResultError(ErrInvalidCommand, "path longer than %d bytes", MaxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return newResultError(ErrInvalidCommand, "path %q contains NUL", p)
	case p[0] == '/' || p[len(p)-1] == '/' || strings.Contains(p, "//"):
		return newResultError(ErrInvalidCommand, "path %q has an empty segment (leading, trailing or double slash)", p)
	}
	return nil
}

// validateSysKey accepts any non-empty key up to MaxSysKeyLen bytes.
func validateSysKey(k string) error {
	switch {
	case k == "":
		return newResultError(ErrInvalidCommand, "empty sys key")
	case len(k) > MaxSysKeyLen:
		return newResultError(ErrInvalidCommand, "sys key longer than %d bytes", MaxSysKeyLen)
	}
	return nil
}
