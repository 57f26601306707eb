package fsm

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Defaults applied by Open to zero-valued Options fields.
const (
	// DefaultIdempotencyWindow is how long, in leader time, a request_id is
	// remembered.
	DefaultIdempotencyWindow = 10 * time.Minute
	// DefaultMaxIdempotencyRecords bounds the idempotency table: at a few
	// thousand writes a second, ten minutes of records would make it the
	// bulk of the state (and of every snapshot and the node's memory).
	DefaultMaxIdempotencyRecords = 65536
	// DefaultMaxVersions is how many versions a secret keeps unless its
	// metadata says otherwise.
	DefaultMaxVersions uint32 = 10
)

// formatVersion is the layout version stored in the meta bucket. Format
// 2 keys a secret's values by the Raft index of the put that wrote them
// (bucket secret_values) instead of by path and version (secret_data,
// format 1). A state of format 1 is read as it is and stamped 2 when
// opened or restored: the versions it holds keep their values in
// secret_data (VersionMeta.value_index 0), new ones go to secret_values.
// A binary that reads only format 1 refuses a state of format 2 instead of
// missing its newer values.
const (
	formatVersion    = 2
	minFormatVersion = 1
)

// initialMmapSize is mapped up front so that the database rarely has to be
// remapped; a remap waits for every read transaction, including a snapshot
// being persisted, which would stall Apply. Only address space is reserved.
const initialMmapSize = 1 << 30

var (
	bucketMeta       = []byte("meta")
	bucketSecretMeta = []byte("secret_meta")
	bucketSecretData = []byte("secret_data")
	// bucketSecretValues holds the values of format 2 (see formatVersion).
	// A state written by format 1 lacks it: Open and Restore create it.
	bucketSecretValues = []byte("secret_values")
	bucketSys          = []byte("sys")
	bucketIdem         = []byte("idem")
	bucketIdemTime     = []byte("idem_time")

	allBuckets = [][]byte{bucketMeta, bucketSecretMeta, bucketSecretData, bucketSys, bucketIdem, bucketIdemTime}

	// The lease table's buckets (lease.go). A state written before leases
	// existed lacks them: Open and Restore create them, so a snapshot
	// without them still restores, and every node holds them alike.
	bucketLease      = []byte("lease")
	bucketLeaseDue   = []byte("lease_due")
	bucketLeaseGroup = []byte("lease_group")

	leaseBuckets = [][]byte{bucketLease, bucketLeaseDue, bucketLeaseGroup}

	keyAppliedIndex = []byte("applied_index")
	keyAppliedTerm  = []byte("applied_term")
	keyIdemCount    = []byte("idem_count")
	keyFormat       = []byte("format")
	keySealedSince  = []byte("sealed_since")
	keyLeaseTotal   = []byte("lease_total")
	// keyKVConfigPrefix + mount holds a KV mount's fsmpb.KVConfig.
	keyKVConfigPrefix = "kv_config/"
)

// Options configures an FSM. The zero value gives the defaults.
type Options struct {
	// Logger receives the state machine's logs; default hclog.NewNullLogger().
	// No ciphertext is ever logged.
	Logger hclog.Logger
	// IdempotencyWindow is how long, measured in leader time, a request_id
	// keeps deduplicating retries; default DefaultIdempotencyWindow. It must
	// be the same on every node.
	IdempotencyWindow time.Duration
	// MaxIdempotencyRecords is how many request_ids are remembered at most
	// (the oldest go first); default DefaultMaxIdempotencyRecords. A
	// request_id deduplicates retries within IdempotencyWindow or the last
	// MaxIdempotencyRecords writes, whichever is shorter. It must be the
	// same on every node.
	MaxIdempotencyRecords int
	// DefaultMaxVersions is the max_versions given to a secret created
	// without one; default DefaultMaxVersions. It must be the same on every
	// node.
	DefaultMaxVersions uint32
	// ChangeRing is how many recent changes are kept for watchers
	// (default DefaultChangeRing).
	ChangeRing int
	// OnRestore, when set, is called after a snapshot has been installed
	// (on Raft's FSM goroutine; it must not block on Raft).
	OnRestore func()
	// OnApply, when set, is told how many logs each committed batch
	// applied and how long its transaction took (for the node's metrics;
	// it must be cheap and must not block).
	OnApply func(logs int, took time.Duration)
	// OnSnapshot, when set, is told how long each snapshot Raft persists
	// took and whether it failed (for the node's metrics); copies written
	// through the snapshot's WriteTo are not reported.
	OnSnapshot func(took time.Duration, err error)
	// OnFailure, when set, is told once, with bbolt's error, that a batch
	// could not be committed (disk full, I/O error) and the FSM refuses
	// every later command (see Err). It is called on Raft's FSM goroutine and must not
	// block on Raft: the node should stop, and start again once its disk
	// is fixed.
	OnFailure func(error)
	// NoSync skips fsync on commit and never marks the database as having
	// unsynced commits. For tests and benchmarks only; never in production:
	// a crash of the machine can then leave a torn database that is
	// trusted on the next start.
	NoSync bool
	// SyncEveryCommit fsyncs every commit even where the database could
	// rely on the Raft log and the boot id instead (see durability.go).
	// Slower; for tests of that fallback.
	SyncEveryCommit bool
}

