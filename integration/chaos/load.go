package chaos

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// LoadConfig shapes a workload. The zero value of each field means its
// default.
type LoadConfig struct {
	// Endpoints and Token are the cluster's API addresses and a token that
	// may read and write under Prefix.
	Endpoints []string
	Token     string
	// TLS is the clients' TLS configuration (nil: plaintext).
	TLS *tls.Config
	// Prefix is the path under which the keys live ("secret/chaos/x");
	// the keys are Prefix/k0 … Prefix/k<Keys-1>. Default 4 keys.
	Prefix string
	Keys   int
	// Writers and Readers are the number of workers of each kind; each
	// has its own api.Client (a client of its own, as separate services
	// would). Defaults 3 and 3.
	Writers, Readers int
	// ReplicaEndpoints, when set, are the API addresses of read replicas:
	// ReplicaReaders more readers (default 2) read through clients that
	// know only them, every read a stale one (Op.Replica marks them).
	ReplicaEndpoints []string
	ReplicaReaders   int
	// Interval is the pause of a worker between two operations (it shapes
	// the load; it synchronises nothing). Default 10ms.
	Interval time.Duration
	// StaleEvery makes every StaleEvery-th read of a reader an explicit
	// stale read; the others use the client's default consistency, but
	// for the linearizable ones. Default 4; negative: never.
	StaleEvery int
	// LinearizableEvery makes every LinearizableEvery-th read of a reader
	// that is not a stale one a linearizable read, through the same client
	// (whose stale fallback is on: it must not apply to them). Default 3;
	// negative: never. 1 with StaleEvery negative: every read.
	LinearizableEvery int
	// OpTimeout bounds one call, the client's retries included. Default
	// 15s: longer than the client's attempt timeout (5s) plus its retry
	// budget, so a call fails only when the client gives up.
	OpTimeout time.Duration
	// MaxOps bounds the operations of one worker, MaxDuration the whole
	// run: the load stops by itself at either. Defaults 100000 and 10m.
	MaxOps      int
	MaxDuration time.Duration
	// Cache, when set, gives the readers' clients a cache (Config.Cache).
	Cache *api.CacheConfig
	// DisableLeaderCheck turns the clients' leader check off
	// (api.Config.DisableLeaderCheck), to measure what it saves.
	DisableLeaderCheck bool
	// DisableHedgedReads turns the clients' hedged reads off
	// (api.Config.DisableHedgedReads), to measure what they save.
	DisableHedgedReads bool
}

func (c LoadConfig) withDefaults() LoadConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Keys, 4)
	def(&c.Writers, 3)
	def(&c.Readers, 3)
	def(&c.StaleEvery, 4)
	def(&c.LinearizableEvery, 3)
	def(&c.MaxOps, 100000)
	if len(c.ReplicaEndpoints) == 0 {
		c.ReplicaReaders = 0
	} else {
		def(&c.ReplicaReaders, 2)
	}
	if c.Interval == 0 {
		c.Interval = 10 * time.Millisecond
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = 15 * time.Second
	}
	if c.MaxDuration == 0 {
		c.MaxDuration = 10 * time.Minute
	}
	if c.Prefix == "" {
		c.Prefix = "secret/chaos"
	}
	return c
}

// MaxVersions is the max_versions the load sets on its keys, so that the
// final check sees every version ever written.
const MaxVersions = 10000 // the server's limit (server.MaxVersionsLimit)

