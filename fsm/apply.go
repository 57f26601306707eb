package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// Result is what Apply returns (as a Result value in the interface{}) for
// every log of type raft.LogCommand that was not skipped. Other log types and
// logs at or below the applied index yield nil.
type Result struct {
	// Index is the raft index at which the command took effect; for a
	// deduplicated retry, the index of the original command.
	Index uint64
	// Version is the secret version written by a put, else 0.
	Version uint64
	// LeaderTimeUnixNano is the leader time of the command that took
	// effect: a put's version was created then. For a deduplicated retry it
	// is the first command's, so the answer needs no read of the state.
	LeaderTimeUnixNano int64
	// Err is the deterministic outcome: nil, or an error wrapping
	// ErrCASMismatch, ErrCASRequired, ErrNotFound, ErrAlreadyExists,
	// ErrQuotaExceeded, ErrInvalidCommand or ErrRequestIDConflict. It
	// wraps ErrStorage or ErrClosed when the node could not apply the
	// command at all.
	Err error
	// Deduplicated is true when request_id matched an earlier command within
	// the idempotency window: nothing changed and the fields above are a copy
	// of the first result.
	Deduplicated bool
}

// Apply applies one log entry. It is ApplyBatch with a batch of one.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies logs in order in one bbolt read-write transaction and
// records the last index and term in it, so a batch costs one fsync. It
// returns one response per log: a Result for each LogCommand, nil for other
// log types (which only advance the applied index) and for logs at or below
// the applied index, which are skipped. ApplyBatch never panics on malformed
// data; see Err for what happens when the transaction cannot commit.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))

	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		f.failBatch(logs, out, f.applied.Load(), ErrClosed)
		return out
	}
	if err := f.Err(); err != nil {
		f.failBatch(logs, out, f.applied.Load(), err)
		return out
	}

	start := f.applied.Load()
	pending := false
	for _, l := range logs {
		if l != nil && l.Index > start {
			pending = true
			break
		}
	}
	if !pending {
		return out
	}

	var lastIndex uint64
	var changes []Change
	sysChanged := false
	began := time.Now()
	err := f.db.Update(func(tx *bolt.Tx) error {
		a := newApplier(tx, f)
		changes = nil
		defer func() { sysChanged = a.sysChanged }()
		cur, lastTerm := start, uint64(0)
		for i, l := range logs {
			if l == nil || l.Index <= cur {
				continue
			}
			if l.Type == raft.LogCommand {
				res, err := a.command(l)
				if err != nil {
					return fmt.Errorf("index %d: %w", l.Index, err)
				}
				out[i] = res
				if a.change != nil {
					changes = append(changes, *a.change)
					a.change = nil
				}
			}
			cur, lastTerm = l.Index, l.Term
		}
		if err := a.saveIdemCount(); err != nil {
			return err
		}
		a.metaPuts.settle()
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyAppliedIndex, encodeUint64(cur)); err != nil {
			return err
		}
		if err := meta.Put(keyAppliedTerm, encodeUint64(lastTerm)); err != nil {
			return err
		}
		lastIndex = cur
		return nil
	})
	if err != nil {
		failure := fmt.Errorf("%w (%v)", ErrStorage, err)
		f.setErr(failure)
		f.logger.Error("could not commit applied logs; refusing all further commands until restart",
			"first_index", logs[0].Index, "last_index", logs[len(logs)-1].Index, "error", err)
		if f.opts.OnFailure != nil {
			f.opts.OnFailure(err)
		}
		for i := range out {
			out[i] = nil
		}
		f.failBatch(logs, out, start, failure)
		return out
	}
	if sysChanged {
		f.sysGen.Add(1)
	}
	f.changes.add(changes)
	f.publishApplied(lastIndex)
	if f.opts.OnApply != nil {
		f.opts.OnApply(len(logs), time.Since(began))
	}
	return out
}

// failBatch fills out with a failed Result for every command log above
// applied.
func (f *FSM) failBatch(logs []*raft.Log, out []interface{}, applied uint64, err error) {
	for i, l := range logs {
		if l != nil && l.Index > applied && l.Type == raft.LogCommand {
			out[i] = Result{Index: l.Index, Err: err}
		}
	}
}