// Validate reports whether the options can be used.
func (o Options) Validate() error {
	if o.IdempotencyWindow < 0 {
		return fmt.Errorf("%w: IdempotencyWindow is negative (%v); use 0 for the default", ErrInvalidOptions, o.IdempotencyWindow)
	}
	if o.MaxIdempotencyRecords < 0 {
		return fmt.Errorf("%w: MaxIdempotencyRecords is negative (%d); use 0 for the default", ErrInvalidOptions, o.MaxIdempotencyRecords)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.MaxIdempotencyRecords == 0 {
		o.MaxIdempotencyRecords = DefaultMaxIdempotencyRecords
	}
	if o.IdempotencyWindow == 0 {
		o.IdempotencyWindow = DefaultIdempotencyWindow
	}
	if o.DefaultMaxVersions == 0 {
		o.DefaultMaxVersions = DefaultMaxVersions
	}
	return o
}

// FSM is the replicated state machine. It implements raft.BatchingFSM.
// Apply, ApplyBatch, Snapshot and Restore are called by Raft from a single
// goroutine; the read methods may be called concurrently from any goroutine.
type FSM struct {
	opts   Options
	logger hclog.Logger
	path   string

	mu     sync.RWMutex // guards db and closed; held (read) by every use of db
	db     *bolt.DB
	closed bool

	// unsynced: commits skip fsync and the marker of durability.go is
	// set; Close syncs and removes it.
	unsynced bool

	applied atomic.Uint64 // last applied index, published after commit
	sysGen  atomic.Uint64 // see SysGeneration

	waitMu     sync.Mutex    // guards appliedCh and waitClosed
	appliedCh  chan struct{} // closed and replaced whenever applied changes
	waitClosed bool

	errMu sync.Mutex
	err   error // persistent storage failure, see Err

	changes *changeRing // recent changes for watchers
}

var _ raft.BatchingFSM = (*FSM)(nil)

// Open opens (or creates) the state database at path with file mode 0600,
// creates its buckets and loads the persisted applied index. The parent
// directory is created (0700) if missing. Open fails if another process holds
// the database.
func Open(path string, opts Options) (*FSM, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("fsm: create directory for %s: %w", path, err)
	}
	// A restore interrupted by a crash leaves its temporary file behind.
	if err := os.Remove(restoreTempPath(path)); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("fsm: remove stale restore file: %w", err)
	}
	unsynced := false
	if !opts.NoSync && !opts.SyncEveryCommit {
		var err error
		if unsynced, err = prepareUnsynced(path, opts.Logger.Named("fsm")); err != nil {
			return nil, err
		}
	}
	db, err := openDB(path, opts.NoSync || unsynced)
	if err != nil {
		return nil, err
	}
	// A snapshot's compacted copy interrupted by a crash leaves its
	// temporary file behind. Removed now that the lock is held: another
	// process's copies are never touched.
	if err := removeCompactLeftovers(path); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("fsm: remove stale compaction files: %w", err)
	}
	if db, err = compactAtOpen(path, db, opts.NoSync || unsynced, opts.Logger.Named("fsm")); err != nil {
		return nil, err
	}
	if err := db.Update(initBuckets); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("fsm: initialise %s: %w", path, err)
	}
	var index uint64
	if err := db.View(func(tx *bolt.Tx) error {
		var err error
		index, _, err = readApplied(tx)
		return err
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("fsm: read applied index from %s: %w", path, err)
	}
	f := &FSM{
		opts:      opts,
		logger:    opts.Logger.Named("fsm"),
		path:      path,
		db:        db,
		unsynced:  unsynced,
		appliedCh: make(chan struct{}),
	}
	f.applied.Store(index)
	f.changes = newChangeRing(opts.ChangeRing, index)
	f.logger.Debug("opened state database", "path", path, "applied_index", index)
	return f, nil
}

// openDB opens a bbolt file with the state machine's settings.
func openDB(path string, noSync bool) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         time.Second,
		NoSync:          noSync,
		InitialMmapSize: initialMmapSize,
		FreelistType:    bolt.FreelistMapType,
		NoFreelistSync:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("fsm: open %s (is another coffer process using it?): %w", path, err)
	}
	return db, nil
}

// initBuckets creates missing buckets and stamps or checks the format.
func initBuckets(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	v := meta.Get(keyFormat)
	if v == nil {
		if err := meta.Put(keyFormat, encodeUint64(formatVersion)); err != nil {
			return err
		}
	} else if _, err := checkFormatValue(v); err != nil {
		return err
	}
	return upgradeState(tx)
}

