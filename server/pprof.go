package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPprof serves Go's profiles on cfg.PprofAddr until the node stops.
// It uses its own mux: nothing is registered on http.DefaultServeMux.
func (s *Server) startPprof() error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	addr, err := s.serveOps("pprof", s.cfg.PprofAddr, mux)
	if err != nil {
		return fmt.Errorf("server: -pprof-addr %s: %w", s.cfg.PprofAddr, err)
	}
	s.pprofAddr = addr
	return nil
}

// serveOps serves an operator's HTTP listener (pprof, metrics) on addr
// until the node stops, and returns the address it listens on.
func (s *Server) serveOps(what, addr string, h http.Handler) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	// ErrorLog: net/http's own lines (a bad request, a failed accept)
	// go through the node's logger, not the process's standard logger.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: s.logger.Named(what).StandardLogger(nil)}
	s.logger.Info("serving "+what, "address", lis.Addr().String())
	s.life.bg.Add(2)
	go func() {
		defer s.life.bg.Done()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Warn(what+" server stopped", "error", err)
		}
	}()
	go func() {
		defer s.life.bg.Done()
		<-s.life.stop
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	return lis.Addr().String(), nil
}

// PprofAddr is the address pprof listens on, or "" when it is off.
func (s *Server) PprofAddr() string { return s.pprofAddr }
