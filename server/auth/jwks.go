package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Defaults of RemoteKeys.
const (
	// DefaultFetchTimeout bounds one fetch of a key set.
	DefaultFetchTimeout = 5 * time.Second
	// DefaultMinRefresh is the least time between two fetches caused by
	// tokens naming a key the set lacks, so that a flood of such tokens
	// costs the issuer one fetch, not one each.
	DefaultMinRefresh = 10 * time.Second
	// DefaultMaxAge is how long a fetched set is used before it is
	// fetched again (a key the issuer withdrew stops working then).
	DefaultMaxAge = time.Hour
)

// CheckURL accepts an https:// URL, or an http:// one when allowHTTP (a
// node that runs without TLS), without credentials in it.
func CheckURL(raw string, allowHTTP bool) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("auth: jwks_url %q is not an absolute URL (https://host/path)", shown(raw))
	}
	if u.User != nil {
		return errors.New("auth: jwks_url carries credentials: give a URL without user:password@")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if allowHTTP {
			return nil
		}
		return errors.New("auth: jwks_url is http://: the keys must come over https:// (http is only accepted by a node running -insecure)")
	}
	return fmt.Errorf("auth: jwks_url has scheme %q: use https://", shown(u.Scheme))
}

// RemoteKeys is a key set fetched from a JWKS URL and kept: fetched on
// first use, again when it is older than MaxAge, and — at most once per
// MinRefresh — when a token names a key it does not hold (the issuer
// rotated its keys). Safe for concurrent use.
type RemoteKeys struct {
	url    string
	client *http.Client
	// MinRefresh and MaxAge: see DefaultMinRefresh and DefaultMaxAge.
	MinRefresh time.Duration
	MaxAge     time.Duration
	now        func() time.Time

	mu      sync.Mutex
	keys    *KeySet
	fetched time.Time // of keys
	tried   time.Time // last fetch attempt
}

// RemoteOptions configure NewRemoteKeys.
type RemoteOptions struct {
	// CAPEM verifies the server (default: the system's roots).
	CAPEM string
	// AllowHTTP accepts an http:// URL.
	AllowHTTP bool
	// Timeout bounds one fetch (0: DefaultFetchTimeout).
	Timeout time.Duration
}

// NewRemoteKeys returns the key set at rawURL; nothing is fetched yet.
func NewRemoteKeys(rawURL string, o RemoteOptions) (*RemoteKeys, error) {
	if err := CheckURL(rawURL, o.AllowHTTP); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(o.CAPEM)) {
			return nil, errors.New("auth: jwks_ca_pem holds no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultFetchTimeout
	}
	client := &http.Client{
		Timeout: o.Timeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     tlsCfg,
			TLSHandshakeTimeout: o.Timeout,
			MaxIdleConns:        2,
			IdleConnTimeout:     time.Minute,
		},
		// A redirect could lead to a plain http:// address or anywhere
		// else: the configured URL must be the key set's own.
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("redirected: set jwks_url to the final address")
		},
	}
	return &RemoteKeys{url: rawURL, client: client, MinRefresh: DefaultMinRefresh, MaxAge: DefaultMaxAge, now: time.Now}, nil
}

// URL is the key set's address.
func (r *RemoteKeys) URL() string { return r.url }

// Close drops the idle connections.
func (r *RemoteKeys) Close() { r.client.CloseIdleConnections() }

// Keys returns the key set for a token naming kid, fetching it when
// needed (see RemoteKeys). A failed fetch keeps the set held before, if
// any; without one it fails with ErrKeysUnavailable.
func (r *RemoteKeys) Keys(ctx context.Context, kid string) (*KeySet, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	stale := r.keys == nil || now.Sub(r.fetched) >= r.MaxAge
	unknown := kid != "" && !r.keys.has(kid) && now.Sub(r.tried) >= r.MinRefresh
	if !stale && !unknown {
		return r.keys, nil
	}
	r.tried = now
	keys, err := r.fetch(ctx)
	if err != nil {
		if r.keys != nil {
			return r.keys, nil
		}
		return nil, err
	}
	r.keys, r.fetched = keys, now
	return keys, nil
}

// fetch reads and parses the key set.
func (r *RemoteKeys) fetch(ctx context.Context) (*KeySet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w from %s: %v", ErrKeysUnavailable, r.url, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w from %s: %v", ErrKeysUnavailable, r.url, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w from %s: the server answered %s", ErrKeysUnavailable, r.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxKeySetSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w from %s: %v", ErrKeysUnavailable, r.url, err)
	}
	keys, err := ParseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("%w from %s: %v", ErrKeysUnavailable, r.url, err)
	}
	return keys, nil
}

// unwrapURLError drops the "Get URL:" prefix net/http adds (the URL is
// named by the caller).
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
