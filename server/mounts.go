package server

import (
	"context"
	"strings"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
)

// mountTable is what sys/mounts and the vault CLI's preflight see: the
// KV version 2 mount, the database engine, the system backend and the auth methods a node
// serves (auth/kubernetes/ is the JWT method under Kubernetes' name).
func mountTable() []*pb.Mount {
	out := make([]*pb.Mount, 0, len(mounts)+6)
	for _, m := range mounts {
		out = append(out, &pb.Mount{Path: m, Type: "kv", Version: "2", Description: "key/value secret storage"})
	}
	return append(out,
		&pb.Mount{Path: "database/", Type: "database", Description: "PostgreSQL credentials: dynamic users under leases, static roles"},
		&pb.Mount{Path: "sys/", Type: "system", Description: "system endpoints used for control, policy and debugging"},
		&pb.Mount{Path: "auth/token/", Type: "token", Description: "token based credentials", Auth: true},
		&pb.Mount{Path: "auth/approle/", Type: "approle", Description: "AppRole logins", Auth: true},
		&pb.Mount{Path: "auth/jwt/", Type: "jwt", Description: "JWT and OIDC logins", Auth: true},
		&pb.Mount{Path: "auth/kubernetes/", Type: "kubernetes", Description: "Kubernetes service account logins (the JWT method)", Auth: true},
		&pb.Mount{Path: "auth/cert/", Type: "cert", Description: "TLS client certificate logins", Auth: true},
	)
}

// Mounts lists the mounts, or finds the one a path is under.
func (s *sysServer) Mounts(ctx context.Context, req *pb.MountsRequest) (*pb.MountsResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	all := mountTable()
	p := req.GetPath()
	if p == "" {
		return &pb.MountsResponse{Mounts: all}, nil
	}
	for _, m := range all {
		if strings.HasPrefix(p+"/", m.Path) {
			return &pb.MountsResponse{Mounts: []*pb.Mount{m}}, nil
		}
	}
	return nil, withMessage(fsm.ErrNotFound, "no mount at %q: paths start with %s", p, strings.Join(mounts, " or "))
}

// Metrics returns this node's own metrics in Prometheus' text format
// (Vault's sys/metrics?format=prometheus); the route never forwards it.
func (s *sysServer) Metrics(ctx context.Context, _ *pb.MetricsRequest) (*pb.MetricsResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	text, err := s.metrics()
	if err != nil {
		return nil, err
	}
	return &pb.MetricsResponse{Text: text}, nil
}