// applier applies commands inside one read-write transaction.
type applier struct {
	f      *FSM
	tx     *bolt.Tx
	meta   *bolt.Bucket
	data   *bolt.Bucket // format 1's values, read and deleted only
	values *bolt.Bucket // values by the index of their put (valueKey)
	sys    *bolt.Bucket
	idem   *bolt.Bucket
	idemTs *bolt.Bucket
	// change is the change the last command made to a secret, if any.
	change *Change
	// sysChanged: a command of the batch wrote or deleted a system key.
	sysChanged bool
	// stateMeta is the meta bucket; idemCount the number of idempotency
	// records (loaded on first use, written back by saveIdemCount).
	stateMeta      *bolt.Bucket
	idemCount      uint64
	idemCountKnown bool
	idemCountDirty bool
	// sealedSince is the index from which unsealed values are refused (0:
	// not yet), loaded on first use.
	sealedSince      uint64
	sealedSinceKnown bool

	// metaPuts watches the puts into meta.
	metaPuts appendWatch
}

func newApplier(tx *bolt.Tx, f *FSM) *applier {
	a := &applier{
		f:         f,
		tx:        tx,
		meta:      tx.Bucket(bucketSecretMeta),
		data:      tx.Bucket(bucketSecretData),
		values:    tx.Bucket(bucketSecretValues),
		sys:       tx.Bucket(bucketSys),
		idem:      tx.Bucket(bucketIdem),
		idemTs:    tx.Bucket(bucketIdemTime),
		stateMeta: tx.Bucket(bucketMeta),
	}
	// The idempotency buckets and the values grow at their end (request
	// ids start with the time, values are keyed by Raft index): full pages
	// instead of bbolt's half-full splits halve them.
	a.idem.FillPercent = 0.95
	a.idemTs.FillPercent = 0.95
	a.values.FillPercent = 0.95
	a.metaPuts.b = a.meta
	return a
}

// loadIdemCount reads the number of idempotency records, counting them
// once in a database written before the count was kept.
func (a *applier) loadIdemCount() error {
	if a.idemCountKnown {
		return nil
	}
	if v := a.stateMeta.Get(keyIdemCount); v != nil {
		if len(v) != 8 {
			return fmt.Errorf("corrupt idempotency record count %x", v)
		}
		a.idemCount = binary.BigEndian.Uint64(v)
	} else {
		a.idemCount = 0
		c := a.idemTs.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			a.idemCount++
		}
		a.idemCountDirty = true
	}
	a.idemCountKnown = true
	return nil
}

// saveIdemCount writes the record count back if it changed.
func (a *applier) saveIdemCount() error {
	if !a.idemCountDirty {
		return nil
	}
	return a.stateMeta.Put(keyIdemCount, encodeUint64(a.idemCount))
}

// command applies one LogCommand. A non-nil error is a storage failure that
// aborts the whole transaction; deterministic outcomes travel in Result.Err.
func (a *applier) command(l *raft.Log) (Result, error) {
	cmd, err := DecodeCommand(l.Data)
	if err == nil {
		err = a.checkSealed(cmd, l.Index)
	}
	if err != nil {
		if errors.Is(err, ErrStorage) {
			return Result{}, err
		}
		a.f.logger.Warn("refusing invalid command", "index", l.Index, "error", err)
		return Result{Index: l.Index, Err: err}, nil
	}
	now := cmd.GetLeaderTimeUnixNano()
	if now > 0 {
		if err := a.pruneIdempotency(now); err != nil {
			return Result{}, err
		}
	}
	rid := cmd.GetRequestId()
	if rid != "" {
		rec, err := a.idempotencyRecord(rid)
		if err != nil {
			return Result{}, err
		}
		if rec != nil {
			if rec.GetOp() != cmd.GetOp() || rec.GetPath() != cmd.GetPath() {
				return Result{Index: l.Index, Err: newResultError(ErrRequestIDConflict,
					"request_id %q was used at index %d for %v %q", rid, rec.GetIndex(), rec.GetOp(), rec.GetPath())}, nil
			}
			return Result{
				Index:              rec.GetIndex(),
				Version:            rec.GetVersion(),
				LeaderTimeUnixNano: rec.GetLeaderTimeUnixNano(),
				Err:                errorOf(rec.GetCode(), rec.GetMessage()),
				Deduplicated:       true,
			}, nil
		}
	}
	res, err := a.exec(cmd, l.Index)
	if err != nil {
		return Result{}, err
	}
	if res.Err == nil {
		a.change = changeOf(cmd, res)
	}
	// A version conflict had no effect and is the leader's to resolve (it
	// seals the value again and proposes under the same request id), so it
	// is not remembered as the request's outcome.
	if rid != "" && !errors.Is(res.Err, ErrVersionConflict) {
		if err := a.recordIdempotency(rid, cmd, res); err != nil {
			return Result{}, err
		}
	}
	return res, nil
}