// Load is a running workload: writers put unique values ("w<client>-<seq>")
// to a small key set, readers read them, and every operation goes into
// the History.
type Load struct {
	cfg     LoadConfig
	keys    []string
	history *History
	clients []*api.Client

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// StartLoad creates the keys (max_versions MaxVersions, a first value
// each, recorded as client 0's writes) and starts the workers.
func StartLoad(ctx context.Context, cfg LoadConfig) (*Load, error) {
	cfg = cfg.withDefaults()
	l := &Load{cfg: cfg, history: &History{}, stop: make(chan struct{})}
	for i := range cfg.Keys {
		l.keys = append(l.keys, fmt.Sprintf("%s/k%d", cfg.Prefix, i))
	}
	setup, err := api.New(api.Config{Endpoints: cfg.Endpoints, Token: cfg.Token, TLS: cfg.TLS})
	if err != nil {
		return nil, err
	}
	defer setup.Close()
	for _, key := range l.keys {
		cctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
		_, err := setup.WriteMetadata(cctx, &pb.WriteMetadataRequest{Path: key, MaxVersions: MaxVersions})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("chaos: set max_versions of %s: %w", key, err)
		}
		op := l.put(ctx, setup, 0, key, "init-"+key)
		if !op.OK() {
			return nil, fmt.Errorf("chaos: first write of %s: %s", key, op.Err)
		}
	}
	clientCfg := api.Config{Endpoints: cfg.Endpoints, Token: cfg.Token, TLS: cfg.TLS, DisableLeaderCheck: cfg.DisableLeaderCheck, DisableHedgedReads: cfg.DisableHedgedReads}
	for w := 1; w <= cfg.Writers+cfg.Readers+cfg.ReplicaReaders; w++ {
		cc := clientCfg
		switch {
		case l.replicaReader(w):
			cc.Endpoints = cfg.ReplicaEndpoints
		case w > cfg.Writers:
			cc.Cache = cfg.Cache
		}
		cl, err := api.New(cc)
		if err != nil {
			l.Stop()
			return nil, err
		}
		l.clients = append(l.clients, cl)
		l.wg.Add(1)
		if w <= cfg.Writers {
			go l.writer(w, cl)
		} else {
			go l.reader(w, cl)
		}
	}
	return l, nil
}

// replicaReader reports whether worker client reads from the read
// replicas: the last ReplicaReaders workers do.
func (l *Load) replicaReader(client int) bool {
	return client > l.cfg.Writers+l.cfg.Readers
}

// Keys returns the keys of the load.
func (l *Load) Keys() []string { return l.keys }

// History returns the load's history (still growing until Stop).
func (l *Load) History() *History { return l.history }

// Stop ends the workers, waits for the calls in flight, and closes the
// clients. It is idempotent.
func (l *Load) Stop() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	for _, cl := range l.clients {
		cl.Close()
	}
	l.clients = nil
}

// WaitAcked waits until n writes were acknowledged after t, polling the
// history, until ctx ends.
func (l *Load) WaitAcked(ctx context.Context, n int, t time.Time) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		got := l.history.AckedSince(t)
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: %d of %d writes acknowledged since %s: %w", got, n, t.Format("15:04:05.000"), ctx.Err())
		case <-l.stop:
			return errors.New("chaos: load stopped")
		case <-tick.C:
		}
	}
}

// WaitOps waits until n recorded operations match, polling the history,
// until ctx ends. what names them in the error.
func (l *Load) WaitOps(ctx context.Context, n int, what string, match func(Op) bool) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got := l.history.Count(match)
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: %d of %d %s: %w", got, n, what, ctx.Err())
		case <-l.stop:
			return errors.New("chaos: load stopped")
		case <-tick.C:
		}
	}
}

// loop runs one worker's operations until Stop, MaxOps or MaxDuration.
func (l *Load) loop(do func(seq int)) {
	defer l.wg.Done()
	deadline := time.Now().Add(l.cfg.MaxDuration)
	pace := time.NewTimer(0)
	defer pace.Stop()
	for seq := 1; seq <= l.cfg.MaxOps && time.Now().Before(deadline); seq++ {
		select {
		case <-l.stop:
			return
		case <-pace.C:
		}
		do(seq)
		pace.Reset(l.cfg.Interval)
	}
}

