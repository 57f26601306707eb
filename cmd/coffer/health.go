package main

import (
	"context"
	"fmt"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// cmdHealthcheck asks a node's standard gRPC health service whether its
// process serves; Docker's HEALTHCHECK runs it (the image has no shell).
func cmdHealthcheck(e *env, args []string) error {
	f := newFlags("coffer healthcheck", "[flags]", `
Ask the node at -address (first endpoint) whether it is serving, through the
standard gRPC health service. Exit code 0: serving (sealed or not); 1: not.
With -unsealed, exit 0 only while the node is unsealed and serves KV. The
address follows the rules of every command: http://host:port for a node
without TLS.`).withClient()
	unsealed := f.fs.Bool("unsealed", false, "require the node to be unsealed (health of coffer.v1.KV)")
	timeout := f.fs.Duration("timeout", 2*time.Second, "how long to wait for the answer")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	cfg, err := f.clientConfig(e)
	if err != nil {
		return err
	}
	// One node, and no token: the health service is public.
	cfg.Endpoints, cfg.Token = cfg.Endpoints[:1], ""
	cfg.DialTimeout = max(*timeout, time.Millisecond)
	cl, err := f.clientWith(cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	service := ""
	if *unsealed {
		service = "coffer.v1.KV"
	}
	addr := cfg.Endpoints[0]
	st, err := cl.Health(ctx, service)
	if err != nil {
		return callError(err, cfg.Endpoints, 0)
	}
	if st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("%s is %s", addr, st)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"address": addr, "status": st.String()})
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", addr, st)
	return nil
}