// checkSealed refuses a command that stores a value not laid out as sealed
// once any command with sealed values was applied (see IsSealedValue); the
// first such command records its index. A storage failure wraps
// ErrStorage.
func (a *applier) checkSealed(cmd *fsmpb.Command, index uint64) error {
	layout := sealedLayoutOf(cmd)
	if layout == noValues {
		return nil
	}
	if !a.sealedSinceKnown {
		if v := a.stateMeta.Get(keySealedSince); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("%w: corrupt sealed_since %x", ErrStorage, v)
			}
			a.sealedSince = binary.BigEndian.Uint64(v)
		}
		a.sealedSinceKnown = true
	}
	switch {
	case layout == valuesUnsealed && a.sealedSince != 0:
		return newResultError(ErrInvalidCommand, "%v of %q: a value is not a bound barrier ciphertext (refused since index %d)", cmd.GetOp(), cmd.GetPath(), a.sealedSince)
	case layout == valuesSealed && a.sealedSince == 0:
		if err := a.stateMeta.Put(keySealedSince, encodeUint64(index)); err != nil {
			return fmt.Errorf("%w: %v", ErrStorage, err)
		}
		a.sealedSince = index
	}
	return nil
}

// exec dispatches a validated command.
func (a *applier) exec(cmd *fsmpb.Command, index uint64) (Result, error) {
	res := Result{Index: index, LeaderTimeUnixNano: cmd.GetLeaderTimeUnixNano()}
	var err error
	switch cmd.GetOp() {
	case fsmpb.Op_OP_PUT:
		err = a.put(cmd, &res)
	case fsmpb.Op_OP_DELETE, fsmpb.Op_OP_UNDELETE, fsmpb.Op_OP_DESTROY:
		err = a.changeVersions(cmd, &res)
	case fsmpb.Op_OP_DELETE_METADATA:
		err = a.deleteMetadata(cmd, &res)
	case fsmpb.Op_OP_PUT_METADATA:
		err = a.putMetadata(cmd, &res)
	case fsmpb.Op_OP_SYS_PUT:
		a.sysChanged = true
		err = a.sysPut(cmd, &res)
	case fsmpb.Op_OP_SYS_DELETE:
		a.sysChanged = true
		err = a.sysDelete(cmd)
	case fsmpb.Op_OP_SYS_CAS:
		a.sysChanged = true
		err = a.sysCAS(cmd, &res)
	case fsmpb.Op_OP_PUT_KV_CONFIG:
		err = a.putKVConfig(cmd)
	case fsmpb.Op_OP_LEASE_PUT:
		err = a.leasePut(cmd, index, &res)
	case fsmpb.Op_OP_LEASE_DELETE:
		err = a.leaseDelete(cmd, &res)
	case fsmpb.Op_OP_NOOP:
	default:
		// DecodeCommand refuses unknown ops; keep the switch total anyway.
		res.Err = newResultError(ErrInvalidCommand, "unknown op %d", int32(cmd.GetOp()))
	}
	return res, err
}

// The operations below record a deterministic outcome in res and return a
// non-nil error only for a storage failure, which aborts the transaction. An
// operation that fails deterministically writes nothing.

