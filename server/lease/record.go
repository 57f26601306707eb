package lease

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"coffer/fsm"
)

// State is where a lease is in its life.
type State string

const (
	// StatePending is an intent: recorded before the external resource
	// (a database role) is created, not yet confirmed. Revoked once its
	// intent window has passed.
	StatePending State = "pending"
	// StateActive is a confirmed lease: revoked once it expires.
	StateActive State = "active"
	// StateRevoking is a lease whose revocation was asked for (an explicit
	// revoke, a revoke-prefix, an intent taken by the worker): it can no
	// longer be renewed or confirmed, and is revoked when due.
	StateRevoking State = "revoking"
)

// Record is a lease in plaintext. It is stored as JSON (the field names
// below), sealed by the server's barrier for the key "lease/" + ID before it
// enters the Raft log, so a record cannot be moved to another id, forged
// by a peer, or read without the keys. Durations are JSON numbers of
// nanoseconds; times are RFC 3339 with nanoseconds. Decoding ignores
// unknown fields, so later versions may add some.
type Record struct {
	// ID is the lease id, Vault style: Path, a slash, a random part
	// ("database/creds/app/…"). Unique, never reused.
	ID string `json:"id"`
	// Path is what issued the lease ("database/creds/app").
	Path string `json:"path"`
	// Group is the quota group (the role); default Path.
	Group string `json:"group"`
	// Kind chooses the Revoker ("database").
	Kind string `json:"kind"`
	// State is pending, active or revoking.
	State State `json:"state"`
	// IssueTime is when the lease was created (the intent recorded).
	IssueTime time.Time `json:"issue_time"`
	// ExpireTime is when the lease expires unless renewed.
	ExpireTime time.Time `json:"expire_time"`
	// MaxExpireTime is IssueTime + MaxTTL: no renewal goes past it.
	MaxExpireTime time.Time `json:"max_expire_time"`
	// LastRenewal is the time of the last renewal (zero: never renewed).
	LastRenewal time.Time `json:"last_renewal,omitzero"`
	// TTL is the lease's time to live, and the default renew increment.
	TTL time.Duration `json:"ttl"`
	// MaxTTL bounds the lease's whole life.
	MaxTTL time.Duration `json:"max_ttl"`
	// Renewable says whether Renew may extend the lease.
	Renewable bool `json:"renewable"`
	// Data is what the Revoker of Kind needs (connection, username,
	// revocation statements), opaque to this package. It needs no
	// password, and should hold none.
	Data []byte `json:"data,omitempty"`
	// Subject names what the lease stands for, for operators (the
	// database user); it is no secret.
	Subject string `json:"subject,omitempty"`
	// DisplayName and TokenAccessor say who asked for the lease.
	DisplayName   string `json:"display_name,omitempty"`
	TokenAccessor string `json:"token_accessor,omitempty"`
	// Attempts counts the failed revocations; LastError and LastAttempt
	// are the last failure's. A lease with Attempts > 0 is listed as
	// failed until it is revoked.
	Attempts    int       `json:"attempts,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`

	// Due is when the lease is next due for revocation (the intent
	// window's end, the expiry, or a retry). Index is the Raft index of
	// its last write (for Confirm). Both come from the table, not from the
	// sealed record.
	Due   time.Time `json:"-"`
	Index uint64    `json:"-"`
	// MaxInGroup, when set, bounds the live leases of Group at this
	// lease's creation below Limits.MaxPerGroup (a role's own max_leases).
	MaxInGroup uint64 `json:"-"`
}

// Failed reports whether a revocation of the lease has failed (and is
// being retried).
func (r *Record) Failed() bool { return r.Attempts > 0 }

// clone returns a copy that shares nothing mutable with r.
func (r *Record) clone() *Record {
	c := *r
	c.Data = append([]byte(nil), r.Data...)
	return &c
}

// NewID returns a new lease id under path: path, a slash and 128 random
// bits (26 characters of base32).
func NewID(path string) (string, error) {
	if err := validatePath(path); err != nil {
		return "", err
	}
	return path + "/" + rand.Text(), nil
}

// sealKey is the barrier key a lease's record is sealed for.
func sealKey(id string) string { return "lease/" + id }

// validatePath accepts a path without empty segments.
func validatePath(p string) error {
	switch {
	case p == "":
		return errorf(ErrInvalid, "a lease needs the path that issues it")
	case strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "//"):
		return errorf(ErrInvalid, "path %q has an empty segment", p)
	case strings.IndexByte(p, 0) >= 0:
		return errorf(ErrInvalid, "path %q contains NUL", p)
	}
	return nil
}

// seal encodes and seals rec for its id.
func (t *Table) seal(rec *Record) ([]byte, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("lease: encode record %q: %w", rec.ID, err)
	}
	ct, err := t.sealer.SealEntry(sealKey(rec.ID), b)
	if err != nil {
		return nil, fmt.Errorf("lease: seal record %q: %w", rec.ID, err)
	}
	return ct, nil
}

// open opens the record of a table entry and fills Due and Index.
func (t *Table) open(e fsm.LeaseEntry) (*Record, error) {
	b, err := t.sealer.OpenEntry(sealKey(e.ID), e.Record)
	if err != nil {
		return nil, fmt.Errorf("lease: open record %q: %w", e.ID, err)
	}
	rec := new(Record)
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("lease: decode record %q: %w", e.ID, err)
	}
	if rec.ID != e.ID {
		return nil, fmt.Errorf("lease: the record stored at %q names lease %q", e.ID, rec.ID)
	}
	rec.Due = time.Unix(0, e.DueUnixNano).UTC()
	rec.Index = e.Index
	return rec, nil
}
