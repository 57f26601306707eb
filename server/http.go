package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"coffer/server/httpapi"
)

// inproc runs the node's unary gRPC methods in process, through the same
// interceptors as a call that came over the network (panic recovery, the
// request-byte budget, the gateway: route, token, policy, audit,
// forwarding). The HTTP API calls the services this way: no rule exists
// twice, and no call goes through the gRPC port.
type inproc struct {
	methods map[string]inprocMethod
	chain   grpc.UnaryServerInterceptor
	state   interface{ AppliedIndex() uint64 }
	budget  *inflight
	gw      *gateway
}

type inprocMethod struct {
	srv     any
	handler grpc.MethodHandler
}

// registrar registers a service with the gRPC server and records its
// unary methods for inproc.
type registrar struct {
	grpc *grpc.Server
	in   *inproc
}

// RegisterService implements grpc.ServiceRegistrar.
func (r registrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.grpc.RegisterService(desc, impl)
	for _, m := range desc.Methods {
		r.in.methods["/"+desc.ServiceName+"/"+m.MethodName] = inprocMethod{srv: impl, handler: m.Handler}
	}
}

// chainUnary composes interceptors, the first outermost, as
// grpc.ChainUnaryInterceptor does.
func chainUnary(ints ...grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		next := handler
		for i := len(ints) - 1; i >= 0; i-- {
			ic, h := ints[i], next
			next = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, h) }
		}
		return next(ctx, req)
	}
}

// Invoke implements httpapi.Backend: the call carries the caller's token
// as gRPC metadata and the HTTP connection's address and TLS state as its
// peer, so the gateway sees what it sees of a gRPC call.
func (p *inproc) Invoke(ctx context.Context, c httpapi.Caller, method string, req proto.Message) (proto.Message, error) {
	m, ok := p.methods[method]
	if !ok {
		return nil, toStatus(withMessage(ErrNoRoute, "%s has no handler on this node", method))
	}
	ctx = callContext(ctx, c)
	dec := func(v any) error {
		dst, ok := v.(proto.Message)
		if !ok {
			return fmt.Errorf("server: %s takes %T, not a message", method, v)
		}
		proto.Merge(dst, req)
		return nil
	}
	out, err := m.handler(m.srv, ctx, dec, p.chain)
	if err != nil {
		return nil, err
	}
	msg, ok := out.(proto.Message)
	if !ok {
		return nil, toStatus(fmt.Errorf("server: %s answered %T, not a message", method, out))
	}
	return msg, nil
}

// callContext is what the gateway reads of a gRPC call, for an HTTP
// caller: the token as metadata, the connection's address and TLS state
// as the peer.
func callContext(ctx context.Context, c httpapi.Caller) context.Context {
	md := metadata.MD{}
	if c.Token != "" {
		md.Set("authorization", "Bearer "+c.Token)
	}
	ctx = metadata.NewIncomingContext(ctx, md)
	pr := &peer.Peer{Addr: tcpAddr(c.RemoteAddr)}
	if c.TLS != nil {
		pr.AuthInfo = credentials.TLSInfo{State: *c.TLS, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	}
	return peer.NewContext(ctx, pr)
}

// Authenticate implements httpapi.Backend: the gateway's own checks of a
// call that needs a token (the node unsealed, the token valid), made
// before an HTTP body is read, so that a stranger's body costs the node
// nothing. The call is checked again, whole, when it runs.
func (p *inproc) Authenticate(ctx context.Context, c httpapi.Caller) error {
	ctx = callContext(ctx, c)
	if err := p.gw.admitSealed(ctx); err != nil {
		return p.gw.statusError("http", err)
	}
	_, err := p.gw.authenticate(ctx)
	return p.gw.statusError("http", err)
}

// Reserve implements httpapi.Backend: an HTTP body takes its bytes from
// the node's request-byte budget as it is read, as a gRPC message does.
func (p *inproc) Reserve(ctx context.Context, n int64) (func(), error) {
	g, err := p.budget.acquire(ctx, n)
	if err != nil {
		return nil, toStatus(err)
	}
	return g.release, nil
}

// AppliedIndex implements httpapi.Backend.
func (p *inproc) AppliedIndex() uint64 { return p.state.AppliedIndex() }

// tcpAddr parses host:port into a *net.TCPAddr (nil when it does not
// parse), as the gRPC peer of a call carries it.
func tcpAddr(s string) net.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// listenHTTP opens the HTTP API's listener (before Start, so that its
// address is known and advertised).
func (s *Server) listenHTTP() error {
	if s.cfg.HTTPAddr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("server: listen on %s: %w (is another coffer or Vault running? pick another -http-addr, or -http-addr= for none)", s.cfg.HTTPAddr, err)
	}
	s.httpLis = lis
	return nil
}

// HTTPURL is the URL of the node's HTTP API as clients reach it
// (https://host:port), "" when it serves none.
func (s *Server) HTTPURL() string {
	if s.httpLis == nil {
		return ""
	}
	scheme := "https"
	if s.tls == nil {
		scheme = "http"
	}
	return scheme + "://" + advertiseAddr(s.httpLis.Addr().String(), s.cfg.Advertise)
}

// HTTPAddr is the address the HTTP API listens on, "" when it serves none.
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// startHTTP serves the HTTP API until the node stops.
func (s *Server) startHTTP() {
	if s.httpLis == nil {
		return
	}
	h := httpapi.New(httpapi.Config{
		Backend: s.inproc, Logger: s.logger.Named("http"), NodeID: s.cfg.NodeID, Version: Version, URL: s.HTTPURL(),
		// JSON's quoting of the largest request gRPC takes.
		MaxBodyBytes: 2 * MaxRequestSize,
	})
	s.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          s.logger.Named("http").StandardLogger(nil),
		// HTTP/1.1 only. Go's HTTP/2 server sends an answer's headers and
		// body apart, so a node that dies between the two leaves its
		// client a cut body, which vault/api does not retry; an HTTP/1.1
		// answer (up to 4 KiB, most secrets) leaves in one write, so a
		// dying node's client sees no answer at all and retries another
		// node. Vault's clients speak HTTP/1.1 alike.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	s.logger.Info("serving the Vault-compatible HTTP API", "address", s.HTTPURL())
	s.life.bg.Add(1)
	go func() {
		defer s.life.bg.Done()
		var err error
		if s.tls != nil {
			s.http.TLSConfig = s.tls.HTTPServerConfig(s.cfg.TLSRequireClientCert)
			err = s.http.ServeTLS(s.httpLis, "", "")
		} else {
			err = s.http.Serve(s.httpLis)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("the HTTP API stopped", "error", err)
		}
	}()
}

// stopHTTP stops the HTTP API: gracefully within ctx, then at once.
func (s *Server) stopHTTP(ctx context.Context) {
	if s.http == nil {
		if s.httpLis != nil {
			s.httpLis.Close()
		}
		return
	}
	if ctx == nil {
		_ = s.http.Close()
		return
	}
	if err := s.http.Shutdown(ctx); err != nil {
		_ = s.http.Close()
	}
}