// put writes version current+1 after the check-and-set checks.
func (a *applier) put(cmd *fsmpb.Command, res *Result) error {
	path, now, index := cmd.GetPath(), cmd.GetLeaderTimeUnixNano(), res.Index
	meta, err := a.getMeta(path)
	if err != nil {
		return err
	}
	cfg, err := a.kvConfig(path)
	if err != nil {
		return err
	}
	var current uint64
	if meta != nil {
		current = meta.GetCurrentVersion()
	}
	if (meta.GetCasRequired() || cfg.GetCasRequired()) && !cmd.GetHasCas() {
		res.Err = newResultError(ErrCASRequired, "%q", path)
		return nil
	}
	if cmd.GetHasCas() && cmd.GetCas() != current {
		res.Err = newResultError(ErrCASMismatch, "%q is at version %d, cas was %d", path, current, cmd.GetCas())
		return nil
	}
	if v := cmd.GetVersion(); v != 0 && v != current+1 {
		res.Err = newResultError(ErrVersionConflict, "%q: sealed for version %d, the next is %d", path, v, current+1)
		return nil
	}
	if meta == nil {
		meta = a.newMeta(cfg, now)
	}
	version := current + 1
	meta.CurrentVersion = version
	meta.UpdatedUnixNano = now
	vm := &fsmpb.VersionMeta{Version: version, CreatedUnixNano: now, ValueIndex: index}
	if dva := shorterDVA(meta.GetDeleteVersionAfterNanos(), cfg.GetDeleteVersionAfterNanos()); dva > 0 {
		// Vault's delete_version_after: the version carries its deletion
		// time from the start and counts as deleted once it has passed.
		vm.DeletedUnixNano = addNanos(now, dva)
	}
	meta.Versions = append(meta.Versions, vm)
	// The decoded command owns its ciphertext and outlives the transaction,
	// as bbolt requires of a value passed to Put.
	if err := a.values.Put(valueKey(index), cmd.GetCiphertext()); err != nil {
		return err
	}
	res.Version = version
	return a.trimAndPut(path, meta, cfg)
}

// changeVersions soft-deletes, undeletes or destroys versions.
func (a *applier) changeVersions(cmd *fsmpb.Command, res *Result) error {
	path, now, op := cmd.GetPath(), cmd.GetLeaderTimeUnixNano(), cmd.GetOp()
	meta, err := a.getMeta(path)
	if err != nil {
		return err
	}
	if meta == nil {
		res.Err = newResultError(ErrNotFound, "no secret at %q", path)
		return nil
	}
	versions := cmd.GetVersions()
	if len(versions) == 0 { // only OP_DELETE gets here: the current version
		if meta.GetCurrentVersion() == 0 {
			res.Err = newResultError(ErrNotFound, "%q has no version to delete", path)
			return nil
		}
		versions = []uint64{meta.GetCurrentVersion()}
	}
	found := 0
	for _, v := range versions {
		if findVersion(meta, v) != nil {
			found++
		}
	}
	if found == 0 {
		res.Err = newResultError(ErrNotFound, "none of versions %v of %q exist", versions, path)
		return nil
	}
	for _, v := range versions {
		vm := findVersion(meta, v)
		if vm == nil {
			continue
		}
		switch op {
		case fsmpb.Op_OP_DELETE:
			if (vm.DeletedUnixNano == 0 || vm.DeletedUnixNano > now) && !vm.Destroyed {
				vm.DeletedUnixNano = now
			}
		case fsmpb.Op_OP_UNDELETE:
			if !vm.Destroyed {
				vm.DeletedUnixNano = 0
			}
		case fsmpb.Op_OP_DESTROY:
			if !vm.Destroyed {
				if err := a.deleteValue(path, vm); err != nil {
					return err
				}
				vm.Destroyed = true
			}
		}
	}
	meta.UpdatedUnixNano = now
	return a.putMeta(path, meta)
}

// deleteMetadata removes the secret and all its versions.
func (a *applier) deleteMetadata(cmd *fsmpb.Command, res *Result) error {
	path := cmd.GetPath()
	meta, err := a.getMeta(path)
	if err != nil {
		return err
	}
	if meta == nil {
		res.Err = newResultError(ErrNotFound, "no secret at %q", path)
		return nil
	}
	for _, vm := range meta.GetVersions() {
		if err := a.deleteValue(path, vm); err != nil {
			return err
		}
	}
	return a.meta.Delete([]byte(path))
}

