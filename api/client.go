package api

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Environment variables read by ConfigFromEnv.
const (
	// EnvAddr holds a comma-separated list of API endpoints (host:port).
	EnvAddr = "COFFER_ADDR"
	// EnvToken holds the token sent with every call.
	EnvToken = "COFFER_TOKEN"
	// DefaultAddr is the endpoint used when none is configured.
	DefaultAddr = "127.0.0.1:8400"
)

// ErrNoEndpoints is returned by New when the endpoint list is empty.
var ErrNoEndpoints = errors.New("api: no endpoints: set COFFER_ADDR or -address to host:port[,host:port…]")

// Config configures a Client. The zero value of each field means its default.
type Config struct {
	// Endpoints are the API addresses (host:port) of the cluster's nodes.
	Endpoints []string
	// Token is sent as "authorization: Bearer <token>" on every call.
	Token string
	// Timeout bounds one call, retries included, when the caller's context
	// has no deadline. Default 30s.
	Timeout time.Duration
	// Retries is how many further endpoints a call may try after a
	// retryable failure. Default: one pass over the endpoint list, at least 2.
	Retries int
}

// ConfigFromEnv returns a Config filled from COFFER_ADDR and COFFER_TOKEN.
func ConfigFromEnv() Config {
	return Config{Endpoints: SplitEndpoints(os.Getenv(EnvAddr)), Token: os.Getenv(EnvToken)}
}

// SplitEndpoints splits a comma-separated endpoint list, dropping blanks and
// an optional http:// or grpc:// scheme.
func SplitEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		for _, p := range []string{"grpc://", "http://", "https://"} {
			e = strings.TrimPrefix(e, p)
		}
		e = strings.TrimSuffix(e, "/")
		if e != "" {
			out = append(out, e)
		}
	}
	return out
}

// Client talks to a coffer cluster through an endpoint list. It is safe for
// concurrent use.
type Client struct {
	cfg     Config
	conns   []*grpc.ClientConn
	next    atomic.Uint32 // endpoint the next call starts with
	closeMu sync.Once
}

// New dials (lazily) every endpoint of cfg.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, ErrNoEndpoints
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = max(len(cfg.Endpoints), 2)
	}
	c := &Client{cfg: cfg}
	for _, ep := range cfg.Endpoints {
		cc, err := grpc.NewClient(ep,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
		)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("api: endpoint %q: %w", ep, err)
		}
		c.conns = append(c.conns, cc)
	}
	return c, nil
}

// Close closes every connection. It is idempotent.
func (c *Client) Close() error {
	var errs []error
	c.closeMu.Do(func() {
		for _, cc := range c.conns {
			errs = append(errs, cc.Close())
		}
	})
	return errors.Join(errs...)
}

// Endpoints returns the configured endpoint list.
func (c *Client) Endpoints() []string { return append([]string(nil), c.cfg.Endpoints...) }

// outgoing adds the token and a default deadline to ctx.
func (c *Client) outgoing(ctx context.Context) (context.Context, context.CancelFunc) {
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
	}
	if c.cfg.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.cfg.Token)
	}
	return ctx, cancel
}

// Retryable reports whether err means "this node cannot answer now, another
// one (or a later try) may": Unavailable, the status of a sealed node, a node
// without a leader, or a node that is down.
func Retryable(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// call runs fn against endpoints, starting with the preferred one and moving
// on while the answer is retryable. fn must be safe to repeat: reads are, and
// writes carry a request id.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	ctx, cancel := c.outgoing(ctx)
	defer cancel()
	start := int(c.next.Load())
	var err error
	for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
		i := (start + attempt) % len(c.conns)
		err = fn(ctx, c.conns[i])
		if err == nil {
			c.next.Store(uint32(i))
			return nil
		}
		if !Retryable(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// callNode runs fn against the first endpoint only: for calls about one
// node (unseal, seal, status) moving on would act on the wrong node.
func (c *Client) callNode(ctx context.Context, fn func(ctx context.Context, cc *grpc.ClientConn) error) error {
	ctx, cancel := c.outgoing(ctx)
	defer cancel()
	return fn(ctx, c.conns[0])
}

// NewRequestID returns a random id that makes a write idempotent.
func NewRequestID() string {
	return rand.Text()
}
