package replication

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

const (
	// joinBackoffMin and joinBackoffMax bound the wait between two rounds of
	// trying the seeds.
	joinBackoffMin = 200 * time.Millisecond
	joinBackoffMax = 15 * time.Second
	// metaUpdateTimeout bounds how long a metadata broadcast is waited for.
	metaUpdateTimeout = time.Second
	// memberReapAfter is how long a dead or departed member stays in the
	// table; after that it is "unknown".
	memberReapAfter = 24 * time.Hour
)

// gossip runs memberlist for a Node and keeps the table of members with the
// status and time of their last transition. memberlist calls its delegate
// methods, sometimes under its own locks: they only update the table and
// signal, never block and never call back into memberlist. They take g.mu
// under memberlist's lock, so nothing calls memberlist while holding g.mu.
type gossip struct {
	cfg    GossipConfig
	logger hclog.Logger
	ml     *memberlist.Memberlist
	// addr is this node's gossip ip:port, read once at start: memberlist's
	// LocalNode returns a pointer that UpdateNode later writes without the
	// caller holding any lock.
	addr string

	mu      sync.Mutex
	local   MemberMeta
	table   map[string]*tableEntry
	leaving bool // gossiping the intent to leave
	left    bool // Leave was called

	// updateMu serialises everything that makes memberlist broadcast about
	// this node (UpdateNode, Leave) with its shutdown.
	updateMu sync.Mutex
	closed   bool // memberlist shut down; guarded by updateMu

	changed   chan struct{} // coalesced "the table changed", for the node
	joinWake  chan struct{} // coalesced "the table changed", for the join loop
	metaDirty chan struct{} // coalesced "local metadata changed"
	done      chan struct{}
	wg        sync.WaitGroup
	stopOnce  sync.Once

	joinFailures atomic.Uint64 // rounds in which no seed answered (tests)
}

var (
	_ memberlist.Delegate         = (*gossip)(nil)
	_ memberlist.EventDelegate    = (*gossip)(nil)
	_ memberlist.ConflictDelegate = (*gossip)(nil)
)

// tableEntry is one member and whether it announced that it is leaving.
type tableEntry struct {
	Member
	leaving bool
}

