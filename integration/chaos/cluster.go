package chaos

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "coffer/api/cofferpb"
)

// Driver runs the nodes of a cluster (three voters unless told
// otherwise, and optionally read replicas) and injects faults into them.
// Node ids are the ids the nodes report in Status. Every method returns
// once the action is done (a killed node is gone, a started node's process
// runs); none waits for the cluster to react. The methods that take an id
// take a read replica's as they take a voter's.
type Driver interface {
	// Name names the driver in figures ("in-process", "docker").
	Name() string
	// Nodes returns the voters' ids, in a fixed order.
	Nodes() []string
	// Replicas returns the read replicas' ids (non-voters that serve
	// stale reads and never vote), in a fixed order; none by default.
	Replicas() []string
	// Endpoint returns a node's API address as this process reaches it;
	// it stays the same across restarts.
	Endpoint(id string) string
	// Kill stops a node without any grace (a crash).
	Kill(ctx context.Context, id string) error
	// Stop stops a node gracefully (a leader hands leadership over).
	Stop(ctx context.Context, id string) error
	// Start starts a killed or stopped node with its data; it comes back
	// sealed.
	Start(ctx context.Context, id string) error
	// Restart stops a node gracefully and starts it again.
	Restart(ctx context.Context, id string) error
	// Partition cuts a node off from its peers; Heal reconnects it.
	Partition(ctx context.Context, id string) error
	Heal(ctx context.Context, id string) error
	// Pause freezes a node; Resume lets it run on.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	// Hold is how long a pause or a partition lasts: longer than the
	// nodes' election timeout, so that the others elect a new leader.
	Hold() time.Duration
	// ClientTLS is the TLS configuration of a client of the nodes, with a
	// client certificate that may initialize the cluster; nil when the
	// nodes speak plaintext.
	ClientTLS() *tls.Config
}

