package fsm

import (
	"errors"
	"fmt"

	"coffer/fsm/fsmpb"
)

// Errors returned by the state machine. Results carry them wrapped with
// detail; test with errors.Is.
var (
	// ErrCompacted means a watcher resumed from an index whose changes are
	// no longer kept: re-read and resume from the current index.
	ErrCompacted = errors.New("fsm: changes since that index are no longer kept (compacted): re-read the secrets and watch from the current index")
	// ErrNotFound means the secret, version or system key does not exist.
	ErrNotFound = errors.New("fsm: not found: check the path and version (list the parent path or read the metadata)")
	// ErrCASMismatch means a check-and-set write named a version that is not
	// the secret's current one.
	ErrCASMismatch = errors.New("fsm: check-and-set mismatch: read the current version and retry with cas set to it (cas=0 only creates)")
	// ErrCASRequired means the secret's metadata requires check-and-set and
	// the write carried none.
	ErrCASRequired = errors.New("fsm: check-and-set required by this secret's metadata: send cas with the current version")
	// ErrAlreadyExists means a conditional system write found its key present.
	ErrAlreadyExists = errors.New("fsm: already exists: the key was written before; read it instead of creating it")
	// ErrInvalidCommand means a log entry could not be decoded or failed
	// validation. The applied index still advances past it.
	ErrInvalidCommand = errors.New("fsm: invalid command: the proposer built a malformed command; fix the caller")
	// ErrVersionConflict means a put's ciphertext was sealed for another
	// version than the one it would create (another write to the path
	// committed first, or a leader changed): nothing was written, and the
	// leader seals the value again for the current version.
	ErrVersionConflict = errors.New("fsm: version conflict: the value was sealed for another version than the next one; seal it again and retry")
	// ErrQuotaExceeded means a lease write would create a lease beyond the
	// live leases allowed in its group or in all; nothing was written.
	ErrQuotaExceeded = errors.New("fsm: lease quota exceeded: revoke leases that are no longer needed, or raise the limit")
	// ErrRequestIDConflict means a request_id was reused for a different
	// command within the idempotency window; nothing was written.
	ErrRequestIDConflict = errors.New("fsm: request_id already used by a different command: generate a fresh request_id per logical write")
	// ErrStorage means bbolt failed to persist a batch (disk full, I/O
	// error). The state machine refuses every later command; see FSM.Err.
	ErrStorage = errors.New("fsm: state storage failed: this node cannot apply writes any more; check the disk and restart the node (it replays its log)")
	// ErrClosed means the FSM was closed.
	ErrClosed = errors.New("fsm: closed: the state machine was shut down; reopen it with fsm.Open")
	// ErrInvalidSnapshot means Restore was given data that is not a coffer
	// state snapshot; the current state is left untouched.
	ErrInvalidSnapshot = errors.New("fsm: invalid snapshot: the data is not a coffer state database; restore a snapshot taken by coffer")
	// ErrCorrupt means stored state failed to decode: the node's state
	// database is damaged.
	ErrCorrupt = errors.New("fsm: stored state is corrupt: restore the node's state (remove its fsm.db to rebuild it from the cluster, or restore a snapshot)")
	// ErrInvalidOptions means Options failed validation.
	ErrInvalidOptions = errors.New("fsm: invalid options: fix the state machine configuration")
)

// resultError is the error type of a Result: a sentinel plus a deterministic
// message. A deduplicated retry rebuilds the same value from the stored
// record, so both attempts compare equal.
type resultError struct {
	base error
	msg  string
}

func (e *resultError) Error() string { return e.msg }
func (e *resultError) Unwrap() error { return e.base }

// newResultError wraps base with a detail message.
func newResultError(base error, format string, args ...any) error {
	return &resultError{base: base, msg: base.Error() + ": " + fmt.Sprintf(format, args...)}
}

// codeOf maps a Result error to its stored code.
func codeOf(err error) fsmpb.ResultCode {
	switch {
	case err == nil:
		return fsmpb.ResultCode_RESULT_CODE_OK
	case errors.Is(err, ErrNotFound):
		return fsmpb.ResultCode_RESULT_CODE_NOT_FOUND
	case errors.Is(err, ErrCASMismatch):
		return fsmpb.ResultCode_RESULT_CODE_CAS_MISMATCH
	case errors.Is(err, ErrCASRequired):
		return fsmpb.ResultCode_RESULT_CODE_CAS_REQUIRED
	case errors.Is(err, ErrAlreadyExists):
		return fsmpb.ResultCode_RESULT_CODE_ALREADY_EXISTS
	case errors.Is(err, ErrVersionConflict):
		return fsmpb.ResultCode_RESULT_CODE_VERSION_CONFLICT
	case errors.Is(err, ErrQuotaExceeded):
		return fsmpb.ResultCode_RESULT_CODE_QUOTA_EXCEEDED
	default:
		return fsmpb.ResultCode_RESULT_CODE_INVALID_COMMAND
	}
}

// errorOf rebuilds a Result error from its stored code and message.
func errorOf(code fsmpb.ResultCode, msg string) error {
	var base error
	switch code {
	case fsmpb.ResultCode_RESULT_CODE_OK:
		return nil
	case fsmpb.ResultCode_RESULT_CODE_NOT_FOUND:
		base = ErrNotFound
	case fsmpb.ResultCode_RESULT_CODE_CAS_MISMATCH:
		base = ErrCASMismatch
	case fsmpb.ResultCode_RESULT_CODE_CAS_REQUIRED:
		base = ErrCASRequired
	case fsmpb.ResultCode_RESULT_CODE_ALREADY_EXISTS:
		base = ErrAlreadyExists
	case fsmpb.ResultCode_RESULT_CODE_VERSION_CONFLICT:
		base = ErrVersionConflict
	case fsmpb.ResultCode_RESULT_CODE_QUOTA_EXCEEDED:
		base = ErrQuotaExceeded
	default:
		base = ErrInvalidCommand
	}
	if msg == "" {
		msg = base.Error()
	}
	return &resultError{base: base, msg: msg}
}
