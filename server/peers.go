package server

import (
	"context"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// peerConns keeps one gRPC connection per peer API address. Once closed
// (the node stops) it opens no more: a call still in flight then would
// leave a connection nobody closes.
type peerConns struct {
	dial   func(ctx context.Context, addr string) (net.Conn, error)
	creds  credentials.TransportCredentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// conn returns the connection to addr, opening it on first use; after
// close it fails with errShuttingDown.
func (p *peerConns) conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errShuttingDown
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	if p.conns == nil {
		p.conns = make(map[string]*grpc.ClientConn)
	}
	// NewClient only fails on a malformed target; a gossiped address that
	// is malformed then fails every call with Unavailable.
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(p.creds),
		grpc.WithContextDialer(p.dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	)
	if err != nil {
		c, _ = grpc.NewClient("passthrough:///invalid-address", grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.closed = true
}

// readRounds coalesces the read-index requests of concurrent followers'
// readers. A reader joins the round that has not started yet; a round
// starts (one request to the leader) when the previous one ends, and
// answers every reader that joined it. Each reader therefore gets an index
// the leader read after the reader arrived, which is what makes the read
// linearizable, and a busy follower sends one request per leader round
// trip instead of one per read. Rounds are kept apart by token (the leader
// checks the token of the request) and by consistency.
type readRounds struct {
	mu     sync.Mutex
	queues map[roundKey]*roundQueue
}

// roundKey says which readers may share a round.
type roundKey struct {
	auth         string
	linearizable bool
}

// roundQueue is the round still open for readers of one key, and whether a
// runner is sending rounds for it.
type roundQueue struct {
	next    *readRound
	running bool
}

// readRound is one request to the leader; done is closed once index or err
// is set.
type readRound struct {
	done  chan struct{}
	index uint64
	err   error
}

// join returns the open round of key, and start true when no runner is
// sending rounds for key: the caller must then start one.
func (rr *readRounds) join(key roundKey) (r *readRound, start bool) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.queues == nil {
		rr.queues = make(map[roundKey]*roundQueue)
	}
	q := rr.queues[key]
	if q == nil {
		q = &roundQueue{}
		rr.queues[key] = q
	}
	if q.next == nil {
		q.next = &readRound{done: make(chan struct{})}
	}
	start = !q.running
	q.running = true
	return q.next, start
}

// take closes the open round of key to new readers and returns it, or
// returns nil, and forgets key, when no reader waits.
func (rr *readRounds) take(key roundKey) *readRound {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	q := rr.queues[key]
	r := q.next
	q.next = nil
	if r == nil {
		delete(rr.queues, key)
	}
	return r
}
