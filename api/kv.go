package api

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// ReadInfo says how a read was answered.
type ReadInfo struct {
	// Endpoint is the endpoint that answered ("" for a cached answer).
	Endpoint string
	// Cached is true when the answer came from the client cache.
	Cached bool
	// Age is, for a cached answer, the time since it was fetched.
	Age time.Duration
	// Stale is true when the answer may miss committed writes: a stale
	// read, a stale fallback, or a cached value served past its TTL
	// because no endpoint answered (stale-if-error). It equals
	// ReadMeta.Stale.
	Stale bool
	// Fallback is true when the answer is a fallback: a stale read after
	// the read asked for failed everywhere, or a cached value served
	// because no endpoint answered.
	Fallback bool
}

// readOptions returns the options a read is sent with: the request's own
// when set (its consistency and max_staleness win), the client's defaults
// otherwise; min_index is at least the index of the client's last write and
// the highest applied index an answer of its reported (monotonic reads).
func (c *Client) readOptions(req *pb.ReadOptions) *pb.ReadOptions {
	opts := &pb.ReadOptions{Consistency: c.cfg.Consistency, MaxStalenessMs: c.cfg.MaxStaleness.Milliseconds()}
	if req != nil {
		opts.Consistency, opts.MaxStalenessMs, opts.MinIndex = req.Consistency, req.MaxStalenessMs, req.MinIndex
	}
	opts.MinIndex = max(opts.MinIndex, c.lastWrite.Load(), c.lastSeen.Load())
	return opts
}

// staleOptions turns opts into those of a stale fallback.
func (c *Client) staleOptions(opts *pb.ReadOptions) *pb.ReadOptions {
	ms := opts.MaxStalenessMs
	if ms == 0 {
		ms = c.cfg.MaxStaleness.Milliseconds()
	}
	return &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MaxStalenessMs: ms, MinIndex: opts.MinIndex}
}

// readAnswer is the response of a read RPC.
type readAnswer interface {
	GetReadMeta() *pb.ReadMeta
}

// read runs one read with retries, hedging, stale fallback and
// read-your-writes. do sends the request with the given options; it may run
// on two nodes at once (Config.HedgeAfter), and the first answer wins.
func read[R readAnswer](c *Client, ctx context.Context, reqOpts *pb.ReadOptions, do func(ctx context.Context, cc *grpc.ClientConn, opts *pb.ReadOptions) (R, error)) (R, ReadInfo, error) {
	opts := c.readOptions(reqOpts)
	// Only a default read falls back to a stale one: a linearizable read
	// succeeds linearizably or fails, and a stale read is stale already.
	p := policy{
		staleFallback: !c.cfg.DisableStaleFallback && opts.Consistency == pb.Consistency_CONSISTENCY_DEFAULT,
		hedge:         !c.cfg.DisableHedgedReads,
	}
	var (
		mu       sync.Mutex
		answered bool
		resp     R
		info     ReadInfo
	)
	fellBack, err := c.run(ctx, p, func(ctx context.Context, ep *endpoint, stale bool) error {
		o := opts
		if stale {
			o = c.staleOptions(opts)
		}
		r, err := do(ctx, ep.cc, o)
		if err != nil {
			return err
		}
		meta := r.GetReadMeta()
		if meta != nil {
			ep.learn(meta.NodeId, meta.AppliedIndex)
			c.noteSeen(meta.AppliedIndex)
			c.noteLeader(meta.LeaderId, "")
			if stale {
				// Whoever answered, it is not the answer asked for.
				meta.Stale = true
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if !answered { // a hedged read's other node may answer too
			answered, resp = true, r
			info = ReadInfo{Endpoint: ep.addr, Stale: meta.GetStale()}
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	info.Fallback = fellBack
	if err != nil {
		var zero R
		return zero, info, err
	}
	return resp, info, nil
}

// write runs one write with retries (leader first, the same request id on
// every attempt) and records its index for read-your-writes and the cache.
func (c *Client) write(ctx context.Context, path string, do func(ctx context.Context, cc *grpc.ClientConn) (uint64, error)) error {
	if c.leaderEndpoint() == nil {
		// Any node forwards the write; meanwhile find the leader, so that
		// the next writes save the hop.
		c.wantLeader()
	}
	_, err := c.run(ctx, policy{write: true}, func(ctx context.Context, ep *endpoint, _ bool) error {
		index, err := do(ctx, ep.cc)
		if err != nil {
			return err
		}
		c.noteWrite(index)
		if c.cache != nil && path != "" {
			c.cache.Invalidate(path, index)
		}
		return nil
	})
	return err
}

// Put writes a new version of a secret. An empty RequestID is filled in, so
// the write is retried safely on another endpoint.
func (c *Client) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.PutResponse
	err := c.write(ctx, req.Path, func(ctx context.Context, cc *grpc.ClientConn) (_ uint64, err error) {
		resp, err = pb.NewKVClient(cc).Put(ctx, req)
		return resp.GetIndex(), err
	})
	return resp, err
}

// Get reads one version of a secret. With a cache (Config.Cache) a fresh
// cached answer is returned without a call (with the ReadMeta of the read
// that fetched it), unless the read is linearizable; and when no endpoint
// answers, a cached value is returned up to CacheConfig.MaxStale past its
// expiry, with ReadMeta.Stale set and last_contact_ms grown by its age
// (GetWithInfo tells the age). Past that budget Get fails with a
// CacheStaleError. List and ReadMetadata are never cached.
func (c *Client) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	resp, _, err := c.GetWithInfo(ctx, req)
	return resp, err
}

// GetWithInfo is Get that also says how the answer was obtained: from which
// endpoint, or from the cache and how old it is.
func (c *Client) GetWithInfo(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, ReadInfo, error) {
	if c.cache == nil {
		return c.getRemote(ctx, req)
	}
	return c.getCached(ctx, req)
}

// getRemote reads a secret from the cluster.
func (c *Client) getRemote(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, ReadInfo, error) {
	return read(c, ctx, req.Read, func(ctx context.Context, cc *grpc.ClientConn, opts *pb.ReadOptions) (*pb.GetResponse, error) {
		return pb.NewKVClient(cc).Get(ctx, &pb.GetRequest{Path: req.Path, Version: req.Version, Read: opts})
	})
}

// List returns the keys directly under a prefix.
func (c *Client) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	resp, _, err := read(c, ctx, req.Read, func(ctx context.Context, cc *grpc.ClientConn, opts *pb.ReadOptions) (*pb.ListResponse, error) {
		return pb.NewKVClient(cc).List(ctx, &pb.ListRequest{Path: req.Path, Read: opts, Limit: req.Limit, After: req.After})
	})
	return resp, err
}

// Delete soft-deletes versions of a secret (the current one when none).
func (c *Client) Delete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return c.versions(ctx, req, pb.KVClient.Delete)
}

// Undelete restores soft-deleted versions.
func (c *Client) Undelete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return c.versions(ctx, req, pb.KVClient.Undelete)
}

