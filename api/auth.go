package api

import (
	"context"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// WritePolicy creates or replaces the ACL policy name with text (Vault's
// HCL or JSON). Writing the same text again is harmless, so the call is
// retried on another node after an ambiguous failure.
func (c *Client) WritePolicy(ctx context.Context, name, text string) (*pb.WritePolicyResponse, error) {
	var resp *pb.WritePolicyResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewPolicyClient(cc).Write(ctx, &pb.WritePolicyRequest{Name: name, Policy: text})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// ReadPolicy returns the text of the policy name.
func (c *Client) ReadPolicy(ctx context.Context, name string) (*pb.PolicyInfo, error) {
	var resp *pb.PolicyInfo
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewPolicyClient(cc).Read(ctx, &pb.ReadPolicyRequest{Name: name})
		return err
	})
	return resp, err
}

// ListPolicies returns the names of every policy.
func (c *Client) ListPolicies(ctx context.Context) ([]string, error) {
	var resp *pb.ListPoliciesResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewPolicyClient(cc).List(ctx, &pb.ListPoliciesRequest{})
		return err
	})
	return resp.GetNames(), err
}

// DeletePolicy removes the policy name.
func (c *Client) DeletePolicy(ctx context.Context, name string) error {
	var resp *pb.DeletePolicyResponse
	// At most once: a retry after a lost answer would find it gone.
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewPolicyClient(cc).Delete(ctx, &pb.DeletePolicyRequest{Name: name})
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return err
}

// CreateToken creates a token, a child of the client's own unless
// req.NoParent. It is sent at most once: a retry could make a second
// token.
func (c *Client) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.TokenInfo, error) {
	var resp *pb.TokenInfo
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewTokenClient(cc).Create(ctx, req)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// LookupToken describes a token: the client's own when req names neither
// a token nor an accessor.
func (c *Client) LookupToken(ctx context.Context, req *pb.LookupTokenRequest) (*pb.TokenInfo, error) {
	var resp *pb.TokenInfo
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewTokenClient(cc).Lookup(ctx, req)
		return err
	})
	return resp, err
}

// RenewToken extends a token's time to live.
func (c *Client) RenewToken(ctx context.Context, req *pb.RenewTokenRequest) (*pb.TokenInfo, error) {
	var resp *pb.TokenInfo
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewTokenClient(cc).Renew(ctx, req)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// RevokeToken revokes a token and its children. Revoking a token that is
// already gone succeeds, so the call is retried after an ambiguous failure.
func (c *Client) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	var resp *pb.RevokeTokenResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewTokenClient(cc).Revoke(ctx, req)
		return err
	})
	if err == nil {
		c.noteWrite(resp.GetRaftIndex())
	}
	return resp, err
}

// Capabilities lists what a token (the client's own when token is empty)
// may do on each of paths.
func (c *Client) Capabilities(ctx context.Context, token string, paths ...string) (*pb.CapabilitiesResponse, error) {
	var resp *pb.CapabilitiesResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewTokenClient(cc).Capabilities(ctx, &pb.CapabilitiesRequest{Token: token, Paths: paths})
		return err
	})
	return resp, err
}
