package agent

import (
	"context"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pb "coffer/api/cofferpb"
)

// dbServer is the agent's coffer.v1.Database: Creds and StaticCreds
// answered from the credentials the agent holds (credsStore), the rest
// passed upstream. The caller's token is in ctx (callerContext).
type dbServer struct {
	pb.UnimplementedDatabaseServer
	a *Agent
}

// setCredsHeader sends the coffer-agent-cache headers of a Creds or
// StaticCreds answer.
func setCredsHeader(ctx context.Context, cs credsState) {
	md := metadata.Pairs(HeaderCache, cs.state)
	if cs.state != "miss" {
		md.Append(HeaderCacheAge, strconv.FormatInt(cs.age.Milliseconds(), 10))
	}
	_ = grpc.SetHeader(ctx, md)
}

// Creds hands out the dynamic credentials the agent holds for the
// caller's token and the role, fetching them once when it holds none.
func (d *dbServer) Creds(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseCreds, error) {
	resp, cs, err := d.a.held.creds(ctx, callerToken(ctx), req.GetName())
	if err != nil {
		return nil, err
	}
	setCredsHeader(ctx, cs)
	return resp, nil
}

// StaticCreds reads a static role's password from the cluster; while no
// node answers, the last one read with the caller's token, until the
// role's next rotation.
func (d *dbServer) StaticCreds(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseStaticCreds, error) {
	resp, cs, err := d.a.held.staticCreds(ctx, callerToken(ctx), req.GetName())
	if err != nil {
		return nil, err
	}
	setCredsHeader(ctx, cs)
	return resp, nil
}

// RotateRole passes a rotation upstream; the password the agent kept for
// the role is forgotten.
func (d *dbServer) RotateRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	resp, err := upstream(d.a, ctx, req.GetName(), d.a.client.RotateDatabaseRole)
	if err == nil {
		d.a.held.rotated(req.GetName())
	}
	return resp, err
}

// WriteConfig passes a connection's write upstream.
func (d *dbServer) WriteConfig(ctx context.Context, req *pb.DatabaseConfig) (*pb.DatabaseWriteResponse, error) {
	return upstream(d.a, ctx, req, d.a.client.WriteDatabaseConfig)
}

// ReadConfig reads a connection through the cluster.
func (d *dbServer) ReadConfig(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseConfig, error) {
	return upstream(d.a, ctx, req.GetName(), d.a.client.ReadDatabaseConfig)
}

// ListConfigs lists the connections through the cluster.
func (d *dbServer) ListConfigs(ctx context.Context, _ *pb.DatabaseListRequest) (*pb.DatabaseListResponse, error) {
	names, err := upstream(d.a, ctx, struct{}{}, func(ctx context.Context, _ struct{}) ([]string, error) { return d.a.client.ListDatabaseConfigs(ctx) })
	return &pb.DatabaseListResponse{Names: names}, err
}

// DeleteConfig passes a connection's removal upstream.
func (d *dbServer) DeleteConfig(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	return upstream(d.a, ctx, req.GetName(), d.a.client.DeleteDatabaseConfig)
}

// RotateRoot passes a root rotation upstream.
func (d *dbServer) RotateRoot(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	return upstream(d.a, ctx, req.GetName(), d.a.client.RotateDatabaseRoot)
}

// WriteRole passes a dynamic role's write upstream.
func (d *dbServer) WriteRole(ctx context.Context, req *pb.DatabaseRole) (*pb.DatabaseWriteResponse, error) {
	return upstream(d.a, ctx, req, d.a.client.WriteDatabaseRole)
}

// ReadRole reads a dynamic role through the cluster.
func (d *dbServer) ReadRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseRole, error) {
	return upstream(d.a, ctx, req.GetName(), d.a.client.ReadDatabaseRole)
}

// ListRoles lists the dynamic roles through the cluster.
func (d *dbServer) ListRoles(ctx context.Context, _ *pb.DatabaseListRequest) (*pb.DatabaseListResponse, error) {
	names, err := upstream(d.a, ctx, struct{}{}, func(ctx context.Context, _ struct{}) ([]string, error) { return d.a.client.ListDatabaseRoles(ctx) })
	return &pb.DatabaseListResponse{Names: names}, err
}

