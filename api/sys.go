package api

import (
	"context"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "coffer/api/cofferpb"
)

// Init initializes the cluster through the first endpoint: it returns the
// unseal key shares and the root token, which are never shown again.
func (c *Client) Init(ctx context.Context, req *pb.InitRequest) (*pb.InitResponse, error) {
	var resp *pb.InitResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).Init(ctx, req)
		return err
	})
	return resp, err
}

// Unseal submits one key share to the first endpoint's node.
func (c *Client) Unseal(ctx context.Context, key []byte) (*pb.SealStatus, error) {
	return c.unseal(ctx, &pb.UnsealRequest{Key: key})
}

// UnsealMigrate submits one key share to the first endpoint's node for a
// seal migration (`coffer operator unseal -migrate`).
func (c *Client) UnsealMigrate(ctx context.Context, key []byte) (*pb.SealStatus, error) {
	return c.unseal(ctx, &pb.UnsealRequest{Key: key, Migrate: true})
}

// UnsealReset discards the shares the first endpoint's node holds so far.
func (c *Client) UnsealReset(ctx context.Context) (*pb.SealStatus, error) {
	return c.unseal(ctx, &pb.UnsealRequest{Reset_: true})
}

func (c *Client) unseal(ctx context.Context, req *pb.UnsealRequest) (*pb.SealStatus, error) {
	var resp *pb.SealStatus
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).Unseal(ctx, req)
		return err
	})
	return resp, err
}

// Seal seals the first endpoint's node.
func (c *Client) Seal(ctx context.Context) (*pb.SealStatus, error) {
	var resp *pb.SealStatus
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).Seal(ctx, &pb.SealRequest{})
		return err
	})
	return resp, err
}

// Status reports the first endpoint's node.
func (c *Client) Status(ctx context.Context) (*pb.StatusResponse, error) {
	var resp *pb.StatusResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).Status(ctx, &pb.StatusRequest{})
		return err
	})
	return resp, err
}

// Health asks the first endpoint's node, through the standard gRPC
// health service, whether service serves ("" for the process,
// "coffer.v1.KV" for a node that is unsealed and serves KV).
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	var resp *healthpb.HealthCheckResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		return err
	})
	return resp.GetStatus(), err
}

// Rotate adds a new data-key term to the cluster's keyring. It goes to the
// leader when the client knows it (any node forwards it otherwise) and is
// retried on Unavailable like a write; it carries no request id, so a
// retry after a failover may add one more term (harmless: old terms stay
// readable).
func (c *Client) Rotate(ctx context.Context) (*pb.RotateResponse, error) {
	var resp *pb.RotateResponse
	err := c.write(ctx, "", func(ctx context.Context, cc *grpc.ClientConn) (_ uint64, err error) {
		resp, err = pb.NewSysClient(cc).Rotate(ctx, &pb.RotateRequest{})
		return resp.GetIndex(), err
	})
	return resp, err
}

// AuditHash returns input as the audit logs write it (HMAC-SHA256 under
// the cluster's audit salt), to search them for a value.
func (c *Client) AuditHash(ctx context.Context, input string) (string, error) {
	var resp *pb.AuditHashResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).AuditHash(ctx, &pb.AuditHashRequest{Input: input})
		return err
	})
	return resp.GetHash(), err
}

// GenerateRoot runs one step of generate-root (req.Action: status, init,
// update, cancel) on the leader. It is sent at most once: a share sent
// twice would be refused as a duplicate.
func (c *Client) GenerateRoot(ctx context.Context, req *pb.GenerateRootRequest) (*pb.GenerateRootStatus, error) {
	var resp *pb.GenerateRootStatus
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).GenerateRoot(ctx, req)
		return err
	})
	return resp, err
}

// Rekey runs one step of a rekey (req.Action: status, init, update,
// cancel) on the leader. It is sent at most once: a share sent twice
// would be refused as a duplicate, and the last share's answer carries
// the new shares, which are never shown again.
func (c *Client) Rekey(ctx context.Context, req *pb.RekeyRequest) (*pb.RekeyStatus, error) {
	var resp *pb.RekeyStatus
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewSysClient(cc).Rekey(ctx, req)
		return err
	})
	return resp, err
}
