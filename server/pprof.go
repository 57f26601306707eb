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
	lis, err := net.Listen("tcp", s.cfg.PprofAddr)
	if err != nil {
		return fmt.Errorf("server: -pprof-addr %s: %w", s.cfg.PprofAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.pprofAddr = lis.Addr().String()
	s.logger.Info("serving pprof", "address", s.pprofAddr)
	s.life.bg.Add(2)
	go func() {
		defer s.life.bg.Done()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Warn("pprof server stopped", "error", err)
		}
	}()
	go func() {
		defer s.life.bg.Done()
		<-s.life.stop
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	return nil
}

// PprofAddr is the address pprof listens on, or "" when it is off.
func (s *Server) PprofAddr() string { return s.pprofAddr }
