package api

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	pb "coffer/api/cofferpb"
)

// endpoint is one API address with its connection and what the client
// knows about it.
type endpoint struct {
	addr   string // as configured, scheme included
	host   string // dialled: host:port (or unix:///path)
	sec    *security
	cc     *grpc.ClientConn
	synced bool // learned by SyncEndpoints, not configured

	mu        sync.Mutex
	down      bool
	downSince time.Time
	retryAt   time.Time     // when the prober tries it again
	backoff   time.Duration // current skip period
	nodeID    string        // learned from its answers
	applied   uint64        // highest applied index seen in its answers
	lastErr   string
	// lastUntil: the endpoint answered Unavailable (it lags behind a
	// read's min_index, has no leader, exceeded a stale bound…); until
	// then it is tried after the others.
	lastUntil time.Time
}

// lastFor is how long an endpoint that answered Unavailable is tried after
// the others.
const lastFor = 2 * time.Second

// leaderInfo is what the client knows of the leader: its node id and, when
// it maps to one, its endpoint.
type leaderInfo struct {
	id string
	ep *endpoint
}

// EndpointState describes one endpoint as the client sees it.
type EndpointState struct {
	// Endpoint is the endpoint as configured (with its scheme, if any).
	Endpoint string
	// Address is the endpoint's host:port (or unix:///path), as nodes
	// name each other's API addresses.
	Address string
	// Up is false while the endpoint is skipped after a failure.
	Up bool
	// DownSince is when it went down (zero while up).
	DownSince time.Time
	// NextProbe is when the prober tries it again (zero while up).
	NextProbe time.Time
	// LastError is the failure that marked it down.
	LastError string
	// NodeID is the node behind it, once one of its answers named it.
	NodeID string
	// AppliedIndex is the highest applied index its answers reported.
	AppliedIndex uint64
	// Leader is true for the endpoint writes go to first.
	Leader bool
	// Synced is true for an endpoint learned by SyncEndpoints.
	Synced bool
}

// EndpointStates returns the state of every endpoint, in list order.
func (c *Client) EndpointStates() []EndpointState {
	leader := c.leaderEndpoint()
	var out []EndpointState
	for _, ep := range c.endpoints() {
		ep.mu.Lock()
		st := EndpointState{
			Endpoint: ep.addr, Address: ep.host, Up: !ep.down, NodeID: ep.nodeID, AppliedIndex: ep.applied,
			Leader: ep == leader, Synced: ep.synced,
		}
		if ep.down {
			st.DownSince, st.NextProbe, st.LastError = ep.downSince, ep.retryAt, ep.lastErr
		}
		ep.mu.Unlock()
		out = append(out, st)
	}
	return out
}

func (c *Client) endpoints() []*endpoint { return *c.eps.Load() }

func (ep *endpoint) isDown() bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.down
}

// learn records what an answer from ep said about its node.
func (ep *endpoint) learn(nodeID string, applied uint64) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if nodeID != "" {
		ep.nodeID = nodeID
	}
	ep.applied = max(ep.applied, applied)
}

// answeredUnavailable puts ep after the others for lastFor.
func (ep *endpoint) answeredUnavailable() {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.lastUntil = time.Now().Add(lastFor)
}

// policy says how a call picks endpoints and whether it may fall back.
type policy struct {
	// write sends the call to the leader first.
	write bool
	// staleFallback retries a failed pass once as a stale read.
	staleFallback bool
	// hedge sends an attempt also to the next endpoint once it has been
	// outstanding for HedgeAfter (reads only: hedged.go).
	hedge bool
}

// candidates returns the endpoints one pass of a call tries, in order:
// the healthy ones round robin, those that answered Unavailable lately
// last, and for a write the leader first; every endpoint when none is
// healthy. allDown reports the latter.
func (c *Client) candidates(p policy) (out []*endpoint, allDown bool) {
	all := c.endpoints()
	for _, ep := range all {
		if !ep.isDown() {
			out = append(out, ep)
		}
	}
	if len(out) == 0 {
		out, allDown = append(out, all...), true
	}
	if n := len(out); n > 1 {
		start := int((c.rr.Add(1) - 1) % uint64(n))
		out = append(out[start:n:n], out[:start]...)
	}
	now := time.Now()
	first, last := out[:0:0], []*endpoint(nil)
	for _, ep := range out {
		ep.mu.Lock()
		later := now.Before(ep.lastUntil)
		ep.mu.Unlock()
		if later {
			last = append(last, ep)
		} else {
			first = append(first, ep)
		}
	}
	out = append(first, last...)
	if p.write {
		if l := c.leaderEndpoint(); l != nil {
			for i, ep := range out {
				if ep == l {
					copy(out[1:i+1], out[:i])
					out[0] = l
					break
				}
			}
		}
	}
	return out, allDown
}

// unreachable reports whether err means the endpoint could not be reached
// (a connection-level failure), not that its node answered. The message
// cannot tell: a follower passes on the connection error of its own call
// to the leader unchanged. The connection's state can: after a node
// answered, the connection to it is still ready.
func unreachable(err error, ep *endpoint) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return ep.cc.GetState() != connectivity.Ready
	}
	return false
}