// Cluster is an initialized, unsealed cluster run by a Driver, with the
// key shares and the root token, and a connection to every node for
// status and unseal calls.
type Cluster struct {
	D      Driver
	Shares [][]byte
	Token  string

	logf  func(format string, args ...any)
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewCluster connects to d's nodes and read replicas (over TLS when
// d.ClientTLS is set), waits for a leader, initializes the cluster (5
// shares, threshold 3) and unseals every node, the replicas last (they
// learn the seal configuration through Raft). logf receives progress
// lines.
func NewCluster(ctx context.Context, d Driver, logf func(format string, args ...any)) (*Cluster, error) {
	c := &Cluster{D: d, logf: logf, conns: map[string]*grpc.ClientConn{}}
	creds := insecure.NewCredentials()
	if cfg := d.ClientTLS(); cfg != nil {
		creds = credentials.NewTLS(cfg)
	}
	for _, id := range c.all() {
		conn, err := grpc.NewClient(d.Endpoint(id),
			grpc.WithTransportCredentials(creds),
			// Reconnect quickly to a node that comes back.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
				MinConnectTimeout: time.Second,
			}))
		if err != nil {
			c.Close()
			return nil, err
		}
		c.conns[id] = conn
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	var res *pb.InitResponse
	err = poll(ctx, "init", func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		res, err = c.sys(leader).Init(cctx, &pb.InitRequest{SecretShares: 5, SecretThreshold: 3})
		return err
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	c.Shares, c.Token = res.Keys, res.RootToken
	for _, id := range c.all() {
		if err := c.Unseal(ctx, id); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connections (the driver's nodes stay).
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

// Endpoints returns every voter's API address.
func (c *Cluster) Endpoints() []string { return c.endpoints(c.D.Nodes()) }

// ReplicaEndpoints returns every read replica's API address.
func (c *Cluster) ReplicaEndpoints() []string { return c.endpoints(c.D.Replicas()) }

func (c *Cluster) endpoints(ids []string) []string {
	var out []string
	for _, id := range ids {
		out = append(out, c.D.Endpoint(id))
	}
	return out
}

// all returns the voters' ids, then the read replicas'.
func (c *Cluster) all() []string {
	return append(append([]string(nil), c.D.Nodes()...), c.D.Replicas()...)
}

func (c *Cluster) conn(id string) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[id]
}

func (c *Cluster) sys(id string) pb.SysClient { return pb.NewSysClient(c.conn(id)) }

// authed adds the root token to ctx.
func (c *Cluster) authed(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.Token)
}

// Status asks node id for its status, waiting at most a second.
func (c *Cluster) Status(ctx context.Context, id string) (*pb.StatusResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return c.sys(id).Status(cctx, &pb.StatusRequest{})
}

// WantSealed waits until node id answers, and fails when it answers
// unsealed: a node started again must come back sealed.
func (c *Cluster) WantSealed(ctx context.Context, id string) error {
	var st *pb.StatusResponse
	err := poll(ctx, id+" to answer", func() error {
		var err error
		st, err = c.Status(ctx, id)
		return err
	})
	if err != nil {
		return err
	}
	if !st.GetSeal().GetSealed() {
		return fmt.Errorf("chaos: %s came back unsealed: a node that starts again must be sealed", id)
	}
	return nil
}

// Unseal waits until node id answers and unseals it with three shares.
func (c *Cluster) Unseal(ctx context.Context, id string) error {
	return poll(ctx, "unseal "+id, func() error {
		st, err := c.Status(ctx, id)
		if err != nil {
			return err
		}
		if !st.GetSeal().GetSealed() {
			return nil
		}
		// Shares from a different offset for each node, as operators
		// would hold them.
		off := int(st.GetSeal().GetProgress())
		for i := off; i < 3; i++ {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			s, err := c.sys(id).Unseal(cctx, &pb.UnsealRequest{Key: c.Shares[(c.index(id)+i)%len(c.Shares)]})
			cancel()
			if err != nil {
				return err
			}
			if !s.Sealed {
				return nil
			}
		}
		return fmt.Errorf("%s still sealed after 3 shares", id)
	})
}

func (c *Cluster) index(id string) int {
	for i, n := range c.all() {
		if n == id {
			return i
		}
	}
	return 0
}

// Leader waits until the nodes that answer agree on a leader that
// answers as leader, and returns its id.
func (c *Cluster) Leader(ctx context.Context) (string, error) {
	var leader string
	err := poll(ctx, "a leader", func() error {
		var err error
		leader, err = c.agreedLeader(ctx)
		return err
	})
	return leader, err
}

// agreedLeader returns the leader every answering node names.
func (c *Cluster) agreedLeader(ctx context.Context) (string, error) {
	leader, answered := "", 0
	var states []string
	for _, id := range c.D.Nodes() {
		st, err := c.Status(ctx, id)
		if err != nil {
			continue
		}
		answered++
		states = append(states, fmt.Sprintf("%s: %s, leader %q", id, st.RaftState, st.LeaderId))
		if st.LeaderId == "" || (leader != "" && st.LeaderId != leader) {
			return "", fmt.Errorf("no agreed leader: %v", states)
		}
		leader = st.LeaderId
	}
	if answered == 0 {
		return "", errors.New("no node answers")
	}
	st, err := c.Status(ctx, leader)
	if err != nil || st.RaftState != "leader" {
		return "", fmt.Errorf("%s is named leader but answers %v (%v)", leader, st.GetRaftState(), err)
	}
	return leader, nil
}

// Followers returns the nodes other than leader.
func (c *Cluster) Followers(leader string) []string {
	var out []string
	for _, id := range c.D.Nodes() {
		if id != leader {
			out = append(out, id)
		}
	}
	return out
}

// WaitApplied waits until every node, read replicas included, has
// applied index.
func (c *Cluster) WaitApplied(ctx context.Context, index uint64) error {
	for _, id := range c.all() {
		err := poll(ctx, id+" applied index", func() error {
			st, err := c.Status(ctx, id)
			if err != nil {
				return err
			}
			if st.AppliedIndex < index {
				return fmt.Errorf("%s at %d, want %d", id, st.AppliedIndex, index)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// WaitCaughtUp waits until node id has applied every entry the leader
// had applied when the wait began.
func (c *Cluster) WaitCaughtUp(ctx context.Context, id string) error {
	var target uint64
	err := poll(ctx, "the leader's applied index", func() error {
		leader, err := c.agreedLeader(ctx)
		if err != nil {
			return err
		}
		st, err := c.Status(ctx, leader)
		if err != nil {
			return err
		}
		target = st.AppliedIndex
		return nil
	})
	if err != nil {
		return err
	}
	return poll(ctx, id+" caught up", func() error {
		st, err := c.Status(ctx, id)
		if err != nil {
			return err
		}
		if st.AppliedIndex < target {
			return fmt.Errorf("%s at %d, want %d", id, st.AppliedIndex, target)
		}
		return nil
	})
}

// maxHealthyLag is the replication lag (in Raft entries) under which a
// peer counts as caught up.
const maxHealthyLag = 256

// WaitHealthy waits until every node answers unsealed, all agree on one
// leader, and the leader lists every node as a reachable, caught-up peer:
// a voter, or a non-voter for a read replica.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	replica := map[string]bool{}
	for _, id := range c.D.Replicas() {
		replica[id] = true
	}
	return poll(ctx, "a healthy cluster", func() error {
		for _, id := range c.all() {
			st, err := c.Status(ctx, id)
			if err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
			if st.GetSeal().GetSealed() {
				return fmt.Errorf("%s is sealed", id)
			}
		}
		leader, err := c.agreedLeader(ctx)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		peers, err := pb.NewOperatorClient(c.conn(leader)).ListPeers(c.authed(cctx), &pb.ListPeersRequest{})
		if err != nil {
			return fmt.Errorf("peers of %s: %w", leader, err)
		}
		var ids []string
		for _, p := range peers.Peers {
			if p.Voter == replica[p.Id] || !p.Reachable || p.Lag > maxHealthyLag {
				return fmt.Errorf("peer %s: voter %v (read replica %v), reachable %v, lag %d", p.Id, p.Voter, replica[p.Id], p.Reachable, p.Lag)
			}
			ids = append(ids, p.Id)
		}
		sort.Strings(ids)
		want := c.all()
		sort.Strings(want)
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			return fmt.Errorf("raft peers %v, want %v", ids, want)
		}
		return nil
	})
}

// poll calls cond every 20ms until it returns nil or ctx ends; then it
// fails with the last error.
func poll(ctx context.Context, what string, cond func() error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}
