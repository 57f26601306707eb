package server

import (
	"context"
	"sync"
)

// pathLocks serialises writes to one path: a put holds its path's lock from
// predicting the version it creates until its command has been applied. A
// zero pathLocks is ready; locks exist only while someone holds or waits
// for them.
type pathLocks struct {
	mu sync.Mutex
	m  map[string]*pathLock
}

// pathLock is one path's lock: a token in a one-slot channel, so that a
// waiter can give up with its context.
type pathLock struct {
	slot chan struct{}
	refs int
}

// lock takes path's lock, or returns ctx's error when ctx ends first. The
// returned function releases it.
func (p *pathLocks) lock(ctx context.Context, path string) (func(), error) {
	p.mu.Lock()
	l := p.m[path]
	if l == nil {
		if p.m == nil {
			p.m = make(map[string]*pathLock)
		}
		l = &pathLock{slot: make(chan struct{}, 1)}
		p.m[path] = l
	}
	l.refs++
	p.mu.Unlock()
	select {
	case l.slot <- struct{}{}:
		return func() { <-l.slot; p.release(path, l) }, nil
	case <-ctx.Done():
		p.release(path, l)
		return nil, ctx.Err()
	}
}

// release drops one reference to l, and the lock itself with the last.
func (p *pathLocks) release(path string, l *pathLock) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(p.m, path)
	}
}