// endpointDown reports whether err takes ep out of rotation: it could not
// be reached, or it is sealed.
func endpointDown(err error, ep *endpoint) bool { return unreachable(err, ep) || IsSealed(err) }

// ready waits, up to DialTimeout, until ep's connection is established or
// has failed. An endpoint that is still connecting then is reported as a
// connection error (so that a black-holed address costs DialTimeout, not
// the whole call).
func (c *Client) ready(ctx context.Context, ep *endpoint) error {
	s := ep.cc.GetState()
	if s == connectivity.Ready {
		return nil
	}
	if s == connectivity.Idle {
		ep.cc.Connect()
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	for {
		s = ep.cc.GetState()
		switch s {
		case connectivity.Ready, connectivity.TransientFailure, connectivity.Shutdown:
			// A failed connection fails the call at once, with gRPC's
			// own message.
			return nil
		}
		if !ep.cc.WaitForStateChange(wctx, s) {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return StatusError(codes.Unavailable, pb.ErrorReason_ENDPOINT_UNREACHABLE, fmt.Sprintf("connection error: %s did not connect within %s", ep.addr, c.cfg.DialTimeout))
		}
	}
}

// unreachableFor is the time since an endpoint was last found down: the
// youngest down period among the endpoints that are down (0 when none is).
func (c *Client) unreachableFor() time.Duration {
	now := time.Now()
	youngest := time.Duration(-1)
	for _, ep := range c.endpoints() {
		ep.mu.Lock()
		down, since := ep.down, ep.downSince
		ep.mu.Unlock()
		if down && (youngest < 0 || now.Sub(since) < youngest) {
			youngest = now.Sub(since)
		}
	}
	return max(youngest, 0)
}

// markDown takes ep out of rotation for its back-off period and makes sure
// the prober will try it again. The back-off doubles only when a probe
// fails: calls that try a down endpoint (because every endpoint is down)
// do not push its next probe further away.
func (c *Client) markDown(ep *endpoint, err error) { c.setDown(ep, err, false) }

// setDown is markDown; probed is true when the prober's probe failed.
func (c *Client) setDown(ep *endpoint, err error, probed bool) {
	now := time.Now()
	ep.mu.Lock()
	switch {
	case !ep.down:
		ep.down, ep.downSince, ep.backoff = true, now, c.cfg.DownBackoff
		ep.retryAt = now.Add(ep.backoff)
	case probed:
		ep.backoff = min(2*ep.backoff, c.cfg.MaxDownBackoff)
		ep.retryAt = now.Add(ep.backoff)
	}
	if err != nil {
		ep.lastErr = status.Convert(err).Message()
	}
	ep.mu.Unlock()
	if l := c.leader.Load(); l != nil && l.ep == ep {
		c.forgetLeader(ep)
	}
	c.kickProber()
}

// markUp puts ep back into rotation.
func (c *Client) markUp(ep *endpoint) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.down, ep.downSince, ep.retryAt, ep.backoff, ep.lastErr = false, time.Time{}, time.Time{}, 0, ""
}

// leaderEndpoint returns the leader's endpoint when known and up.
func (c *Client) leaderEndpoint() *endpoint {
	l := c.leader.Load()
	if l == nil || l.ep == nil || l.ep.isDown() {
		return nil
	}
	return l.ep
}

// forgetLeader drops the leader if it is still ep, and asks the prober to
// find the new one.
func (c *Client) forgetLeader(ep *endpoint) {
	l := c.leader.Load()
	if l != nil && l.ep == ep && c.leader.CompareAndSwap(l, nil) {
		c.wantLeader()
	}
}

// noteLeader records the leader an answer named: by API address when the
// answer carries one (Sys.Status), else by node id (ReadMeta).
func (c *Client) noteLeader(id, addr string) {
	if id == "" && addr == "" {
		return
	}
	cur := c.leader.Load()
	if cur != nil && cur.id == id && cur.ep != nil && (addr == "" || cur.ep.host == addr) {
		return
	}
	var found *endpoint
	for _, ep := range c.endpoints() {
		ep.mu.Lock()
		match := (addr != "" && ep.host == addr) || (id != "" && ep.nodeID == id)
		ep.mu.Unlock()
		if match {
			found = ep
			break
		}
	}
	c.leader.Store(&leaderInfo{id: id, ep: found})
	if found == nil {
		// The leader is not among the endpoints we know by id yet: the
		// prober asks every endpoint for its node id.
		c.wantLeader()
	}
}

// wantLeader asks the prober to find the leader, at most twice a second.
func (c *Client) wantLeader() {
	c.mu.Lock()
	if c.closed || time.Since(c.lastLeaderAsk) < 500*time.Millisecond {
		c.mu.Unlock()
		return
	}
	c.lastLeaderAsk = time.Now()
	c.needLeader = true
	c.mu.Unlock()
	c.kickProber()
}

