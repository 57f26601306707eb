package lease

import (
	"errors"
	"fmt"
)

// Errors of the lease table. Returned errors wrap them with detail; test
// with errors.Is. An error that came from the state machine also matches
// its fsm sentinel (fsm.ErrCASMismatch, fsm.ErrQuotaExceeded, …), and
// errors of the Proposer (not leader, leadership lost) are passed through
// wrapped, so the server's one error table maps them as it maps any write.
var (
	// ErrNotFound means no lease has the id.
	ErrNotFound = errors.New("lease: not found: check the lease id (`coffer lease list` lists them); a revoked or expired lease is gone")
	// ErrInvalid means a request or a record failed validation.
	ErrInvalid = errors.New("lease: invalid request")
	// ErrQuotaExceeded means creating the lease would pass the live leases
	// allowed in its group (role) or in all.
	ErrQuotaExceeded = errors.New("lease: too many live leases: revoke leases that are no longer needed, or raise the limit (-max-leases)")
	// ErrConflict means the lease changed between the read and the write
	// of this request (a renew, a revocation, the expiry worker).
	ErrConflict = errors.New("lease: changed by another request meanwhile: read it again and retry")
	// ErrIntentLost means Confirm found its intent no longer pending: its
	// window passed and it is being revoked, or it was revoked. The caller
	// must undo what it created and may try again with a new lease.
	ErrIntentLost = errors.New("lease: the intent is no longer pending (its window passed, or it was revoked): undo the creation and request new credentials")
	// ErrNotActive means the lease cannot be renewed while its creation is
	// unconfirmed or while it is being revoked.
	ErrNotActive = errors.New("lease: not active (its creation is unconfirmed, or it is being revoked): request new credentials")
	// ErrNotRenewable means the lease was issued without renewal.
	ErrNotRenewable = errors.New("lease: not renewable: request new credentials before it expires")
	// ErrExpired means the lease's time (or its max TTL) is over.
	ErrExpired = errors.New("lease: expired (or at its max TTL): request new credentials")
	// ErrRevokeFailed means a revocation did not succeed now; the lease
	// stays in the table, marked for revocation, and the expiry worker
	// retries it with backoff.
	ErrRevokeFailed = errors.New("lease: revocation failed and will be retried in the background (`coffer lease list -failed` shows the last error)")
	// ErrWorkerRunning means Run was called while the worker already runs.
	ErrWorkerRunning = errors.New("lease: the expiry worker is already running: call Run once per leadership")
)

// leaseError is an error of this package: its own message, matching a
// sentinel of this package and, when it has one, the error that caused it
// (a state machine result, a proposer's error).
type leaseError struct {
	msg   string
	base  error
	cause error
}

func (e *leaseError) Error() string { return e.msg }

func (e *leaseError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.base}
	}
	return []error{e.base, e.cause}
}

// errorf returns base with a detail message.
func errorf(base error, format string, args ...any) error {
	return &leaseError{msg: base.Error() + ": " + fmt.Sprintf(format, args...), base: base}
}

// wrapCause returns base with detail, matching cause as well.
func wrapCause(base, cause error, format string, args ...any) error {
	return &leaseError{msg: base.Error() + ": " + fmt.Sprintf(format, args...), base: base, cause: cause}
}
