package testcluster

import (
	"errors"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// Ports handed out by FreeAddr lie below Linux's ephemeral range (32768
// and up), which outgoing connections and listeners on port 0 draw from:
// a node that is down keeps its addresses, and its port must not be taken
// meanwhile by one of those, or its restart would fail, or clients would
// talk to a stranger.
const (
	portLow  = 20000
	portHigh = 32000
)

// handedOut holds every port FreeAddr returned in this process: it never
// returns one twice, so two nodes (of one cluster or of two) never get
// the same port, even after one of them stopped.
var handedOut struct {
	mu    sync.Mutex
	ports map[int]bool
}

// errNoFreePort is returned when no port of the range was free.
var errNoFreePort = errors.New("testcluster: no free loopback port between 20000 and 32000")

// FreeAddr returns a loopback host:port that was free for TCP and UDP a
// moment ago, below the kernel's ephemeral range, and that no earlier call
// in this process returned. It fails t when it finds none.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// FreePort returns the port of an address FreeAddr could have returned,
// or an error when none is free: for code that runs without a test at
// hand, such as a driver publishing a container's port on loopback.
func FreePort() (int, error) {
	addr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}

func freeAddr() (string, error) {
	for range 1000 {
		port := portLow + mrand.IntN(portHigh-portLow)
		handedOut.mu.Lock()
		taken := handedOut.ports[port]
		if !taken {
			if handedOut.ports == nil {
				handedOut.ports = make(map[int]bool)
			}
			handedOut.ports[port] = true
		}
		handedOut.mu.Unlock()
		if taken {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr, nil
	}
	return "", errNoFreePort
}

// addrInUse reports whether err says a port was taken (a port found free
// may be taken since, by another process).
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE)
}
