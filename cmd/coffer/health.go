package main

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"coffer/api"
)

// cmdHealthcheck asks a node's standard gRPC health service whether its
// process serves; Docker's HEALTHCHECK runs it (the image has no shell).
func cmdHealthcheck(e *env, args []string) error {
	f := newFlags("coffer healthcheck", "[flags]", `
Ask the node at -address (first endpoint) whether it is serving, through the
standard gRPC health service. Exit code 0: serving (sealed or not); 1: not.
With -unsealed, exit 0 only while the node is unsealed and serves KV.`).withClient()
	unsealed := f.fs.Bool("unsealed", false, "require the node to be unsealed (health of coffer.v1.KV)")
	timeout := f.fs.Duration("timeout", 2*time.Second, "how long to wait for the answer")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	addr := f.address
	if addr == "" {
		addr = e.getenv(api.EnvAddr)
	}
	eps := api.SplitEndpoints(addr)
	if len(eps) == 0 {
		eps = []string{api.DefaultAddr}
	}
	creds := insecure.NewCredentials()
	tlsCfg, err := f.clientTLS(e)
	if err != nil {
		return err
	}
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg)
	}
	conn, err := grpc.NewClient(eps[0], grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("endpoint %q: %w", eps[0], err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	service := ""
	if *unsealed {
		service = "coffer.v1.KV"
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return callError(err, eps[:1], 0)
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("%s is %s", eps[0], resp.Status)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"address": eps[0], "status": resp.Status.String()})
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", eps[0], resp.Status)
	return nil
}
