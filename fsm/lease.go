package fsm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"sort"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"coffer/fsm/fsmpb"
)

// The lease table: the state of server/lease, kept so that a new leader
// finds what is due by walking an index, without loading anything.
//
//	lease        id → LeaseEntry (group, due time, sealed record, indexes)
//	lease_due    big-endian due time ‖ id → empty: a cursor walks due order
//	lease_group  group → live leases of the group (8 bytes big-endian)
//	meta         lease_total → live leases in all
//
// Every write keeps the four consistent in its transaction. The records
// are sealed by the server's barrier: the state machine sees ids, groups,
// due times and indexes only.

// DefaultLeasePage is the page size of LeaseDue and LeaseList when the
// caller names none.
const DefaultLeasePage = 1000

// LeaseEntry is one stored lease as the state machine holds it.
type LeaseEntry struct {
	// ID is the lease id.
	ID string
	// Group is the quota group the lease counts in.
	Group string
	// DueUnixNano is when the lease is next due for revocation, in leader
	// time.
	DueUnixNano int64
	// Record is the sealed lease record (a copy owned by the caller).
	Record []byte
	// Index is the Raft index of the lease's last write: the expect_index
	// of a write that must not overwrite another's.
	Index uint64
	// CreatedIndex is the Raft index of the write that created the lease.
	CreatedIndex uint64
}

