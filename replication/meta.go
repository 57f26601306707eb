package replication

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"
)

// metaMaxSize is memberlist's limit on a node's metadata (memberlist
// panics when a delegate returns more).
const metaMaxSize = 512

// newBoot returns a Boot id for this start of the node.
func newBoot() string { return rand.Text() }

// MemberMeta is what every node tells the others about itself through gossip.
type MemberMeta struct {
	// ID is the node id (also its Raft server id and memberlist name).
	ID string
	// APIAddr is the host:port of the node's API.
	APIAddr string
	// HTTPURL is the URL of the node's Vault-compatible HTTP API, empty
	// when it serves none.
	HTTPURL string
	// RaftAddr is the address of the node's Raft transport.
	RaftAddr string
	// Sealed reports that the node holds no keys right now.
	Sealed bool
	// ReadReplica reports a permanent non-voter.
	ReadReplica bool
	// HasRaftState reports that the node has a Raft log or snapshot: it is
	// (or was) part of a cluster and must not bootstrap a new one.
	HasRaftState bool
	// BootstrapExpect is the node's -bootstrap-expect (0 when unset).
	BootstrapExpect int
	// Version is the coffer version the node runs.
	Version string
	// Boot is new at every start of the node (random): a member whose Boot
	// changed has restarted. Empty from a version that does not send it.
	Boot string
}

// Member statuses, as gossip sees them.
const (
	StatusAlive = "alive"
	// StatusSuspect is reserved: memberlist v0.7.0 keeps its suspicion
	// state private, so a member stays alive until memberlist declares it
	// dead (after the suspicion timeout).
	StatusSuspect = "suspect"
	StatusDead    = "dead"
	StatusLeft    = "left"
)

// Member is one node as this node's gossip sees it.
type Member struct {
	MemberMeta
	// GossipAddr is the ip:port the member gossips on.
	GossipAddr string
	// Status is StatusAlive, StatusSuspect, StatusDead or StatusLeft.
	Status string
	// Since is when this node saw the member enter Status.
	Since time.Time
}

// wireMeta is MemberMeta on the wire: compact JSON with short keys, so that it
// stays well inside memberlist's 512 bytes.
type wireMeta struct {
	ID      string `json:"id"`
	API     string `json:"api,omitempty"`
	HTTP    string `json:"http,omitempty"`
	Raft    string `json:"raft,omitempty"`
	Sealed  bool   `json:"s,omitempty"`
	Replica bool   `json:"rr,omitempty"`
	State   bool   `json:"st,omitempty"`
	Expect  int    `json:"be,omitempty"`
	Version string `json:"v,omitempty"`
	Boot    string `json:"b,omitempty"`
	// Leaving is the node's intent to leave, broadcast just before its
	// leave message: memberlist reports a departure and a failure alike,
	// and this is how the others tell them apart.
	Leaving bool `json:"l,omitempty"`
}

// encodeMeta renders m (and the leave intent) for memberlist.
func encodeMeta(m MemberMeta, leaving bool) []byte {
	b, err := json.Marshal(wireMeta{
		ID: m.ID, API: m.APIAddr, HTTP: m.HTTPURL, Raft: m.RaftAddr, Sealed: m.Sealed, Replica: m.ReadReplica,
		State: m.HasRaftState, Expect: m.BootstrapExpect, Version: m.Version, Boot: m.Boot, Leaving: leaving,
	})
	if err != nil { // cannot happen: only strings, bools and ints
		panic(fmt.Sprintf("replication: encode member meta: %v", err))
	}
	return b
}

// decodeMeta parses metadata gossiped by another node and its leave intent.
func decodeMeta(b []byte) (MemberMeta, bool, error) {
	var w wireMeta
	if err := json.Unmarshal(b, &w); err != nil {
		return MemberMeta{}, false, fmt.Errorf("replication: member metadata is not coffer's: %w", err)
	}
	if w.ID == "" {
		return MemberMeta{}, false, fmt.Errorf("replication: member metadata has no node id")
	}
	return MemberMeta{
		ID: w.ID, APIAddr: w.API, HTTPURL: w.HTTP, RaftAddr: w.Raft, Sealed: w.Sealed, ReadReplica: w.Replica,
		HasRaftState: w.State, BootstrapExpect: w.Expect, Version: w.Version, Boot: w.Boot,
	}, w.Leaving, nil
}

// worstCaseMeta is this configuration's metadata at its largest: every flag
// set and a Raft address as long as a resolved address can get.
func (c Config) worstCaseMeta() MemberMeta {
	raftLen := len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535")
	for _, a := range []string{c.BindAddr, c.AdvertiseAddr} {
		if len(a) > raftLen {
			raftLen = len(a)
		}
	}
	raft := make([]byte, raftLen)
	for i := range raft {
		raft[i] = 'x'
	}
	return MemberMeta{
		ID: c.NodeID, APIAddr: c.APIAdvertise, HTTPURL: c.HTTPAdvertise, RaftAddr: string(raft), Sealed: true, ReadReplica: true,
		HasRaftState: true, BootstrapExpect: c.BootstrapExpect, Version: c.Version, Boot: newBoot(), // every Boot id has the same length
	}
}
