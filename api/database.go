package api

import (
	"context"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// unary runs one call of a generated client through c.call (retried on
// the next endpoint while the answer is retryable; the call must be safe
// to repeat) and, for a write, records the index it returned.
func unary[C, Resp any](ctx context.Context, c *Client, newClient func(grpc.ClientConnInterface) C, fn func(context.Context, C) (Resp, error)) (Resp, error) {
	var resp Resp
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = fn(ctx, newClient(cc))
		return err
	})
	if w, ok := any(resp).(interface{ GetRaftIndex() uint64 }); ok && err == nil {
		c.noteWrite(w.GetRaftIndex())
	}
	return resp, err
}

// database runs a call of the Database service.
func database[Resp any](ctx context.Context, c *Client, fn func(context.Context, pb.DatabaseClient) (Resp, error)) (Resp, error) {
	return unary(ctx, c, pb.NewDatabaseClient, fn)
}

// lease runs a call of the Lease service.
func lease[Resp any](ctx context.Context, c *Client, fn func(context.Context, pb.LeaseClient) (Resp, error)) (Resp, error) {
	return unary(ctx, c, pb.NewLeaseClient, fn)
}

func named(name string) *pb.DatabaseNameRequest { return &pb.DatabaseNameRequest{Name: name} }

// WriteDatabaseConfig creates or replaces a database connection (the
// leader connects first unless verify_connection is false).
func (c *Client) WriteDatabaseConfig(ctx context.Context, cfg *pb.DatabaseConfig) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.WriteConfig(ctx, cfg)
	})
}

// ReadDatabaseConfig returns a connection, without its password.
func (c *Client) ReadDatabaseConfig(ctx context.Context, name string) (*pb.DatabaseConfig, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseConfig, error) {
		return d.ReadConfig(ctx, named(name))
	})
}

// ListDatabaseConfigs returns the connections' names.
func (c *Client) ListDatabaseConfigs(ctx context.Context) ([]string, error) {
	resp, err := database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseListResponse, error) {
		return d.ListConfigs(ctx, &pb.DatabaseListRequest{})
	})
	return resp.GetNames(), err
}

// DeleteDatabaseConfig removes a connection.
func (c *Client) DeleteDatabaseConfig(ctx context.Context, name string) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.DeleteConfig(ctx, named(name))
	})
}

// RotateDatabaseRoot gives a connection's management user a new password
// only coffer knows.
func (c *Client) RotateDatabaseRoot(ctx context.Context, name string) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.RotateRoot(ctx, named(name))
	})
}

// WriteDatabaseRole creates or replaces a dynamic role.
func (c *Client) WriteDatabaseRole(ctx context.Context, role *pb.DatabaseRole) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.WriteRole(ctx, role)
	})
}

// ReadDatabaseRole returns a dynamic role.
func (c *Client) ReadDatabaseRole(ctx context.Context, name string) (*pb.DatabaseRole, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseRole, error) {
		return d.ReadRole(ctx, named(name))
	})
}

// ListDatabaseRoles returns the dynamic roles' names.
func (c *Client) ListDatabaseRoles(ctx context.Context) ([]string, error) {
	resp, err := database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseListResponse, error) {
		return d.ListRoles(ctx, &pb.DatabaseListRequest{})
	})
	return resp.GetNames(), err
}

// DeleteDatabaseRole removes a dynamic role (its leases stay until they
// end).
func (c *Client) DeleteDatabaseRole(ctx context.Context, name string) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.DeleteRole(ctx, named(name))
	})
}

// DatabaseCreds creates a database user for a dynamic role. A retry after
// a lost answer may create a second user; the one the caller never saw
// is revoked when its lease ends.
func (c *Client) DatabaseCreds(ctx context.Context, role string) (*pb.DatabaseCreds, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseCreds, error) {
		return d.Creds(ctx, named(role))
	})
}

// WriteDatabaseStaticRole creates or replaces a static role.
func (c *Client) WriteDatabaseStaticRole(ctx context.Context, role *pb.DatabaseStaticRole) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.WriteStaticRole(ctx, role)
	})
}

