// Package ports defines coffer's default listen addresses once (DESIGN.md
// §9). Every default of a flag, a config or a client comes from here.
package ports

// Default ports.
const (
	API     = "8400" // gRPC API
	Raft    = "8401" // Raft transport
	Gossip  = "8402" // memberlist gossip, TCP and UDP
	HTTP    = "8200" // Vault-compatible HTTP API (Vault's own port)
	Metrics = "8405" // Prometheus metrics
)

// Default addresses: each port on loopback, so that a node is reachable
// from elsewhere only when an operator says so.
const (
	APIAddr     = "127.0.0.1:" + API
	RaftAddr    = "127.0.0.1:" + Raft
	GossipAddr  = "127.0.0.1:" + Gossip
	HTTPAddr    = "127.0.0.1:" + HTTP
	MetricsAddr = "127.0.0.1:" + Metrics
)
