package api

import (
	"context"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// Login exchanges credentials for a token with a login method ("approle",
// "jwt" or "cert"); data holds the method's fields (see LoginAppRole,
// LoginJWT and LoginCert). The call needs no token. It is sent at most
// once: a login may spend a use of its credential. The answer's Token is
// the new token: pass it to WithToken, or to a client of its own.
func (c *Client) Login(ctx context.Context, method string, data map[string]string) (*pb.TokenInfo, error) {
	var resp *pb.TokenInfo
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewLoginClient(cc).Login(ctx, &pb.LoginRequest{Method: method, Data: data})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// LoginAppRole logs in with an AppRole role_id and secret_id.
func (c *Client) LoginAppRole(ctx context.Context, roleID, secretID string) (*pb.TokenInfo, error) {
	return c.Login(ctx, "approle", map[string]string{"role_id": roleID, "secret_id": secretID})
}

// LoginJWT logs in to a JWT role with a signed JWT (a Kubernetes
// service-account token, an OIDC ID token).
func (c *Client) LoginJWT(ctx context.Context, role, jwt string) (*pb.TokenInfo, error) {
	return c.Login(ctx, "jwt", map[string]string{"role": role, "jwt": jwt})
}

// LoginCert logs in with the client certificate of the client's TLS
// configuration, to the certificate role name (empty: the first role
// that matches the certificate).
func (c *Client) LoginCert(ctx context.Context, name string) (*pb.TokenInfo, error) {
	var data map[string]string
	if name != "" {
		data = map[string]string{"name": name}
	}
	return c.Login(ctx, "cert", data)
}

// WriteAppRole creates an AppRole role or replaces its settings (its
// role_id and secret_ids stay). Writing the same settings again is
// harmless, so the call is retried after an ambiguous failure.
func (c *Client) WriteAppRole(ctx context.Context, role *pb.AppRole) (*pb.AuthWriteResponse, error) {
	var resp *pb.AuthWriteResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).WriteRole(ctx, role)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// ReadAppRole returns an AppRole role's settings and role_id.
func (c *Client) ReadAppRole(ctx context.Context, name string) (*pb.AppRole, error) {
	var resp *pb.AppRole
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).ReadRole(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	return resp, err
}

// ListAppRoles returns the AppRole roles' names.
func (c *Client) ListAppRoles(ctx context.Context) ([]string, error) {
	var resp *pb.AuthListResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).ListRoles(ctx, &pb.AuthListRequest{})
		return err
	})
	return resp.GetNames(), err
}

// DeleteAppRole removes an AppRole role and its secret_ids. At most once:
// a retry after a lost answer would find it gone.
func (c *Client) DeleteAppRole(ctx context.Context, name string) error {
	var resp *pb.AuthWriteResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).DeleteRole(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return err
}

// AppRoleID returns an AppRole role's role_id.
func (c *Client) AppRoleID(ctx context.Context, name string) (string, error) {
	var resp *pb.RoleIDResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).ReadRoleID(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	return resp.GetRoleId(), err
}

// AppRoleSecretID makes a secret_id for an AppRole role: the answer is
// the only place it appears. At most once: a retry would make a second.
func (c *Client) AppRoleSecretID(ctx context.Context, name string) (*pb.SecretIDResponse, error) {
	var resp *pb.SecretIDResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).GenerateSecretID(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// DestroyAppRoleSecretID removes a role's secret_id by its accessor.
func (c *Client) DestroyAppRoleSecretID(ctx context.Context, name, accessor string) error {
	var resp *pb.AuthWriteResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewAppRoleAuthClient(cc).DestroySecretID(ctx, &pb.DestroySecretIDRequest{Name: name, SecretIdAccessor: accessor})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return err
}

// WriteJWTConfig stores where the JWT method's keys come from.
func (c *Client) WriteJWTConfig(ctx context.Context, cfg *pb.JWTConfig) (*pb.AuthWriteResponse, error) {
	var resp *pb.AuthWriteResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewJWTAuthClient(cc).WriteConfig(ctx, cfg)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// ReadJWTConfig returns the JWT method's configuration.
func (c *Client) ReadJWTConfig(ctx context.Context) (*pb.JWTConfig, error) {
	var resp *pb.JWTConfig
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewJWTAuthClient(cc).ReadConfig(ctx, &pb.ReadJWTConfigRequest{})
		return err
	})
	return resp, err
}

// WriteJWTRole creates or replaces a JWT role.
func (c *Client) WriteJWTRole(ctx context.Context, role *pb.JWTRole) (*pb.AuthWriteResponse, error) {
	var resp *pb.AuthWriteResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewJWTAuthClient(cc).WriteRole(ctx, role)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// ReadJWTRole returns a JWT role.
func (c *Client) ReadJWTRole(ctx context.Context, name string) (*pb.JWTRole, error) {
	var resp *pb.JWTRole
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewJWTAuthClient(cc).ReadRole(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	return resp, err
}

// ListJWTRoles returns the JWT roles' names.
func (c *Client) ListJWTRoles(ctx context.Context) ([]string, error) {
	var resp *pb.AuthListResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewJWTAuthClient(cc).ListRoles(ctx, &pb.AuthListRequest{})
		return err
	})
	return resp.GetNames(), err
}

// DeleteJWTRole removes a JWT role (at most once).
func (c *Client) DeleteJWTRole(ctx context.Context, name string) error {
	var resp *pb.AuthWriteResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewJWTAuthClient(cc).DeleteRole(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return err
}

// WriteCertRole creates or replaces a certificate role.
func (c *Client) WriteCertRole(ctx context.Context, role *pb.CertRole) (*pb.AuthWriteResponse, error) {
	var resp *pb.AuthWriteResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewCertAuthClient(cc).WriteRole(ctx, role)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// ReadCertRole returns a certificate role.
func (c *Client) ReadCertRole(ctx context.Context, name string) (*pb.CertRole, error) {
	var resp *pb.CertRole
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewCertAuthClient(cc).ReadRole(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	return resp, err
}

// ListCertRoles returns the certificate roles' names.
func (c *Client) ListCertRoles(ctx context.Context) ([]string, error) {
	var resp *pb.AuthListResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewCertAuthClient(cc).ListRoles(ctx, &pb.AuthListRequest{})
		return err
	})
	return resp.GetNames(), err
}

// DeleteCertRole removes a certificate role (at most once).
func (c *Client) DeleteCertRole(ctx context.Context, name string) error {
	var resp *pb.AuthWriteResponse
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewCertAuthClient(cc).DeleteRole(ctx, &pb.AuthRoleRequest{Name: name})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return err
}
