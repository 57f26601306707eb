package fsm

import (
	"strings"
	"sync"
)

// Change is one committed change to a secret, as watchers see it. It holds
// no secret data: a watcher that wants the value reads it.
type Change struct {
	// Index is the Raft index of the command that made the change.
	Index uint64
	// Path is the secret's path.
	Path string
	// Op is put, delete, undelete, destroy, put_metadata or delete_metadata.
	Op string
	// Version is the version a put wrote; Versions the versions a delete,
	// undelete or destroy named (the current one when it named none).
	Version  uint64
	Versions []uint64
}

// DefaultChangeRing is how many recent changes the FSM keeps for watchers
// that resume after a reconnect.
const DefaultChangeRing = 4096

// changeRing keeps the most recent changes in index order. Every change
// with an index above floor is in buf: a resume from an index below floor
// has missed changes (ErrCompacted).
type changeRing struct {
	mu    sync.RWMutex
	buf   []Change
	size  int
	floor uint64
}

func newChangeRing(size int, floor uint64) *changeRing {
	if size <= 0 {
		size = DefaultChangeRing
	}
	return &changeRing{size: size, floor: floor}
}

// add appends the changes of one committed batch.
func (r *changeRing) add(cs []Change) {
	if len(cs) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, cs...)
	if over := len(r.buf) - r.size; over > 0 {
		r.floor = r.buf[over-1].Index
		r.buf = append(r.buf[:0:0], r.buf[over:]...)
	}
}

// reset forgets every change (after a restore): resumes from before floor
// are compacted.
func (r *changeRing) reset(floor uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = nil
	r.floor = floor
}

// since returns up to max changes with Index > from under prefix, and the
// index to resume from next time.
func (r *changeRing) since(from uint64, prefix string, max int) ([]Change, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if from < r.floor {
		return nil, ErrCompacted
	}
	var out []Change
	// buf is sorted by index: find the first change after from.
	lo, hi := 0, len(r.buf)
	for lo < hi {
		mid := (lo + hi) / 2
		if r.buf[mid].Index <= from {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	for _, c := range r.buf[lo:] {
		if strings.HasPrefix(c.Path, prefix) {
			c.Versions = append([]uint64(nil), c.Versions...)
			out = append(out, c)
			if len(out) == max {
				break
			}
		}
	}
	return out, nil
}

// ChangesSince returns up to max changes to secrets under prefix that were
// applied after index from, oldest first. It returns ErrCompacted when
// changes after from are no longer kept (the ring moved on, or the node
// restarted or restored a snapshot since): the watcher should re-read what
// it follows and resume from the current applied index.
func (f *FSM) ChangesSince(from uint64, prefix string, max int) ([]Change, error) {
	if max <= 0 {
		max = 1024
	}
	return f.changes.since(from, prefix, max)
}
