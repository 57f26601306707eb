package server

import (
	"context"
	"net"
	"sync"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"
)

// Unseal attempts are limited per caller address, and in all: an unseal
// call needs no token, and at the threshold it costs a Shamir combine and
// an AEAD open, so a flood of them must not take a node's CPU (the review
// measured 5,696 attempts/s). An operator unsealing by hand never comes
// near.
const (
	unsealPerAddr      = 10 // attempts per second from one address
	unsealPerAddrBurst = 20
	unsealTotal        = 100 // attempts per second from everyone
	unsealTotalBurst   = 200
	// limiterAddrs bounds the addresses remembered; past it the table
	// starts over (an attacker with many addresses still meets the total).
	limiterAddrs = 4096
)

// addrLimiter limits unseal calls per caller address and in all.
type addrLimiter struct {
	mu    sync.Mutex
	addrs map[string]*rate.Limiter
	total *rate.Limiter
}

func newUnsealLimiter() *addrLimiter {
	return &addrLimiter{
		addrs: make(map[string]*rate.Limiter),
		total: rate.NewLimiter(unsealTotal, unsealTotalBurst),
	}
}

// allow reports whether the caller of ctx may make one more call.
func (l *addrLimiter) allow(ctx context.Context) bool {
	host := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if h, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
			host = h
		} else {
			host = p.Addr.String()
		}
	}
	l.mu.Lock()
	lim, ok := l.addrs[host]
	if !ok {
		if len(l.addrs) >= limiterAddrs {
			l.addrs = make(map[string]*rate.Limiter)
		}
		lim = rate.NewLimiter(unsealPerAddr, unsealPerAddrBurst)
		l.addrs[host] = lim
	}
	l.mu.Unlock()
	return lim.Allow() && l.total.Allow()
}