// kickProber starts the prober, or wakes it when it runs.
func (c *Client) kickProber() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if !c.proberRunning {
		c.proberRunning = true
		c.wg.Add(1)
		go c.probeLoop()
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// probeLoop runs while there is work: endpoints that are down (each
// probed when its back-off ends) or a leader to find. It exits when idle
// and when the client closes.
func (c *Client) probeLoop() {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		var due []*endpoint
		var next time.Time
		for _, ep := range c.endpoints() {
			ep.mu.Lock()
			if ep.down {
				if !ep.retryAt.After(now) {
					due = append(due, ep)
				} else if next.IsZero() || ep.retryAt.Before(next) {
					next = ep.retryAt
				}
			}
			ep.mu.Unlock()
		}
		for _, ep := range due {
			if c.bg.Err() != nil {
				return
			}
			c.probe(ep)
		}
		c.mu.Lock()
		findLeader := c.needLeader
		c.needLeader = false
		c.mu.Unlock()
		if findLeader {
			c.findLeader()
		}
		if len(due) > 0 || findLeader {
			continue // probes took time: look again
		}

		c.mu.Lock()
		if next.IsZero() && !c.needLeader && !c.anyDown() {
			c.proberRunning = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-c.bg.Done():
			return
		case <-c.wake:
		case <-timer.C:
		}
	}
}

func (c *Client) anyDown() bool {
	for _, ep := range c.endpoints() {
		if ep.isDown() {
			return true
		}
	}
	return false
}

// status asks ep's node for its status, waiting up to DialTimeout for a
// connection.
func (c *Client) status(ep *endpoint) (*pb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(c.bg, c.cfg.DialTimeout+c.cfg.AttemptTimeout/5)
	defer cancel()
	if ep.cc.GetState() == connectivity.Idle {
		ep.cc.Connect()
	}
	st, err := pb.NewSysClient(ep.cc).Status(ctx, &pb.StatusRequest{}, grpc.WaitForReady(true))
	if err == nil {
		ep.learn(st.NodeId, st.AppliedIndex)
	}
	return st, c.explain(ctx, ep, err)
}

// probe asks a down endpoint for its status: it comes back up once it
// answers and is not sealed; otherwise its back-off doubles.
func (c *Client) probe(ep *endpoint) {
	st, err := c.status(ep)
	switch {
	case c.bg.Err() != nil:
	case err != nil && status.Code(err) != codes.Unimplemented:
		c.setDown(ep, err, true)
	case err == nil && st.GetSeal().GetSealed() && st.GetSeal().GetInitialized():
		c.setDown(ep, StatusError(codes.Unavailable, pb.ErrorReason_SEALED, "node is sealed: unseal it with `coffer operator unseal`"), true)
	default:
		c.markUp(ep)
		if err == nil {
			c.noteLeader(st.LeaderId, st.LeaderAddress)
		}
	}
}

// findLeader asks healthy endpoints for their status until one names a
// leader the client can map to an endpoint.
func (c *Client) findLeader() {
	for _, ep := range c.endpoints() {
		if ep.isDown() || c.bg.Err() != nil {
			continue
		}
		st, err := c.status(ep)
		if err != nil {
			if unreachable(err, ep) {
				c.markDown(ep, err)
			}
			continue
		}
		if st.LeaderId == "" && st.LeaderAddress == "" {
			continue
		}
		c.noteLeader(st.LeaderId, st.LeaderAddress)
		if c.leaderEndpoint() != nil {
			return
		}
	}
}

// syncLoop adds the API addresses of live members to the endpoint list
// every SyncEndpoints.
func (c *Client) syncLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.SyncEndpoints)
	defer t.Stop()
	for {
		c.syncEndpoints()
		select {
		case <-c.bg.Done():
			return
		case <-t.C:
		}
	}
}

// syncEndpoints asks the cluster for its members once.
func (c *Client) syncEndpoints() {
	ctx, cancel := context.WithTimeout(c.bg, c.cfg.AttemptTimeout)
	defer cancel()
	var resp *pb.MembersResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewOperatorClient(cc).Members(ctx, &pb.MembersRequest{})
		return err
	})
	if err != nil {
		return
	}
	for _, m := range resp.Members {
		if m.ApiAddress == "" || m.Status != "alive" {
			continue
		}
		c.addEndpoint(m.ApiAddress, m.Id)
	}
}

// addEndpoint adds a learned endpoint unless the list has it already. It
// takes the scheme of the first configured endpoint (see
// Config.SyncEndpoints).
func (c *Client) addEndpoint(addr, nodeID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for _, ep := range c.endpoints() {
		if ep.host == addr {
			return
		}
	}
	raw := addr
	if first := c.cfg.Endpoints[0]; strings.HasPrefix(first, SchemePlaintext) || strings.HasPrefix(first, SchemeTLS) {
		scheme, _, _ := strings.Cut(first, "://")
		raw = scheme + "://" + addr
	}
	ep, err := c.dial(raw, true)
	if err != nil {
		return
	}
	ep.nodeID = nodeID
	list := append(append([]*endpoint(nil), c.endpoints()...), ep)
	c.eps.Store(&list)
}