// putMetadata creates or updates a secret's settings: those of
// cmd.metadata when set, else max_versions (unless 0) and cas_required.
func (a *applier) putMetadata(cmd *fsmpb.Command, res *Result) error {
	path, now := cmd.GetPath(), cmd.GetLeaderTimeUnixNano()
	meta, err := a.getMeta(path)
	if err != nil {
		return err
	}
	u := cmd.GetMetadata()
	if meta == nil {
		if u.GetMustExist() {
			res.Err = newResultError(ErrNotFound, "no secret at %q", path)
			return nil
		}
		cfg, err := a.kvConfig(path)
		if err != nil {
			return err
		}
		meta = a.newMeta(cfg, now)
	}
	if u == nil {
		if mv := cmd.GetMaxVersions(); mv > 0 {
			meta.MaxVersions = mv
		}
		meta.CasRequired = cmd.GetCasRequired()
	} else {
		applySettings(u, &meta.MaxVersions, &meta.CasRequired, &meta.DeleteVersionAfterNanos)
		custom := meta.GetCustomMetadata()
		if u.GetClearCustomMetadata() {
			custom = nil
		}
		for k, v := range u.GetCustomMetadata() {
			if custom == nil {
				custom = make(map[string]string, len(u.GetCustomMetadata()))
			}
			custom[k] = v
		}
		for _, k := range u.GetRemoveCustomMetadata() {
			delete(custom, k)
		}
		if len(custom) > MaxCustomMetadataKeys {
			res.Err = newResultError(ErrInvalidCommand, "custom_metadata of %q would hold %d keys, over the limit of %d", path, len(custom), MaxCustomMetadataKeys)
			return nil
		}
		meta.CustomMetadata = custom
	}
	meta.UpdatedUnixNano = now
	return a.trimAndPut(path, meta, nil)
}

// newMeta is the metadata of a secret created at now. Before its mount
// has a configuration, a secret gets the default max_versions as its own
// (as every secret did before mounts had one); after, it gets none, so
// that the mount's setting applies to it, as in Vault.
func (a *applier) newMeta(cfg *fsmpb.KVConfig, now int64) *fsmpb.SecretMeta {
	meta := &fsmpb.SecretMeta{CreatedUnixNano: now}
	if cfg == nil {
		meta.MaxVersions = a.f.opts.DefaultMaxVersions
	}
	return meta
}

// shorterDVA is the shorter of two delete_version_after settings that are
// set (0: neither is).
func shorterDVA(a, b int64) int64 {
	switch {
	case a <= 0:
		return max(b, 0)
	case b <= 0:
		return a
	}
	return min(a, b)
}

// kvConfig is the configuration of the mount of path, nil when it has
// none.
func (a *applier) kvConfig(path string) (*fsmpb.KVConfig, error) {
	return loadKVConfig(a.stateMeta, path)
}

// loadKVConfig reads the configuration of the mount of path from the meta
// bucket; nil when it has none.
func loadKVConfig(b *bolt.Bucket, path string) (*fsmpb.KVConfig, error) {
	mount, _, _ := strings.Cut(path, "/")
	v := b.Get([]byte(keyKVConfigPrefix + mount + "/"))
	if v == nil {
		return nil, nil
	}
	cfg := new(fsmpb.KVConfig)
	if err := proto.Unmarshal(v, cfg); err != nil {
		return nil, fmt.Errorf("corrupt kv config of %q: %w", mount, err)
	}
	return cfg, nil
}

// putKVConfig sets the settings cmd.metadata holds of a mount.
func (a *applier) putKVConfig(cmd *fsmpb.Command) error {
	cfg, err := a.kvConfig(cmd.GetPath())
	if err != nil {
		return err
	}
	if cfg == nil {
		cfg = &fsmpb.KVConfig{}
	}
	applySettings(cmd.GetMetadata(), &cfg.MaxVersions, &cfg.CasRequired, &cfg.DeleteVersionAfterNanos)
	b, err := marshalOpts.Marshal(cfg)
	if err != nil {
		return err
	}
	return a.stateMeta.Put([]byte(keyKVConfigPrefix+cmd.GetPath()), b)
}

