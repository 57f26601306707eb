package server

import (
	"context"
	"errors"
	"strings"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/internal/tlsutil"
	"coffer/server/auth"
)

// sysCertRolePref keys the certificate method's roles:
// auth/cert/certs/<name> → certRole (sealed).
const sysCertRolePref = "auth/cert/certs/"

// certRole is a certificate role as stored.
type certRole struct {
	AllowedCommonNames []string `json:"allowed_common_names,omitempty"`
	AllowedDNSSANs     []string `json:"allowed_dns_sans,omitempty"`
	roleToken
}

// matches reports whether the certificate's names fit the role: its
// common name one of the allowed ones (when the role names any), and one
// of its DNS names one of the allowed ones (when the role names any).
func (r *certRole) matches(cn string, dns []string) bool {
	if len(r.AllowedCommonNames) > 0 && !auth.MatchAny(r.AllowedCommonNames, cn) {
		return false
	}
	if len(r.AllowedDNSSANs) > 0 {
		for _, d := range dns {
			if auth.MatchAny(r.AllowedDNSSANs, d) {
				return true
			}
		}
		return false
	}
	return true
}

// certRoles is the certificate method: the CertAuth service and its
// logins. The credential is the caller's TLS client certificate, which
// the node's TLS handshake verified against the cluster's CA.
type certRoles struct {
	pb.UnimplementedCertAuthServer
	store  sealedJSON
	props  proposer
	logger hclog.Logger
}

// exists reports whether a role is stored (create versus update).
func (c *certRoles) exists(name string) bool {
	_, err := c.store.state.SysGet(sysCertRolePref + name)
	return err == nil
}

// cleanNames trims and drops empty names.
func cleanNames(in []string) []string {
	var out []string
	for _, n := range in {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// WriteRole creates or replaces a role; it must name the certificates it
// takes (by common name or DNS name), or any client certificate of the
// CA would log in to it.
func (c *certRoles) WriteRole(ctx context.Context, req *pb.CertRole) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validRoleName("cert", name); err != nil {
		return nil, err
	}
	tok, err := roleTokenOf(req.GetToken())
	if err != nil {
		return nil, err
	}
	r := certRole{AllowedCommonNames: cleanNames(req.GetAllowedCommonNames()), AllowedDNSSANs: cleanNames(req.GetAllowedDnsSans()), roleToken: tok}
	if len(r.AllowedCommonNames) == 0 && len(r.AllowedDNSSANs) == 0 {
		return nil, invalidf("cert: a role needs allowed_common_names or allowed_dns_sans: name the certificates that log in to it")
	}
	if len(r.AllowedCommonNames) > maxRoleListLength || len(r.AllowedDNSSANs) > maxRoleListLength {
		return nil, invalidf("cert: at most %d allowed names of each kind", maxRoleListLength)
	}
	e, err := c.store.entry(sysCertRolePref+name, r)
	if err != nil {
		return nil, err
	}
	res, err := c.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{e}})
	if err != nil {
		return nil, err
	}
	c.logger.Info("cert role written", "role", name)
	return &pb.AuthWriteResponse{RaftIndex: res.Index}, nil
}

// role reads the role a request names, or says it does not exist.
func (c *certRoles) role(name string) (*certRole, error) {
	if err := validRoleName("cert", name); err != nil {
		return nil, err
	}
	var r certRole
	_, err := c.store.get(sysCertRolePref+name, &r)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, roleNotFound("cert", name, "coffer cert role list")
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// ReadRole returns a role.
func (c *certRoles) ReadRole(_ context.Context, req *pb.AuthRoleRequest) (*pb.CertRole, error) {
	r, err := c.role(req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.CertRole{Name: req.GetName(), AllowedCommonNames: r.AllowedCommonNames, AllowedDnsSans: r.AllowedDNSSANs, Token: r.roleToken.pb()}, nil
}

// ListRoles returns the roles' names.
func (c *certRoles) ListRoles(context.Context, *pb.AuthListRequest) (*pb.AuthListResponse, error) {
	names, err := c.store.names(sysCertRolePref)
	if err != nil {
		return nil, err
	}
	return &pb.AuthListResponse{Names: names}, nil
}

// DeleteRole removes a role.
func (c *certRoles) DeleteRole(ctx context.Context, req *pb.AuthRoleRequest) (*pb.AuthWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if _, err := c.role(req.GetName()); err != nil {
		return nil, err
	}
	index, err := deleteKeys(ctx, c.props, []string{sysCertRolePref + req.GetName()})
	if err != nil {
		return nil, err
	}
	c.logger.Info("cert role deleted", "role", req.GetName())
	return &pb.AuthWriteResponse{RaftIndex: index}, nil
}

// login maps the caller's certificate to a role: the one named, which
// must match it, or else the first role (by name) that does.
func (c *certRoles) login(_ context.Context, call *loginCall) (*loginGrant, error) {
	cert := call.cert
	if cert == nil {
		return nil, deniedf("cert: the call came without a client certificate of the cluster's CA: log in over TLS with one (-client-cert and -client-key, or -certs-dir)")
	}
	if tlsutil.IsNode(cert) {
		return nil, deniedf("cert: a node certificate does not log in: use a client certificate (`coffer cert create-client`)")
	}
	cn := cert.Subject.CommonName
	grant := func(name string, r *certRole) *loginGrant {
		return &loginGrant{method: "cert", role: name, display: "cert-" + name, token: r.roleToken}
	}
	if name := call.data["name"]; name != "" {
		if err := validRoleName("cert", name); err != nil {
			return nil, err
		}
		var r certRole
		_, err := c.store.get(sysCertRolePref+name, &r)
		if errors.Is(err, fsm.ErrNotFound) {
			return nil, &notHere{deniedf("cert: no role named %q: list them with `coffer cert role list`", clipName(name))}
		}
		if err != nil {
			return nil, err
		}
		if !r.matches(cn, cert.DNSNames) {
			return nil, deniedf("cert: the certificate (common name %q) does not match role %q's allowed names", clipName(cn), clipName(name))
		}
		return grant(name, &r), nil
	}
	names, err := c.store.names(sysCertRolePref)
	if err != nil {
		return nil, err
	}
	for _, name := range names { // sorted by the state's key order
		var r certRole
		if _, err := c.store.get(sysCertRolePref+name, &r); err != nil {
			continue
		}
		if r.matches(cn, cert.DNSNames) {
			return grant(name, &r), nil
		}
	}
	return nil, &notHere{deniedf("cert: no role matches the certificate (common name %q): write one with `coffer cert role write`", clipName(cn))}
}