// newGossip starts memberlist with local as this node's metadata. It does not
// join anyone yet: start does.
func newGossip(cfg GossipConfig, local MemberMeta, logger hclog.Logger) (*gossip, error) {
	g := &gossip{
		cfg:       cfg,
		logger:    logger,
		local:     local,
		table:     make(map[string]*tableEntry),
		changed:   make(chan struct{}, 1),
		joinWake:  make(chan struct{}, 1),
		metaDirty: make(chan struct{}, 1),
		done:      make(chan struct{}),
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = local.ID
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("replication: gossip address %q: %w", cfg.BindAddr, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		ip, aport, err := resolveAdvertise(cfg.AdvertiseAddr, port)
		if err != nil {
			return nil, err
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ip, aport
	}
	if cfg.ClusterKey != nil {
		kr, err := memberlist.NewKeyring(nil, cfg.ClusterKey)
		if err != nil {
			return nil, fmt.Errorf("replication: cluster key: %w", err)
		}
		mc.Keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	if cfg.GossipInterval > 0 {
		mc.GossipInterval = cfg.GossipInterval
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.PushPullInterval > 0 {
		mc.PushPullInterval = cfg.PushPullInterval
	}
	// A node that restarts with the same id on another address (a new
	// container IP, a new port in tests) may take over its entry as soon as
	// the old one is known dead; node ids are unique by contract.
	mc.DeadNodeReclaimTime = time.Nanosecond
	mc.Delegate = g
	mc.Events = g
	mc.Conflict = g
	mc.Logger = logger.Named("memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})

	ml, err := memberlist.Create(mc)
	if err != nil {
		// memberlist reports a bind failure as text only: find out
		// whether the address is taken, so that callers can tell (and
		// say "pick another -gossip-addr") by errors.Is.
		if berr := bindError(cfg.BindAddr); berr != nil {
			return nil, fmt.Errorf("replication: start gossip on %s: %w (pick another -gossip-addr)", cfg.BindAddr, berr)
		}
		return nil, fmt.Errorf("replication: start gossip on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	g.addr = ml.LocalNode().Address()
	return g, nil
}

// bindError returns the error of listening on addr (TCP, then UDP, as
// memberlist does), or nil when both can be bound.
func bindError(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	u.Close()
	return nil
}

// resolveAdvertise turns "host" or "host:port" into the IP and port memberlist
// advertises; a missing port means the bind port.
func resolveAdvertise(addr string, bindPort int) (string, int, error) {
	host, port := addr, bindPort
	if h, p, err := splitHostPort(addr); err == nil {
		host, port = h, p
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil {
		return ip.String(), port, nil
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return "", 0, fmt.Errorf("replication: gossip advertise address %q does not resolve: %v", addr, err)
	}
	for _, ip := range ips { // prefer IPv4, like most container networks
		if ip.To4() != nil {
			return ip.String(), port, nil
		}
	}
	return ips[0].String(), port, nil
}

// start launches the background loops: metadata broadcasts and, when there are
// seeds, joining them.
func (g *gossip) start() {
	g.wg.Add(1)
	go g.metaLoop()
	if len(g.cfg.Join) > 0 {
		g.wg.Add(1)
		go g.joinLoop()
	}
}

// joinLoop tries the seeds, with backoff, whenever this node knows no other
// live member: at start, and again if everyone else has gone (a long
// partition, a full restart). Joining only ourselves does not count.
func (g *gossip) joinLoop() {
	defer g.wg.Done()
	backoff := joinBackoffMin
	joined := false
	for {
		if g.hasLeft() {
			return
		}
		if g.ml.NumMembers() > 1 {
			select {
			case <-g.done:
				return
			case <-g.joinWake:
				continue
			}
		}
		n, err := g.ml.Join(g.cfg.Join)
		if err == nil && g.ml.NumMembers() > 1 {
			if !joined {
				g.logger.Info("joined the gossip cluster", "seeds", g.cfg.Join, "answered", n)
			} else {
				g.logger.Info("rejoined the gossip cluster after losing every other member", "seeds", g.cfg.Join, "answered", n)
			}
			joined = true
			backoff = joinBackoffMin
			continue
		}
		if err == nil {
			err = errors.New("no seed other than this node answered")
		}
		g.joinFailures.Add(1)
		wait := backoff/2 + rand.N(backoff/2+1)
		g.logger.Debug("gossip join failed, retrying", "seeds", g.cfg.Join, "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-g.done:
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// metaLoop broadcasts this node's metadata after it changed.
func (g *gossip) metaLoop() {
	defer g.wg.Done()
	for {
		select {
		case <-g.done:
			return
		case <-g.metaDirty:
			g.updateMu.Lock()
			if !g.closed && !g.hasLeft() {
				if err := g.ml.UpdateNode(metaUpdateTimeout); err != nil {
					// The update is queued before the wait; a timeout only
					// means it has not reached every member yet.
					g.logger.Debug("metadata broadcast still in flight", "error", err)
				}
			}
			g.updateMu.Unlock()
		}
	}
}

// setLocal changes this node's metadata and schedules a broadcast when it
// differs.
func (g *gossip) setLocal(f func(*MemberMeta)) {
	g.mu.Lock()
	old := g.local
	f(&g.local)
	changed := old != g.local
	g.mu.Unlock()
	if changed {
		signal(g.metaDirty)
	}
}

func (g *gossip) hasLeft() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.left
}

// leave announces that this node leaves: first its intent, in its metadata,
// so that the others can tell a departure from a failure, then memberlist's
// leave message. It waits up to timeout in all for the broadcasts to go out.
// Gossip keeps running until stop.
func (g *gossip) leave(timeout time.Duration) error {
	g.updateMu.Lock()
	defer g.updateMu.Unlock()
	if g.closed || g.hasLeft() {
		return nil
	}
	deadline := time.Now().Add(timeout)
	g.mu.Lock()
	g.leaving = true
	g.mu.Unlock()
	if err := g.ml.UpdateNode(timeout / 2); err != nil {
		g.logger.Debug("broadcasting the intent to leave", "error", err)
	}
	g.mu.Lock()
	g.left = true
	g.mu.Unlock()
	signal(g.joinWake)
	if err := g.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		g.logger.Warn("leaving gossip", "error", err)
		return fmt.Errorf("replication: leave gossip: %w", err)
	}
	g.logger.Info("left the gossip cluster")
	return nil
}

// stop shuts memberlist down (without a leave message unless leave was called
// before) and waits for the loops. It is idempotent.
func (g *gossip) stop() error {
	var err error
	g.stopOnce.Do(func() {
		close(g.done)
		g.updateMu.Lock()
		g.closed = true
		err = g.ml.Shutdown()
		g.updateMu.Unlock()
		g.wg.Wait()
	})
	return err
}

// members returns the table sorted by id, dropping members gone for longer
// than memberReapAfter.
func (g *gossip) members() []Member {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Member, 0, len(g.table)+1)
	for id, m := range g.table {
		if (m.Status == StatusDead || m.Status == StatusLeft) && now.Sub(m.Since) > memberReapAfter {
			delete(g.table, id)
			continue
		}
		if id == g.local.ID {
			continue
		}
		out = append(out, m.Member)
	}
	self := Member{MemberMeta: g.local, GossipAddr: g.addr, Status: StatusAlive}
	if m, ok := g.table[g.local.ID]; ok {
		self.Since = m.Since
	}
	if g.left {
		self.Status = StatusLeft
	}
	out = append(out, self)
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// observe records what memberlist reported about n: joined (alive), updated
// (alive, with new metadata or address) or gone, which is "left" when the
// member announced its departure in its metadata and "dead" otherwise.
func (g *gossip) observe(n *memberlist.Node, gone bool) {
	meta, leaving, err := decodeMeta(n.Meta)
	if err == nil && meta.ID != n.Name {
		err = fmt.Errorf("metadata names node %q", meta.ID)
	}
	if err != nil {
		g.logger.Warn("ignoring a gossip member that is not a coffer node", "name", n.Name, "address", n.Address(), "error", err)
		return
	}
	g.mu.Lock()
	m, ok := g.table[n.Name]
	if !ok {
		m = &tableEntry{}
		g.table[n.Name] = m
	}
	old := m.Status
	status := StatusAlive
	if gone {
		status = StatusDead
		if leaving || m.leaving {
			status = StatusLeft
		}
	}
	m.MemberMeta, m.leaving = meta, leaving
	m.GossipAddr = n.Address()
	if status != old {
		m.Status, m.Since = status, time.Now()
	}
	self := n.Name == g.local.ID
	g.mu.Unlock()

	switch {
	case self:
	case status != old:
		g.logger.Info("member "+status, "id", n.Name, "gossip_address", n.Address(), "raft_address", meta.RaftAddr)
	default:
		g.logger.Debug("member updated", "id", n.Name, "sealed", meta.Sealed, "has_raft_state", meta.HasRaftState, "leaving", leaving)
	}
	signal(g.changed)
	signal(g.joinWake)
}

// NodeMeta implements memberlist.Delegate.
func (g *gossip) NodeMeta(limit int) []byte {
	g.mu.Lock()
	b := encodeMeta(g.local, g.leaving)
	g.mu.Unlock()
	if len(b) > limit { // New checked the worst case; never reached
		g.logger.Error("node metadata over memberlist's limit: not gossiped", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

// NotifyMsg implements memberlist.Delegate; coffer sends no user messages.
func (g *gossip) NotifyMsg([]byte) {}

// GetBroadcasts implements memberlist.Delegate.
func (g *gossip) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState implements memberlist.Delegate.
func (g *gossip) LocalState(join bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate.
func (g *gossip) MergeRemoteState(buf []byte, join bool) {}

// NotifyJoin implements memberlist.EventDelegate.
func (g *gossip) NotifyJoin(n *memberlist.Node) { g.observe(n, false) }

// NotifyUpdate implements memberlist.EventDelegate.
func (g *gossip) NotifyUpdate(n *memberlist.Node) { g.observe(n, false) }

// NotifyLeave implements memberlist.EventDelegate, for a departure and a
// failure alike (memberlist does not fill in Node.State).
func (g *gossip) NotifyLeave(n *memberlist.Node) { g.observe(n, true) }

// NotifyConflict implements memberlist.ConflictDelegate: two live nodes claim
// the same id.
func (g *gossip) NotifyConflict(existing, other *memberlist.Node) {
	g.logger.Error("two nodes use the same node id: give each node its own -node-id",
		"id", existing.Name, "address", existing.Address(), "other_address", other.Address())
}

// signal does a non-blocking send on a coalescing channel.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
