package agent

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Response headers of a Get.
const (
	// HeaderCache says how a Get was answered: "miss" (from the cluster),
	// "hit" (a fresh cached answer) or "stale" (a cached answer served
	// because no upstream node answered).
	HeaderCache = "coffer-agent-cache"
	// HeaderCacheAge is the age of a cached answer in milliseconds.
	HeaderCacheAge = "coffer-agent-cache-age-ms"
)

// kvServer is the agent's coffer.v1.KV: reads through the caching client,
// writes and watches passed upstream. The caller's token is in ctx
// (callerContext).
type kvServer struct {
	pb.UnimplementedKVServer
	a *Agent
}

// Get answers from the cache when it holds a fresh answer for the caller's
// token, from the cluster otherwise, and from the cache (marked stale)
// when no upstream node answers.
func (k *kvServer) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	resp, info, err := k.a.client.GetWithInfo(ctx, req)
	k.a.metrics.read(info, err)
	if err != nil {
		return nil, k.a.getError(req.Path, err)
	}
	state := "miss"
	switch {
	case info.Cached && info.Fallback:
		state = "stale"
		k.a.logger.Debug("served a cached answer: no upstream node answered", "path", req.Path, "age", info.Age)
	case info.Cached:
		state = "hit"
	default:
		k.a.noteContact()
	}
	md := metadata.Pairs(HeaderCache, state)
	if info.Cached {
		md.Append(HeaderCacheAge, strconv.FormatInt(info.Age.Milliseconds(), 10))
	}
	_ = grpc.SetHeader(ctx, md)
	return resp, nil
}

// getError explains a Get that the cluster could not answer and the cache
// could not either: the cluster's Unavailable answer, said from the
// agent's side.
func (a *Agent) getError(path string, err error) error {
	var stale *api.CacheStaleError
	if !api.Retryable(err) || errors.As(err, &stale) || errors.Is(err, api.ErrClosed) {
		return err
	}
	why := "the agent holds no cached answer of " + path + " for this token"
	if a.cfg.Cache.MaxStale < 0 {
		why = "the agent serves no stale answers (-max-stale=0)"
	}
	return unreachableError(err, why)
}

// List lists keys through the cluster (not cached).
func (k *kvServer) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.List)
}

// ReadMetadata reads a secret's metadata through the cluster (not cached).
func (k *kvServer) ReadMetadata(ctx context.Context, req *pb.ReadMetadataRequest) (*pb.ReadMetadataResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.ReadMetadata)
}

// Put passes a write upstream with the caller's token and request id. The
// cached answers of its path are dropped.
func (k *kvServer) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.Put)
}

// Delete passes a soft delete upstream.
func (k *kvServer) Delete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.Delete)
}

// Undelete passes an undelete upstream.
func (k *kvServer) Undelete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.Undelete)
}

// Destroy passes a destroy upstream.
func (k *kvServer) Destroy(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.Destroy)
}

// WriteMetadata passes a metadata write upstream.
func (k *kvServer) WriteMetadata(ctx context.Context, req *pb.WriteMetadataRequest) (*pb.WriteResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.WriteMetadata)
}

// DeleteMetadata passes a metadata delete upstream.
func (k *kvServer) DeleteMetadata(ctx context.Context, req *pb.DeleteMetadataRequest) (*pb.WriteResponse, error) {
	return upstream(k.a, ctx, req, k.a.client.DeleteMetadata)
}

// upstream runs one call through the client and notes the contact.
func upstream[Req, Resp any](a *Agent, ctx context.Context, req Req, call func(context.Context, Req) (Resp, error)) (Resp, error) {
	resp, err := call(ctx, req)
	if err != nil {
		return resp, &upstreamError{err}
	}
	a.noteContact()
	return resp, nil
}

// Watch proxies a watch: it follows the prefix through the client, which
// resumes on another node after a failure, and ends the stream after a
// COMPACTED event as a node does.
func (k *kvServer) Watch(req *pb.WatchRequest, stream pb.KV_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(k.a.stopCtx, cancel)
	defer stop()
	events, err := k.a.client.Watch(ctx, req.Prefix, req.FromIndex)
	if err != nil {
		return err
	}
	defer func() {
		cancel()
		for range events { // until the client's watch goroutine is done
		}
	}()
	for ev := range events {
		out := &pb.WatchEvent{
			Index: ev.Index, Path: ev.Path, Op: ev.Op, Version: ev.Version,
			Versions: ev.Versions, NodeId: ev.NodeID,
		}
		switch ev.Type {
		case api.WatchChange:
			out.Type = pb.WatchEvent_CHANGE
		case api.WatchProgress:
			out.Type = pb.WatchEvent_PROGRESS
		case api.WatchCompacted:
			out.Type = pb.WatchEvent_COMPACTED
		case api.WatchFailed:
			return &upstreamError{ev.Err}
		default:
			continue
		}
		k.a.noteContact()
		if err := stream.Send(out); err != nil {
			return err
		}
		if out.Type == pb.WatchEvent_COMPACTED {
			return nil
		}
	}
	if k.a.stopCtx.Err() != nil {
		return ErrShuttingDown
	}
	if err := stream.Context().Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return api.StatusError(codes.Unavailable, pb.ErrorReason_ENDPOINT_UNREACHABLE, "coffer agent: the watch ended: watch again from the last index")
}