// Destroy removes versions' data for good.
func (c *Client) Destroy(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return c.versions(ctx, req, pb.KVClient.Destroy)
}

type versionsCall func(pb.KVClient, context.Context, *pb.VersionsRequest, ...grpc.CallOption) (*pb.WriteResponse, error)

func (c *Client) versions(ctx context.Context, req *pb.VersionsRequest, f versionsCall) (*pb.WriteResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.WriteResponse
	err := c.write(ctx, req.Path, func(ctx context.Context, cc *grpc.ClientConn) (_ uint64, err error) {
		resp, err = f(pb.NewKVClient(cc), ctx, req)
		return resp.GetIndex(), err
	})
	return resp, err
}

// ReadMetadata returns every version's times and states.
func (c *Client) ReadMetadata(ctx context.Context, req *pb.ReadMetadataRequest) (*pb.ReadMetadataResponse, error) {
	resp, _, err := read(c, ctx, req.Read, func(ctx context.Context, cc *grpc.ClientConn, opts *pb.ReadOptions) (*pb.ReadMetadataResponse, error) {
		return pb.NewKVClient(cc).ReadMetadata(ctx, &pb.ReadMetadataRequest{Path: req.Path, Read: opts})
	})
	return resp, err
}

// WriteMetadata sets max_versions and cas_required of a secret.
func (c *Client) WriteMetadata(ctx context.Context, req *pb.WriteMetadataRequest) (*pb.WriteResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.WriteResponse
	err := c.write(ctx, req.Path, func(ctx context.Context, cc *grpc.ClientConn) (_ uint64, err error) {
		resp, err = pb.NewKVClient(cc).WriteMetadata(ctx, req)
		return resp.GetIndex(), err
	})
	return resp, err
}

// DeleteMetadata removes a secret with all its versions.
func (c *Client) DeleteMetadata(ctx context.Context, req *pb.DeleteMetadataRequest) (*pb.WriteResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.WriteResponse
	err := c.write(ctx, req.Path, func(ctx context.Context, cc *grpc.ClientConn) (_ uint64, err error) {
		resp, err = pb.NewKVClient(cc).DeleteMetadata(ctx, req)
		return resp.GetIndex(), err
	})
	return resp, err
}
