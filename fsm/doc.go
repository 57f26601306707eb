// Package fsm is coffer's Raft state machine: it applies committed log
// entries to a bbolt database and serves reads from it.
//
// The state machine holds ciphertext only. Values arrive encrypted by the
// leader (package seal is never imported here); the FSM sees non-secret
// metadata (version numbers, leader-stamped times, deletion flags) and that is
// all it needs for check-and-set and version numbering.
//
// # Determinism
//
// Apply reads no clock and draws no random number: times come from the
// command's leader_time_unix_nano, and pruning of the idempotency table is
// driven by that leader time through a time-ordered index. Every node that
// applies the same log therefore ends in the same state. Options that change
// outcomes (IdempotencyWindow, DefaultMaxVersions) are part of the replicated
// semantics and must be identical on every node.
//
// # Durability
//
// ApplyBatch applies a whole batch in one bbolt read-write transaction and
// records the applied index and term in that same transaction. On Linux the
// commit is not fsynced: the state is derived from the Raft log, which is
// fsynced on a quorum before a write is acknowledged, and a database that a
// machine crash may have torn is detected by the kernel's boot id and
// rebuilt from Raft's snapshot and log (durability.go). Elsewhere every
// commit is fsynced.
// Logs at or below the recorded index are skipped, so a node that restarts
// with raft.Config.NoSnapshotRestoreOnStart replays only what it had not
// applied. A failed commit is never acknowledged: see FSM.Err.
//
// Skipping is only sound while fsm.db is at least as new as Raft's latest
// snapshot. If AppliedIndex() is below the latest snapshot's index (fsm.db
// lost or replaced, or a crash in the middle of a restore), the caller must
// let Raft restore the snapshot on start instead of setting
// NoSnapshotRestoreOnStart; restoring is always safe, only slower. (The
// applied index can also trail the snapshot's index harmlessly, by noop and
// barrier entries that Raft never hands to the FSM; the rule then costs one
// needless restore.)
//
// # Upgrades
//
// An op, field or rule that changes outcomes must be known to every node
// before a leader proposes it: an older node refuses an unknown op as
// ErrInvalidCommand while newer ones apply it, and the states diverge. Gate
// such changes on the cluster's lowest version.
//
// # Layout
//
// Buckets: meta (applied index, term, format), secret_meta (path → SecretMeta,
// no ciphertext, so listing and metadata reads never touch values),
// secret_values (big-endian Raft index of the put → ciphertext; each
// VersionMeta names its index), secret_data (format 1's path NUL version →
// ciphertext: read and deleted, never written), sys (system key → value),
// idem (request_id → IdempotencyRecord) and idem_time (leader time ‖
// request_id, the pruning index). The lease table (lease.go): lease (id →
// LeaseEntry with the barrier-sealed record), lease_due (due time ‖ id, the
// index a new leader walks instead of loading every lease), lease_group
// (live leases per quota group) and meta's lease_total; OP_LEASE_PUT and
// OP_LEASE_DELETE keep them consistent in their transaction and check the
// quotas there, so concurrent creators can never exceed them.
//
// Values are keyed by index, not by path, so that puts append: a batch of
// puts to random secrets among a million dirtied a page of secret_data
// and its branch page each, besides their metadata's; now they share the
// last page of secret_values, and a put dirties about three pages instead
// of six (BenchmarkApplyWritesScale). Format 2 (formatVersion) is this
// layout; a state of format 1 is read as it is and stamped 2 by Open and
// Restore.
//
// # Snapshots
//
// Snapshot captures a bbolt read transaction and Persist streams a compacted
// copy of it (compact.go: a fresh bbolt file without free pages, built next
// to the database and removed) while Apply continues. Restore writes the
// stream to a temporary file next to the database, checks it, renames it
// over the database and takes the applied index from it. Open compacts a
// large database that is mostly free pages. InspectSnapshot (a restore's
// check) and Inspect (`coffer operator raft snapshot inspect`) read a
// snapshot file that is not trusted: boltcheck.go checks its page
// structure before bbolt maps it.
package fsm