// applySettings sets the settings u names, the others staying: a secret's
// metadata and a mount's configuration take the same ones.
func applySettings(u *fsmpb.MetadataUpdate, maxVersions *uint32, casRequired *bool, deleteAfterNanos *int64) {
	if u.MaxVersions != nil {
		*maxVersions = u.GetMaxVersions()
	}
	if u.CasRequired != nil {
		*casRequired = u.GetCasRequired()
	}
	if u.DeleteVersionAfterNanos != nil {
		*deleteAfterNanos = max(u.GetDeleteVersionAfterNanos(), 0)
	}
}

// MaxCustomMetadataKeys bounds the keys of a secret's custom metadata (as
// Vault's KV v2 does); a change that would leave more writes nothing.
const MaxCustomMetadataKeys = 64

// addNanos is t+d, saturated at the largest time instead of wrapping.
func addNanos(t, d int64) int64 {
	if t > math.MaxInt64-d {
		return math.MaxInt64
	}
	return t + d
}

// sysPut writes all entries, or none when sys_require_absent exists.
func (a *applier) sysPut(cmd *fsmpb.Command, res *Result) error {
	if k := cmd.GetSysRequireAbsent(); k != "" && a.sys.Get([]byte(k)) != nil {
		res.Err = newResultError(ErrAlreadyExists, "sys key %q", k)
		return nil
	}
	for _, e := range cmd.GetSys() {
		v := e.GetValue()
		if v == nil {
			v = []byte{}
		}
		if err := a.sys.Put([]byte(e.GetKey()), v); err != nil {
			return err
		}
	}
	return nil
}

// sysCAS writes and removes system entries when every expected key holds
// exactly its expected value, else nothing (CAS_MISMATCH). The outcome
// depends only on the state and the command: every node decides alike.
func (a *applier) sysCAS(cmd *fsmpb.Command, res *Result) error {
	for _, e := range cmd.GetSysExpect() {
		if !bytes.Equal(a.sys.Get([]byte(e.GetKey())), e.GetValue()) {
			res.Err = newResultError(ErrCASMismatch, "sys key %q changed since it was read", e.GetKey())
			return nil
		}
	}
	for _, k := range cmd.GetSysKeys() {
		if err := a.sys.Delete([]byte(k)); err != nil {
			return err
		}
	}
	for _, e := range cmd.GetSys() {
		v := e.GetValue()
		if v == nil {
			v = []byte{}
		}
		if err := a.sys.Put([]byte(e.GetKey()), v); err != nil {
			return err
		}
	}
	return nil
}

// sysDelete removes keys; absent keys are ignored.
func (a *applier) sysDelete(cmd *fsmpb.Command) error {
	for _, k := range cmd.GetSysKeys() {
		if err := a.sys.Delete([]byte(k)); err != nil {
			return err
		}
	}
	return nil
}

// trimAndPut drops the oldest versions beyond max_versions (value and
// metadata), updates OldestVersion and stores the metadata. cfg is the
// mount's configuration when the caller read it already (nil: read here
// when the secret takes its max_versions from it).
func (a *applier) trimAndPut(path string, meta *fsmpb.SecretMeta, cfg *fsmpb.KVConfig) error {
	limit := int(meta.GetMaxVersions())
	if limit == 0 {
		if cfg == nil { // the caller had no reason to load it
			var err error
			if cfg, err = a.kvConfig(path); err != nil {
				return err
			}
		}
		limit = int(cfg.GetMaxVersions())
	}
	if limit == 0 {
		limit = int(a.f.opts.DefaultMaxVersions)
	}
	if excess := len(meta.Versions) - limit; excess > 0 {
		for _, vm := range meta.Versions[:excess] {
			if err := a.deleteValue(path, vm); err != nil {
				return err
			}
		}
		meta.Versions = append([]*fsmpb.VersionMeta(nil), meta.Versions[excess:]...)
	}
	meta.OldestVersion = 0
	if len(meta.Versions) > 0 {
		meta.OldestVersion = meta.Versions[0].GetVersion()
	}
	return a.putMeta(path, meta)
}

func (a *applier) getMeta(path string) (*fsmpb.SecretMeta, error) {
	return loadMeta(a.meta, path)
}

func (a *applier) putMeta(path string, meta *fsmpb.SecretMeta) error {
	b, err := marshalOpts.Marshal(meta)
	if err != nil {
		return err
	}
	return a.metaPuts.put([]byte(path), b)
}