// DeleteRole passes a dynamic role's removal upstream.
func (d *dbServer) DeleteRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	return upstream(d.a, ctx, req.GetName(), d.a.client.DeleteDatabaseRole)
}

// WriteStaticRole passes a static role's write upstream.
func (d *dbServer) WriteStaticRole(ctx context.Context, req *pb.DatabaseStaticRole) (*pb.DatabaseWriteResponse, error) {
	resp, err := upstream(d.a, ctx, req, d.a.client.WriteDatabaseStaticRole)
	if err == nil {
		d.a.held.rotated(req.GetName()) // a new static role rotates at once
	}
	return resp, err
}

// ReadStaticRole reads a static role through the cluster.
func (d *dbServer) ReadStaticRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseStaticRole, error) {
	return upstream(d.a, ctx, req.GetName(), d.a.client.ReadDatabaseStaticRole)
}

// ListStaticRoles lists the static roles through the cluster.
func (d *dbServer) ListStaticRoles(ctx context.Context, _ *pb.DatabaseListRequest) (*pb.DatabaseListResponse, error) {
	names, err := upstream(d.a, ctx, struct{}{}, func(ctx context.Context, _ struct{}) ([]string, error) {
		return d.a.client.ListDatabaseStaticRoles(ctx)
	})
	return &pb.DatabaseListResponse{Names: names}, err
}

// DeleteStaticRole passes a static role's removal upstream.
func (d *dbServer) DeleteStaticRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	resp, err := upstream(d.a, ctx, req.GetName(), d.a.client.DeleteDatabaseStaticRole)
	if err == nil {
		d.a.held.rotated(req.GetName())
	}
	return resp, err
}

// leaseServer is the agent's coffer.v1.Lease: every call passed upstream
// with the caller's token; a renewal or revocation of a lease the agent
// holds updates what it holds.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	a *Agent
}

// Lookup looks a lease up through the cluster.
func (l *leaseServer) Lookup(ctx context.Context, req *pb.LeaseRequest) (*pb.LeaseInfo, error) {
	return upstream(l.a, ctx, req.GetLeaseId(), l.a.client.LookupLease)
}

// Renew passes a renewal upstream. When the agent holds the lease, its
// new end is taken: a renewal with a short increment brings it closer,
// and the agent never hands credentials out past it.
func (l *leaseServer) Renew(ctx context.Context, req *pb.LeaseRenewRequest) (*pb.LeaseInfo, error) {
	info, err := upstream(l.a, ctx, req, func(ctx context.Context, req *pb.LeaseRenewRequest) (*pb.LeaseInfo, error) {
		return l.a.client.RenewLease(ctx, req.GetLeaseId(), req.GetIncrementSeconds())
	})
	if err == nil {
		l.a.held.renewed(info)
	}
	return info, err
}

// Revoke passes a revocation upstream; credentials the agent holds under
// that lease are dropped.
func (l *leaseServer) Revoke(ctx context.Context, req *pb.LeaseRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := upstream(l.a, ctx, req.GetLeaseId(), l.a.client.RevokeLease)
	if err == nil {
		l.a.held.dropLease(req.GetLeaseId(), false)
	}
	return resp, err
}

// RevokePrefix passes a revocation by prefix upstream; credentials the
// agent holds under those leases are dropped.
func (l *leaseServer) RevokePrefix(ctx context.Context, req *pb.LeasePrefixRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := upstream(l.a, ctx, req.GetPrefix(), l.a.client.RevokeLeasePrefix)
	if err == nil {
		l.a.held.dropLease(req.GetPrefix(), true)
	}
	return resp, err
}

// List lists leases through the cluster.
func (l *leaseServer) List(ctx context.Context, req *pb.LeaseListRequest) (*pb.LeaseListResponse, error) {
	return upstream(l.a, ctx, req, l.a.client.ListLeases)
}
