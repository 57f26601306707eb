package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// httpBench drives KV version 2 of the Vault-compatible HTTP API with
// plain net/http: HTTP/1.1, one keep-alive connection per worker, no
// client library. So the figures are the server's: vault/api would add its
// retry wrapper and the decoding of every answer into a Secret to each
// call, on the same two cores as the nodes.
type httpBench struct {
	// urls are the nodes' base URLs (https://host:port); worker w talks
	// to urls[w%len(urls)].
	urls        []string
	token       string
	consistency string // X-Coffer-Consistency of reads ("" for default)
	// clients holds one http.Client per group of eight workers, as the
	// gRPC workers share one api.Client per eight.
	clients []*http.Client
}

// httpStatusError is an HTTP API answer other than the one expected.
type httpStatusError struct{ code int }

func (e *httpStatusError) Error() string { return fmt.Sprintf("HTTP %d", e.code) }

// newHTTPBench makes the clients of workers workers towards addrs
// (host:port, or http:// / https:// URLs; a bare host:port speaks TLS when
// tlsCfg is set, as the gRPC endpoints do).
func newHTTPBench(addrs []string, tlsCfg *tls.Config, token, consistency string, workers int) (*httpBench, error) {
	if len(addrs) == 0 {
		return nil, &cliError{code: 1, msg: "-protocol=http needs the nodes' HTTP API: give -http-addr=host:port[,host:port…] (a node's -http-addr) or set VAULT_ADDR"}
	}
	b := &httpBench{token: token}
	if consistency != "default" {
		b.consistency = consistency
	}
	for _, a := range addrs {
		switch {
		case strings.HasPrefix(a, "https://"), strings.HasPrefix(a, "http://"):
			b.urls = append(b.urls, a)
		case tlsCfg != nil:
			b.urls = append(b.urls, "https://"+a)
		default:
			b.urls = append(b.urls, "http://"+a)
		}
	}
	var tc *tls.Config
	if tlsCfg != nil {
		tc = tlsCfg.Clone()
		// HTTP/1.1: the gRPC client's configuration may offer h2 only.
		tc.NextProtos = []string{"http/1.1"}
	}
	per := min(workers, 8)
	for range (workers + 7) / 8 {
		b.clients = append(b.clients, &http.Client{Transport: &http.Transport{
			TLSClientConfig:     tc,
			MaxIdleConnsPerHost: per,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		}})
	}
	return b, nil
}

// close drops the idle connections.
func (b *httpBench) close() {
	for _, c := range b.clients {
		c.CloseIdleConnections()
	}
}

// putBody is the body of a KV v2 write of {"v": val}.
func putBody(val string) ([]byte, error) {
	return json.Marshal(map[string]any{"data": map[string]string{"v": val}})
}

// put writes body to secret path (secret/…) as worker w.
func (b *httpBench) put(ctx context.Context, w int, path string, body []byte) error {
	return b.do(ctx, w, http.MethodPost, path, body)
}

// get reads secret path as worker w.
func (b *httpBench) get(ctx context.Context, w int, path string) error {
	return b.do(ctx, w, http.MethodGet, path, nil)
}

// do sends one request for secret path (secret/<rest>: KV v2's
// /v1/secret/data/<rest>) and drains the answer, which must be 200.
func (b *httpBench) do(ctx context.Context, w int, method, path string, body []byte) error {
	rest := strings.TrimPrefix(path, "secret/")
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.urls[w%len(b.urls)]+"/v1/secret/data/"+rest, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", b.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	} else if b.consistency != "" {
		req.Header.Set("X-Coffer-Consistency", b.consistency)
	}
	resp, err := b.clients[w/8].Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &httpStatusError{resp.StatusCode}
	}
	return err
}

// prepopulate writes every key once, from 16 workers (preloadKeys,
// without its progress lines).
func (b *httpBench) prepopulate(ctx context.Context, keys int, key func(int) string, body []byte) error {
	_, err := preloadKeys(ctx, 0, keys, 16, io.Discard, func(ctx context.Context, w, i int) error {
		return b.put(ctx, w%(len(b.clients)*8), key(i), body)
	})
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("writing the keys to read over HTTP: %v", err)}
	}
	return nil
}