// createLeaseBuckets creates the lease table's buckets when missing.
func createLeaseBuckets(tx *bolt.Tx) error {
	for _, name := range leaseBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// leaseDueKey is the due index's key: big-endian due time, then the id.
// Due times are never negative (validateLeasePut), so unsigned order is
// time order.
func leaseDueKey(due int64, id string) []byte {
	k := make([]byte, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(due))
	copy(k[8:], id)
	return k
}

// leaseTable is the lease buckets of one transaction.
type leaseTable struct {
	leases *bolt.Bucket
	due    *bolt.Bucket
	groups *bolt.Bucket
	meta   *bolt.Bucket
}

// leaseTableOf returns the lease buckets of tx; in a read transaction of a
// state without them, nil buckets (an empty table).
func leaseTableOf(tx *bolt.Tx) leaseTable {
	return leaseTable{
		leases: tx.Bucket(bucketLease),
		due:    tx.Bucket(bucketLeaseDue),
		groups: tx.Bucket(bucketLeaseGroup),
		meta:   tx.Bucket(bucketMeta),
	}
}

// get returns the lease at id, nil when absent.
func (t leaseTable) get(id string) (*fsmpb.LeaseEntry, error) {
	if t.leases == nil {
		return nil, nil
	}
	v := t.leases.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	e := new(fsmpb.LeaseEntry)
	if err := proto.Unmarshal(v, e); err != nil {
		return nil, fmt.Errorf("%w: lease %q: %v", ErrCorrupt, id, err)
	}
	return e, nil
}

// groupCount is the number of live leases in group.
func (t leaseTable) groupCount(group string) (uint64, error) {
	if t.groups == nil {
		return 0, nil
	}
	n, err := decodeUint64(t.groups.Get([]byte(group)))
	if err != nil {
		return 0, fmt.Errorf("%w: lease count of group %q: %v", ErrCorrupt, group, err)
	}
	return n, nil
}

// total is the number of live leases.
func (t leaseTable) total() (uint64, error) {
	n, err := decodeUint64(t.meta.Get(keyLeaseTotal))
	if err != nil {
		return 0, fmt.Errorf("%w: lease total: %v", ErrCorrupt, err)
	}
	return n, nil
}

// setGroupCount stores a group's count; a group without leases has no key.
func (t leaseTable) setGroupCount(group string, n uint64) error {
	if n == 0 {
		return t.groups.Delete([]byte(group))
	}
	return t.groups.Put([]byte(group), encodeUint64(n))
}

// leaseTable returns the transaction's lease buckets, created when
// missing (a state written before leases existed).
func (a *applier) leaseTable() (leaseTable, error) {
	if err := createLeaseBuckets(a.tx); err != nil {
		return leaseTable{}, err
	}
	return leaseTableOf(a.tx), nil
}

// leasePut applies OP_LEASE_PUT: every write's conditions are checked
// first, against the state as the writes before it leave it, and only
// when all hold is anything written.
func (a *applier) leasePut(cmd *fsmpb.Command, index uint64, res *Result) error {
	t, err := a.leaseTable()
	if err != nil {
		return err
	}
	total, err := t.total()
	if err != nil {
		return err
	}
	writes := cmd.GetLeaseWrites()
	olds := make([]*fsmpb.LeaseEntry, len(writes))
	added := map[string]uint64{} // leases this command creates, per group
	var addedTotal uint64
	for i, w := range writes {
		id := w.GetId()
		old, err := t.get(id)
		if err != nil {
			return err
		}
		olds[i] = old
		if old != nil {
			switch {
			case w.GetCreateOnly():
				res.Err = newResultError(ErrAlreadyExists, "lease %q exists (written at index %d)", id, old.GetIndex())
				return nil
			case w.GetExpectIndex() != 0 && old.GetIndex() != w.GetExpectIndex():
				res.Err = newResultError(ErrCASMismatch, "lease %q was written at index %d, not %d", id, old.GetIndex(), w.GetExpectIndex())
				return nil
			case old.GetGroup() != w.GetGroup():
				res.Err = newResultError(ErrInvalidCommand, "lease %q belongs to group %q, the write names %q", id, old.GetGroup(), w.GetGroup())
				return nil
			}
			continue
		}
		if w.GetExpectIndex() != 0 {
			res.Err = newResultError(ErrCASMismatch, "lease %q does not exist (expected its write at index %d)", id, w.GetExpectIndex())
			return nil
		}
		group := w.GetGroup()
		inGroup, err := t.groupCount(group)
		if err != nil {
			return err
		}
		if limit := w.GetMaxInGroup(); limit != 0 && inGroup+added[group] >= limit {
			res.Err = newResultError(ErrQuotaExceeded, "group %q holds %d live leases, its limit (max per group) is %d", group, inGroup+added[group], limit)
			return nil
		}
		if limit := w.GetMaxTotal(); limit != 0 && total+addedTotal >= limit {
			res.Err = newResultError(ErrQuotaExceeded, "%d live leases in all, the limit (max total) is %d", total+addedTotal, limit)
			return nil
		}
		added[group]++
		addedTotal++
	}

	for i, w := range writes {
		id, old := w.GetId(), olds[i]
		e := &fsmpb.LeaseEntry{
			Group:        w.GetGroup(),
			DueUnixNano:  w.GetDueUnixNano(),
			Record:       w.GetRecord(),
			Index:        index,
			CreatedIndex: index,
		}
		if old != nil {
			e.CreatedIndex = old.GetCreatedIndex()
			if old.GetDueUnixNano() != e.GetDueUnixNano() {
				if err := t.due.Delete(leaseDueKey(old.GetDueUnixNano(), id)); err != nil {
					return err
				}
			}
		}
		b, err := marshalOpts.Marshal(e)
		if err != nil {
			return err
		}
		if err := t.leases.Put([]byte(id), b); err != nil {
			return err
		}
		if err := t.due.Put(leaseDueKey(e.GetDueUnixNano(), id), []byte{}); err != nil {
			return err
		}
	}
	if addedTotal == 0 {
		return nil
	}
	groups := make([]string, 0, len(added))
	for g := range added {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		n, err := t.groupCount(g)
		if err != nil {
			return err
		}
		if err := t.setGroupCount(g, n+added[g]); err != nil {
			return err
		}
	}
	return t.meta.Put(keyLeaseTotal, encodeUint64(total+addedTotal))
}

// leaseDelete applies OP_LEASE_DELETE: when every expect_index holds, the
// leases present are removed from the table, the due index and the counts.
func (a *applier) leaseDelete(cmd *fsmpb.Command, res *Result) error {
	t, err := a.leaseTable()
	if err != nil {
		return err
	}
	dels := cmd.GetLeaseDeletes()
	olds := make([]*fsmpb.LeaseEntry, len(dels))
	for i, d := range dels {
		old, err := t.get(d.GetId())
		if err != nil {
			return err
		}
		if old != nil && d.GetExpectIndex() != 0 && old.GetIndex() != d.GetExpectIndex() {
			res.Err = newResultError(ErrCASMismatch, "lease %q was written at index %d, not %d", d.GetId(), old.GetIndex(), d.GetExpectIndex())
			return nil
		}
		olds[i] = old
	}
	total, err := t.total()
	if err != nil {
		return err
	}
	removed := map[string]uint64{}
	var removedTotal uint64
	for i, d := range dels {
		old := olds[i]
		if old == nil {
			continue
		}
		if err := t.leases.Delete([]byte(d.GetId())); err != nil {
			return err
		}
		if err := t.due.Delete(leaseDueKey(old.GetDueUnixNano(), d.GetId())); err != nil {
			return err
		}
		removed[old.GetGroup()]++
		removedTotal++
	}
	if removedTotal == 0 {
		return nil
	}
	groups := make([]string, 0, len(removed))
	for g := range removed {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		n, err := t.groupCount(g)
		if err != nil {
			return err
		}
		if err := t.setGroupCount(g, n-min(n, removed[g])); err != nil {
			return err
		}
	}
	return t.meta.Put(keyLeaseTotal, encodeUint64(total-min(total, removedTotal)))
}

// leaseEntryOf converts a stored entry, copying what bbolt owns.
func leaseEntryOf(id string, e *fsmpb.LeaseEntry) LeaseEntry {
	return LeaseEntry{
		ID:           id,
		Group:        e.GetGroup(),
		DueUnixNano:  e.GetDueUnixNano(),
		Record:       bytes.Clone(e.GetRecord()),
		Index:        e.GetIndex(),
		CreatedIndex: e.GetCreatedIndex(),
	}
}

// LeaseGet returns the lease at id, or an error wrapping ErrNotFound.
func (f *FSM) LeaseGet(id string) (LeaseEntry, error) {
	var out LeaseEntry
	err := f.view(func(tx *bolt.Tx) error {
		e, err := leaseTableOf(tx).get(id)
		if err != nil {
			return err
		}
		if e == nil {
			return fmt.Errorf("%w (no lease %q)", ErrNotFound, id)
		}
		out = leaseEntryOf(id, e)
		return nil
	})
	return out, err
}

// LeaseDue returns the leases due at or before upTo (leader time, Unix
// nanoseconds), earliest first, at most limit of them (limit ≤ 0:
// DefaultLeasePage). It walks the due index from its start and stops at
// the first lease due later: the cost is what it returns, whatever the
// size of the table.
func (f *FSM) LeaseDue(upTo int64, limit int) ([]LeaseEntry, error) {
	if limit <= 0 {
		limit = DefaultLeasePage
	}
	var out []LeaseEntry
	if upTo < 0 {
		return nil, nil
	}
	err := f.view(func(tx *bolt.Tx) error {
		t := leaseTableOf(tx)
		if t.due == nil {
			return nil
		}
		c := t.due.Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			if len(k) < 8 {
				return fmt.Errorf("%w: lease due key %x", ErrCorrupt, k)
			}
			if binary.BigEndian.Uint64(k) > uint64(upTo) {
				return nil
			}
			id := string(k[8:])
			e, err := t.get(id)
			if err != nil {
				return err
			}
			if e == nil {
				return fmt.Errorf("%w: the due index names lease %q, which does not exist", ErrCorrupt, id)
			}
			out = append(out, leaseEntryOf(id, e))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// NextLeaseDue returns the earliest due time later than after (leader
// time, Unix nanoseconds; math.MinInt64 or any negative value: the
// earliest of all); ok is false when no lease is due after it. It reads
// one key of the due index.
func (f *FSM) NextLeaseDue(after int64) (due int64, ok bool, err error) {
	if after == math.MaxInt64 {
		return 0, false, nil
	}
	err = f.view(func(tx *bolt.Tx) error {
		t := leaseTableOf(tx)
		if t.due == nil {
			return nil
		}
		c := t.due.Cursor()
		var k []byte
		if after < 0 {
			k, _ = c.First()
		} else {
			var seek [8]byte
			binary.BigEndian.PutUint64(seek[:], uint64(after)+1)
			k, _ = c.Seek(seek[:])
		}
		if k == nil {
			return nil
		}
		if len(k) < 8 {
			return fmt.Errorf("%w: lease due key %x", ErrCorrupt, k)
		}
		due, ok = int64(binary.BigEndian.Uint64(k)), true
		return nil
	})
	return due, ok, err
}

// LeaseList returns the leases whose id starts with prefix, in id order,
// from the id after `after` (exclusive; "" from the start), at most limit
// (limit ≤ 0: DefaultLeasePage). more reports that leases follow the last
// one returned.
func (f *FSM) LeaseList(prefix, after string, limit int) (entries []LeaseEntry, more bool, err error) {
	if limit <= 0 {
		limit = DefaultLeasePage
	}
	p := []byte(prefix)
	err = f.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLease)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.Seek(p)
		if after != "" {
			a := []byte(after)
			if bytes.Compare(a, p) >= 0 {
				if k, v = c.Seek(a); k != nil && bytes.Equal(k, a) {
					k, v = c.Next()
				}
			}
		}
		for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if len(entries) == limit {
				more = true
				return nil
			}
			e := new(fsmpb.LeaseEntry)
			if err := proto.Unmarshal(v, e); err != nil {
				return fmt.Errorf("%w: lease %q: %v", ErrCorrupt, k, err)
			}
			entries = append(entries, leaseEntryOf(string(k), e))
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return entries, more, nil
}

// LeaseCount returns the live leases of group and of the whole table.
func (f *FSM) LeaseCount(group string) (inGroup, total uint64, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		t := leaseTableOf(tx)
		var err error
		if inGroup, err = t.groupCount(group); err != nil {
			return err
		}
		total, err = t.total()
		return err
	})
	return inGroup, total, err
}
