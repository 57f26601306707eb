package api

import (
	"context"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// Put writes a new version of a secret. An empty RequestID is filled in, so
// the write is retried safely on another endpoint.
func (c *Client) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.PutResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).Put(ctx, req)
		return err
	})
	return resp, err
}

// Get reads one version of a secret.
func (c *Client) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	var resp *pb.GetResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).Get(ctx, req)
		return err
	})
	return resp, err
}

// List returns the keys directly under a prefix.
func (c *Client) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	var resp *pb.ListResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).List(ctx, req)
		return err
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
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = f(pb.NewKVClient(cc), ctx, req)
		return err
	})
	return resp, err
}

// ReadMetadata returns every version's times and states.
func (c *Client) ReadMetadata(ctx context.Context, req *pb.ReadMetadataRequest) (*pb.ReadMetadataResponse, error) {
	var resp *pb.ReadMetadataResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).ReadMetadata(ctx, req)
		return err
	})
	return resp, err
}

// WriteMetadata sets max_versions and cas_required of a secret.
func (c *Client) WriteMetadata(ctx context.Context, req *pb.WriteMetadataRequest) (*pb.WriteResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.WriteResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).WriteMetadata(ctx, req)
		return err
	})
	return resp, err
}

// DeleteMetadata removes a secret with all its versions.
func (c *Client) DeleteMetadata(ctx context.Context, req *pb.DeleteMetadataRequest) (*pb.WriteResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var resp *pb.WriteResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewKVClient(cc).DeleteMetadata(ctx, req)
		return err
	})
	return resp, err
}