// ReadDatabaseStaticRole returns a static role.
func (c *Client) ReadDatabaseStaticRole(ctx context.Context, name string) (*pb.DatabaseStaticRole, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseStaticRole, error) {
		return d.ReadStaticRole(ctx, named(name))
	})
}

// ListDatabaseStaticRoles returns the static roles' names.
func (c *Client) ListDatabaseStaticRoles(ctx context.Context) ([]string, error) {
	resp, err := database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseListResponse, error) {
		return d.ListStaticRoles(ctx, &pb.DatabaseListRequest{})
	})
	return resp.GetNames(), err
}

// DeleteDatabaseStaticRole removes a static role (the user stays).
func (c *Client) DeleteDatabaseStaticRole(ctx context.Context, name string) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.DeleteStaticRole(ctx, named(name))
	})
}

// DatabaseStaticCreds returns a static role's current password.
func (c *Client) DatabaseStaticCreds(ctx context.Context, name string) (*pb.DatabaseStaticCreds, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseStaticCreds, error) {
		return d.StaticCreds(ctx, named(name))
	})
}

// RotateDatabaseRole rotates a static role's password now.
func (c *Client) RotateDatabaseRole(ctx context.Context, name string) (*pb.DatabaseWriteResponse, error) {
	return database(ctx, c, func(ctx context.Context, d pb.DatabaseClient) (*pb.DatabaseWriteResponse, error) {
		return d.RotateRole(ctx, named(name))
	})
}

// LookupLease returns a lease.
func (c *Client) LookupLease(ctx context.Context, id string) (*pb.LeaseInfo, error) {
	return lease(ctx, c, func(ctx context.Context, l pb.LeaseClient) (*pb.LeaseInfo, error) {
		return l.Lookup(ctx, &pb.LeaseRequest{LeaseId: id})
	})
}

// RenewLease extends a lease by increment seconds (0: its TTL), never past
// its max TTL.
func (c *Client) RenewLease(ctx context.Context, id string, incrementSeconds int64) (*pb.LeaseInfo, error) {
	return lease(ctx, c, func(ctx context.Context, l pb.LeaseClient) (*pb.LeaseInfo, error) {
		return l.Renew(ctx, &pb.LeaseRenewRequest{LeaseId: id, IncrementSeconds: incrementSeconds})
	})
}

// RevokeLease revokes a lease now.
func (c *Client) RevokeLease(ctx context.Context, id string) (*pb.LeaseRevokeResponse, error) {
	return lease(ctx, c, func(ctx context.Context, l pb.LeaseClient) (*pb.LeaseRevokeResponse, error) {
		return l.Revoke(ctx, &pb.LeaseRequest{LeaseId: id})
	})
}

// RevokeLeasePrefix makes every lease under prefix due now.
func (c *Client) RevokeLeasePrefix(ctx context.Context, prefix string) (*pb.LeaseRevokeResponse, error) {
	return lease(ctx, c, func(ctx context.Context, l pb.LeaseClient) (*pb.LeaseRevokeResponse, error) {
		return l.RevokePrefix(ctx, &pb.LeasePrefixRequest{Prefix: prefix})
	})
}

// RevokeLeaseForce removes every lease under prefix without revoking what
// it stands for (Vault's revoke-force).
func (c *Client) RevokeLeaseForce(ctx context.Context, prefix string) (*pb.LeaseRevokeResponse, error) {
	return lease(ctx, c, func(ctx context.Context, l pb.LeaseClient) (*pb.LeaseRevokeResponse, error) {
		return l.RevokeForce(ctx, &pb.LeasePrefixRequest{Prefix: prefix})
	})
}

// ListLeases returns one page of the leases under req.Prefix.
func (c *Client) ListLeases(ctx context.Context, req *pb.LeaseListRequest) (*pb.LeaseListResponse, error) {
	return lease(ctx, c, func(ctx context.Context, l pb.LeaseClient) (*pb.LeaseListResponse, error) {
		return l.List(ctx, req)
	})
}