// checkFormatValue decodes a stored format and refuses one this binary
// cannot read.
func checkFormatValue(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("unsupported state format %x: this binary reads formats %d to %d", v, minFormatVersion, formatVersion)
	}
	f := binary.BigEndian.Uint64(v)
	if f < minFormatVersion || f > formatVersion {
		return 0, fmt.Errorf("unsupported state format %d: this binary reads formats %d to %d", f, minFormatVersion, formatVersion)
	}
	return f, nil
}

// upgradeState brings a state of a format this binary reads to the
// current one: it creates the buckets an older state lacks (the lease
// table's, secret_values) and stamps the current format. Every node does
// the same to the same state, at Open and after a Restore.
func upgradeState(tx *bolt.Tx) error {
	if err := createLeaseBuckets(tx); err != nil {
		return err
	}
	if _, err := tx.CreateBucketIfNotExists(bucketSecretValues); err != nil {
		return err
	}
	meta := tx.Bucket(bucketMeta)
	if f, err := decodeUint64(meta.Get(keyFormat)); err == nil && f == formatVersion {
		return nil
	}
	return meta.Put(keyFormat, encodeUint64(formatVersion))
}

// readApplied returns the persisted applied index and term.
func readApplied(tx *bolt.Tx) (index, term uint64, err error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, 0, fmt.Errorf("bucket %s missing", bucketMeta)
	}
	if index, err = decodeUint64(meta.Get(keyAppliedIndex)); err != nil {
		return 0, 0, fmt.Errorf("applied index: %w", err)
	}
	if term, err = decodeUint64(meta.Get(keyAppliedTerm)); err != nil {
		return 0, 0, fmt.Errorf("applied term: %w", err)
	}
	return index, term, nil
}

// Close closes the database and wakes every WaitApplied caller with
// ErrClosed. It waits for an in-flight batch and for outstanding snapshots to
// be released. Close is idempotent.
func (f *FSM) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	db := f.db
	f.db = nil
	f.mu.Unlock()

	f.waitMu.Lock()
	f.waitClosed = true
	close(f.appliedCh)
	f.waitMu.Unlock()

	// A database that failed (see Err) is not synced: its marker stays, so
	// a machine restart rebuilds it from Raft.
	synced := f.unsynced && f.Err() == nil
	if synced {
		if err := db.Sync(); err != nil {
			_ = db.Close()
			return fmt.Errorf("fsm: sync %s: %w", f.path, err)
		}
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("fsm: close %s: %w", f.path, err)
	}
	if synced {
		if err := finishUnsynced(f.path); err != nil {
			return fmt.Errorf("fsm: close %s: %w", f.path, err)
		}
	}
	return nil
}

// Err reports a persistent storage failure, or nil.
//
// hashicorp/raft treats every Apply as successful, so when bbolt cannot
// commit a batch (disk full, I/O error) the FSM cannot report the failure to
// Raft. Instead it returns a Result with an error wrapping ErrStorage for
// every command of that batch, logs the failure, and from then on refuses
// every later command the same way without advancing its applied index, and
// refuses to snapshot (so that Raft keeps the logs it has not applied). The
// node cannot continue safely: its caller should stop serving, step down and
// restart it, after which it replays its log from the last committed batch. A
// successful Restore also clears the failure.
func (f *FSM) Err() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.err
}

func (f *FSM) setErr(err error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	f.err = err
}

// AppliedIndex returns the index of the last log entry applied and made
// durable. Noop and barrier entries, which Raft never hands to the FSM, do not
// advance it.
func (f *FSM) AppliedIndex() uint64 {
	return f.applied.Load()
}

// WaitApplied returns nil once AppliedIndex() >= index, or the context's
// error (wrapped) when ctx ends first, or ErrClosed when the FSM is closed. It
// waits on a channel closed by every apply, not by polling.
//
// Raft does not hand noop and barrier entries to the FSM, so an index that
// names one is reached only when a later command or configuration entry is
// applied. Callers waiting for a leader's commit index should have the leader
// apply a command of its term (OP_NOOP) after election, or compare against
// raft's own applied index.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		f.waitMu.Lock()
		if f.applied.Load() >= index {
			f.waitMu.Unlock()
			return nil
		}
		if f.waitClosed {
			f.waitMu.Unlock()
			return ErrClosed
		}
		ch := f.appliedCh
		f.waitMu.Unlock()

		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("fsm: waiting for index %d (applied %d): %w", index, f.applied.Load(), ctx.Err())
		}
	}
}

// publishApplied makes index the applied index and wakes waiters.
func (f *FSM) publishApplied(index uint64) {
	f.waitMu.Lock()
	defer f.waitMu.Unlock()
	f.applied.Store(index)
	if f.waitClosed {
		return
	}
	close(f.appliedCh)
	f.appliedCh = make(chan struct{})
}

func encodeUint64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// decodeUint64 reads an 8-byte big-endian value; a missing value is 0.
func decodeUint64(b []byte) (uint64, error) {
	switch len(b) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(b), nil
	}
	return 0, fmt.Errorf("malformed %d-byte counter", len(b))
}
