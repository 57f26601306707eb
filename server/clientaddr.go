package server

import (
	"context"
	"net"
	"net/netip"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// clientAddrKey carries, on a call a follower forwards to the leader, the
// address of the client that made it, so that the leader checks a
// binding to client addresses (bound CIDRs) against the client and not
// the follower.
const clientAddrKey = "x-coffer-client-addr"

// forwardedByNode reports whether the call was forwarded by a node of the
// cluster: marked as forwarded and, on a node with TLS, made with a
// verified node certificate. Without TLS anyone can claim it, as anyone
// can read the traffic: bindings to client addresses are then as strong
// as the network.
func forwardedByNode(ctx context.Context, tlsOn bool) bool {
	return wasForwarded(ctx) && (!tlsOn || callerIsNode(ctx))
}

// peerAddr is the address of the connection's other end.
func peerAddr(ctx context.Context) (netip.Addr, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}, false
	}
	if ta, ok := p.Addr.(*net.TCPAddr); ok {
		a, ok := netip.AddrFromSlice(ta.IP)
		return a.Unmap(), ok
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// clientAddr is the address of the client a call comes from: for a call
// a node forwarded, the one the node names (named reports that it named
// one); otherwise the peer's.
func clientAddr(ctx context.Context, tlsOn bool) (addr netip.Addr, named bool) {
	if forwardedByNode(ctx, tlsOn) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get(clientAddrKey); len(v) == 1 {
			a, err := netip.ParseAddr(v[0])
			if err != nil {
				return netip.Addr{}, true // named, but not an address: matches no block
			}
			return a.Unmap(), true
		}
		return netip.Addr{}, false
	}
	a, _ := peerAddr(ctx)
	return a, false
}

// addrString names an address in an error ("unknown" when there is none).
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return "unknown address"
	}
	return a.String()
}

type forwardMDKey struct{}

// withForwardMetadata returns ctx with metadata a forward of the call to
// the leader carries besides the token and the client's address (a
// certificate login's verified client certificate).
func withForwardMetadata(ctx context.Context, kv map[string]string) context.Context {
	return context.WithValue(ctx, forwardMDKey{}, kv)
}

// forwardMetadata is what withForwardMetadata added.
func forwardMetadata(ctx context.Context) map[string]string {
	kv, _ := ctx.Value(forwardMDKey{}).(map[string]string)
	return kv
}
