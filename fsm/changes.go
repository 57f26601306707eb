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

// changeRing keeps the most recent changes in index order, in a circular
// buffer of fixed size: adding a change costs the same however full it is.
// Every change with an index above floor is kept: a resume from an index
// below floor has missed changes (ErrCompacted).
type changeRing struct {
	mu    sync.RWMutex
	buf   []Change // len(buf) == size once allocated
	start int      // position of the oldest change
	n     int      // how many changes are kept
	floor uint64
}

func newChangeRing(size int, floor uint64) *changeRing {
	if size <= 0 {
		size = DefaultChangeRing
	}
	return &changeRing{buf: make([]Change, size), floor: floor}
}

// at returns the i-th oldest change kept.
func (r *changeRing) at(i int) *Change { return &r.buf[(r.start+i)%len(r.buf)] }

// add appends the changes of one committed batch, dropping the oldest.
func (r *changeRing) add(cs []Change) {
	if len(cs) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		if r.n == len(r.buf) {
			r.floor = r.buf[r.start].Index
			r.buf[r.start] = c
			r.start = (r.start + 1) % len(r.buf)
			continue
		}
		*r.at(r.n) = c
		r.n++
	}
}

// reset forgets every change (after a restore): resumes from before floor
// are compacted.
func (r *changeRing) reset(floor uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.buf)
	r.start, r.n = 0, 0
	r.floor = floor
}

// since returns up to max changes with Index > from under prefix.
func (r *changeRing) since(from uint64, prefix string, max int) ([]Change, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if from < r.floor {
		return nil, ErrCompacted
	}
	// The kept changes are sorted by index: find the first after from.
	lo, hi := 0, r.n
	for lo < hi {
		mid := (lo + hi) / 2
		if r.at(mid).Index <= from {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	var out []Change
	for i := lo; i < r.n; i++ {
		c := *r.at(i)
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