// appendFillPercent is how full bbolt fills the pages of a bucket that a
// transaction only appended to (see appendWatch).
const appendFillPercent = 0.95

// appendWatch watches the puts of one transaction into a secrets bucket.
// bbolt splits an overfull page at its bucket's FillPercent, half by
// default: right for inserts in random order (pages then average about
// two thirds full), but a load in key order (an import, a bench preload,
// names with a counter) leaves every page half full for good, twice the
// file and twice the mapped memory. Measured on 200,000 secrets: in key
// order, half-full splits leave the pages 48 % used and 0.95 leaves them
// about 90 %; in random order 0.95 would leave them 40 %, against 68 %.
// So a transaction whose every put into the bucket went past its last
// key splits the bucket's pages at appendFillPercent; any other keeps
// bbolt's default. The choice changes pages only, never the contents, so
// nodes may differ in it.
type appendWatch struct {
	b        *bolt.Bucket
	last     []byte // the bucket's last key so far; nil while empty
	watching bool   // last is loaded
	appends  bool   // every put so far went past last
	puts     int
}

// put stores k = v in the bucket, noting whether k is past its last key.
func (w *appendWatch) put(k, v []byte) error {
	if !w.watching {
		last, _ := w.b.Cursor().Last()
		w.last = bytes.Clone(last)
		w.watching, w.appends = true, true
	}
	if w.last != nil && bytes.Compare(k, w.last) <= 0 {
		w.appends = false
	} else {
		w.last = k
	}
	w.puts++
	return w.b.Put(k, v)
}

// settle sets the bucket's FillPercent for the commit's page splits.
func (w *appendWatch) settle() {
	if w.puts > 0 && w.appends {
		w.b.FillPercent = appendFillPercent
	}
}

// loadMeta reads a secret's metadata; nil when absent.
func loadMeta(b *bolt.Bucket, path string) (*fsmpb.SecretMeta, error) {
	v := b.Get([]byte(path))
	if v == nil {
		return nil, nil
	}
	meta := new(fsmpb.SecretMeta)
	if err := proto.Unmarshal(v, meta); err != nil {
		return nil, fmt.Errorf("corrupt metadata for %q: %w", path, err)
	}
	return meta, nil
}

// findVersion returns the retained version v, or nil.
func findVersion(meta *fsmpb.SecretMeta, v uint64) *fsmpb.VersionMeta {
	vs := meta.GetVersions()
	i := sort.Search(len(vs), func(i int) bool { return vs[i].GetVersion() >= v })
	if i < len(vs) && vs[i].GetVersion() == v {
		return vs[i]
	}
	return nil
}

// deleteValue removes the value of a version of the secret at path
// (nothing when it was destroyed already).
func (a *applier) deleteValue(path string, vm *fsmpb.VersionMeta) error {
	if i := vm.GetValueIndex(); i != 0 {
		return a.values.Delete(valueKey(i))
	}
	return a.data.Delete(dataKey(path, vm.GetVersion()))
}

// valueKey is the key of a value in secret_values: the big-endian Raft
// index of the put that wrote it. Puts come in index order, so values are
// appended: a put dirties the last page of secret_values, which the other
// puts of its batch share, where a key by path (format 1's secret_data)
// dirtied a page, and its branch, of its own at random among all secrets'.
func valueKey(index uint64) []byte {
	return encodeUint64(index)
}

// valueKeyOf is where the value of a version of the secret at path is:
// its bucket and key.
func valueKeyOf(tx *bolt.Tx, path string, version, valueIndex uint64) (*bolt.Bucket, []byte) {
	if valueIndex != 0 {
		return tx.Bucket(bucketSecretValues), valueKey(valueIndex)
	}
	return tx.Bucket(bucketSecretData), dataKey(path, version)
}

// dataKey is format 1's key of a value in secret_data: path NUL big-endian
// version; paths never contain NUL, so the versions of one path are
// contiguous and ordered.
func dataKey(path string, version uint64) []byte {
	k := make([]byte, len(path)+1+8)
	copy(k, path)
	binary.BigEndian.PutUint64(k[len(path)+1:], version)
	return k
}

// idemTimeKey is big-endian leader time followed by the request_id.
func idemTimeKey(t int64, rid string) []byte {
	k := make([]byte, 8+len(rid))
	binary.BigEndian.PutUint64(k, uint64(t))
	copy(k[8:], rid)
	return k
}

