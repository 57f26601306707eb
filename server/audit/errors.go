package audit

import "errors"

// Errors of the audit package. Each message says what to do about it and
// none carries a secret.
var (
	// ErrAuditFailed means no audit device recorded the record, so the call
	// it describes must be refused. The wrapping error names each device and
	// why it failed.
	ErrAuditFailed = errors.New("audit: no audit device could record the call, so it was refused: " +
		"make an audit device writable again (disk space, permissions, a reader on its pipe); " +
		"the node tries the device again on the next call")
	// ErrShortSalt means a salt given to [NewHasher] or [HashForSearch] is
	// shorter than [MinSaltSize] bytes.
	ErrShortSalt = errors.New("audit: the audit salt is shorter than 32 bytes: use the salt the cluster keeps in its replicated state")
	// ErrClosed means the broker or device was closed (the node is shutting
	// down).
	ErrClosed = errors.New("audit: the audit broker is closed: the node is shutting down")
)
