// Package lease holds the lease table's rules and the leader's expiry
// worker.
//
// A lease stands for an external resource that coffer made (a database
// role) and must remove on time. Leases are replicated state: each is an
// entry of the state machine's lease table (package fsm) — its id, its
// quota group, the time it is next due, and its Record sealed by the
// server's barrier for "lease/" + id — and the table is indexed by due
// time. Nothing is kept in memory: a new leader's Worker walks the due
// index from its start, so its first revocation follows its barrier at
// once, however many leases the table holds.
//
// # Crash safety: intent, create, confirm
//
// Table.CreatePending records an intent (a pending lease, due at the end of
// the intent window) through Raft before the resource exists; the caller
// creates the resource before the intent's Due and then calls Confirm,
// which makes the lease active and due at its expiry; a creation that
// failed cleanly calls Abandon. An intent whose creator died is due when
// its window ends, and whichever leader finds it revokes it (revokers are
// idempotent: DROP ROLE IF EXISTS). The worker first marks such an intent
// revoking, so that a creator who confirms late gets ErrIntentLost and
// undoes its creation instead of confirming a lease whose role is being
// dropped.
//
// # Revocation
//
// A revocation that succeeds removes the lease, unconditionally (the
// resource is gone, so must the lease be). One that fails never gives up
// silently: the lease becomes revoking, its Attempts, LastError and
// LastAttempt are recorded, and it is due again after a jittered
// exponential backoff; List with failedOnly shows it until it is revoked.
// Writes that must not overwrite another's (a renew, a failure, a claim)
// carry the index of the lease's last write, and the state machine
// refuses them when it moved.
//
// # Quotas
//
// Limits.MaxPerGroup and Limits.MaxTotal travel in the command that
// creates a lease and are checked by the state machine, which applies
// commands one at a time: concurrent creations can never pass them.
package lease