// pruneIdempotency removes records older than now - window. The time index
// makes the cost proportional to what is removed, and the outcome depends
// only on the log, so every node prunes the same records.
func (a *applier) pruneIdempotency(now int64) error {
	cutoff := now - int64(a.f.opts.IdempotencyWindow)
	if cutoff <= 0 {
		return nil
	}
	return a.pruneOldest(func(k []byte) bool { return int64(binary.BigEndian.Uint64(k)) < cutoff })
}

// pruneOldest removes idempotency records, oldest first, while drop says
// so of the next one's time index key.
//
// It finds them in one walk and deletes them after: re-seeking the first
// record after each deletion walked every leaf emptied so far (bbolt
// drops empty pages only at commit), so the first write after an idle
// window, which prunes the whole table, took seconds on every node
// (BenchmarkPruneAfterIdle). Deleting under the cursor is no option
// either: a bbolt cursor may skip an element when Next follows Delete.
func (a *applier) pruneOldest(drop func(timeKey []byte) bool) error {
	if err := a.loadIdemCount(); err != nil {
		return err
	}
	var doomed [][]byte
	c := a.idemTs.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) < 8 {
			return fmt.Errorf("corrupt idempotency index key %x", k)
		}
		if !drop(k) {
			break
		}
		doomed = append(doomed, bytes.Clone(k))
		if a.idemCount > 0 {
			a.idemCount--
		}
		a.idemCountDirty = true
	}
	for _, k := range doomed {
		if err := a.idem.Delete(k[8:]); err != nil {
			return err
		}
		if err := a.idemTs.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// idempotencyRecord returns the record for rid, or nil.
func (a *applier) idempotencyRecord(rid string) (*fsmpb.IdempotencyRecord, error) {
	v := a.idem.Get([]byte(rid))
	if v == nil {
		return nil, nil
	}
	rec := new(fsmpb.IdempotencyRecord)
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("corrupt idempotency record %q: %w", rid, err)
	}
	return rec, nil
}

// recordIdempotency stores the first result of a command with a request_id.
func (a *applier) recordIdempotency(rid string, cmd *fsmpb.Command, res Result) error {
	rec := &fsmpb.IdempotencyRecord{
		Index:              res.Index,
		Version:            res.Version,
		Code:               codeOf(res.Err),
		LeaderTimeUnixNano: cmd.GetLeaderTimeUnixNano(),
		Op:                 cmd.GetOp(),
		Path:               cmd.GetPath(),
	}
	if res.Err != nil {
		rec.Message = res.Err.Error()
	}
	b, err := marshalOpts.Marshal(rec)
	if err != nil {
		return err
	}
	if err := a.loadIdemCount(); err != nil {
		return err
	}
	if err := a.idem.Put([]byte(rid), b); err != nil {
		return err
	}
	if err := a.idemTs.Put(idemTimeKey(cmd.GetLeaderTimeUnixNano(), rid), []byte{}); err != nil {
		return err
	}
	a.idemCount++
	a.idemCountDirty = true
	max := uint64(a.f.opts.MaxIdempotencyRecords)
	return a.pruneOldest(func([]byte) bool { return a.idemCount > max })
}

// changeOf describes what a successful command did to a secret, or nil.
func changeOf(cmd *fsmpb.Command, res Result) *Change {
	c := &Change{Index: res.Index, Path: cmd.GetPath()}
	switch cmd.GetOp() {
	case fsmpb.Op_OP_PUT:
		c.Op, c.Version = "put", res.Version
	case fsmpb.Op_OP_DELETE:
		c.Op, c.Versions = "delete", cmd.GetVersions()
	case fsmpb.Op_OP_UNDELETE:
		c.Op, c.Versions = "undelete", cmd.GetVersions()
	case fsmpb.Op_OP_DESTROY:
		c.Op, c.Versions = "destroy", cmd.GetVersions()
	case fsmpb.Op_OP_PUT_METADATA:
		c.Op = "put_metadata"
	case fsmpb.Op_OP_DELETE_METADATA:
		c.Op = "delete_metadata"
	default:
		return nil
	}
	return c
}