func (l *Load) writer(client int, cl *api.Client) {
	l.loop(func(seq int) {
		key := l.keys[(seq+client)%len(l.keys)]
		l.put(context.Background(), cl, client, key, fmt.Sprintf("w%d-%d", client, seq))
	})
}

func (l *Load) reader(client int, cl *api.Client) {
	l.loop(func(seq int) {
		key := l.keys[(seq+client)%len(l.keys)]
		consistency := l.consistency(seq)
		if l.replicaReader(client) {
			consistency = ConsistencyStale
		}
		l.get(cl, client, key, consistency)
	})
}

// linearizableReads reports whether the readers make linearizable reads:
// not when none are asked for, or every one of them is a stale one.
func (l *Load) linearizableReads() bool {
	c := l.cfg
	return c.Readers > 0 && c.LinearizableEvery > 0 && (c.StaleEvery <= 0 || c.LinearizableEvery%c.StaleEvery != 0)
}

// consistency returns what a reader's seq-th read asks for.
func (l *Load) consistency(seq int) string {
	switch {
	case l.cfg.StaleEvery > 0 && seq%l.cfg.StaleEvery == 0:
		return ConsistencyStale
	case l.cfg.LinearizableEvery > 0 && seq%l.cfg.LinearizableEvery == 0:
		return ConsistencyLinearizable
	}
	return ConsistencyDefault
}

// put writes value to key through cl and records it.
func (l *Load) put(ctx context.Context, cl *api.Client, client int, key, value string) Op {
	op := Op{Client: client, Kind: OpWrite, Key: key, Value: value, Start: time.Now()}
	cctx, cancel := context.WithTimeout(ctx, l.cfg.OpTimeout)
	resp, err := cl.Put(cctx, &pb.PutRequest{Path: key, Data: map[string]string{"v": value}})
	cancel()
	op.End = time.Now()
	if err != nil {
		op.Err = errString(err)
	} else {
		op.Version, op.Index = resp.Version, resp.Index
	}
	l.history.Add(op)
	return op
}

// get reads key through cl at consistency (a Consistency* constant:
// ConsistencyDefault is the client's default) and records it.
func (l *Load) get(cl *api.Client, client int, key, consistency string) {
	req := &pb.GetRequest{Path: key}
	switch consistency {
	case ConsistencyStale:
		req.Read = &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE}
	case ConsistencyLinearizable:
		req.Read = &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}
	}
	op := Op{Client: client, Kind: OpRead, Key: key, Consistency: consistency, Replica: l.replicaReader(client)}
	op.Start = time.Now()
	cctx, cancel := context.WithTimeout(context.Background(), l.cfg.OpTimeout)
	resp, info, err := cl.GetWithInfo(cctx, req)
	cancel()
	op.End = time.Now()
	op.Stale, op.Fallback, op.Cached = info.Stale, info.Fallback, info.Cached
	switch {
	case status.Code(err) == codes.NotFound:
		// The key does not exist (yet): a read of the empty register. No
		// ReadMeta says how fresh that is: a read asked stale, or a stale
		// fallback, may have been answered by a node that has not applied
		// the key's first write yet (a read replica just joined does
		// that), so it counts as stale, still held to never going back
		// in time.
		op.Stale = op.Stale || op.Fallback || consistency == ConsistencyStale
	case err != nil:
		op.Err = errString(err)
	default:
		op.Value, op.Version = resp.Data["v"], resp.GetMetadata().GetVersion()
		op.Node, op.Index = resp.GetReadMeta().GetNodeId(), resp.GetReadMeta().GetAppliedIndex()
		// The answer's own mark counts too, should ReadInfo ever miss it.
		op.Stale = op.Stale || resp.GetReadMeta().GetStale()
	}
	l.history.Add(op)
}

// errString renders an error with its gRPC code.
func errString(err error) string {
	st := status.Convert(err)
	return fmt.Sprintf("%s: %s", st.Code(), st.Message())
}
