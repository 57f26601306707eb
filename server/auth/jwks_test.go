package auth

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// jwksServer serves a key set over TLS on loopback; the set can change.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	doc     []byte
	fetches int
}

func newJWKSServer(t *testing.T, doc []byte) *jwksServer {
	s := &jwksServer{doc: doc}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.fetches++
		if r.URL.Path != "/keys" {
			http.NotFound(w, r)
			return
		}
		w.Write(s.doc)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(doc []byte) {
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
}

func (s *jwksServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

func (s *jwksServer) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw}))
}

// TestRemoteKeys: the set is fetched once and kept; a token naming a new
// key fetches it again (once per MinRefresh); the server's certificate
// must verify against the configured CA; a server that is down, answers
// an error or redirects leaves no keys.
func TestRemoteKeys(t *testing.T) {
	ctx := context.Background()
	k1, k2 := newRSAIssuer(t, "k1"), newECIssuer(t, "k2")
	srv := newJWKSServer(t, jwksOf(t, k1))
	r, err := NewRemoteKeys(srv.URL+"/keys", RemoteOptions{CAPEM: srv.caPEM()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.MinRefresh = time.Hour
	for range 3 {
		keys, err := r.Keys(ctx, "k1")
		if err != nil || !keys.has("k1") {
			t.Fatalf("keys: %v", err)
		}
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d fetches for three logins, want 1", n)
	}
	// The issuer rotates: an unknown kid fetches again, but not within
	// MinRefresh of the last fetch.
	srv.set(jwksOf(t, k1, k2))
	if keys, _ := r.Keys(ctx, "k2"); keys.has("k2") || srv.count() != 1 {
		t.Fatalf("fetched again within MinRefresh (%d fetches)", srv.count())
	}
	r.MinRefresh = 0
	keys, err := r.Keys(ctx, "k2")
	if err != nil || !keys.has("k2") || srv.count() != 2 {
		t.Fatalf("after rotation: %v, %d fetches", err, srv.count())
	}
	tok, err := ParseToken(k2.sign(t, good(time.Now()), nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Verify(keys); err != nil {
		t.Fatalf("the rotated key: %v", err)
	}

	// A server whose certificate the roots do not vouch for (no CA given:
	// the system's roots).
	bad, err := NewRemoteKeys(srv.URL+"/keys", RemoteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Keys(ctx, "k1"); !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted server: %v", err)
	}
	// Not found, and down.
	missing, _ := NewRemoteKeys(srv.URL+"/nope", RemoteOptions{CAPEM: srv.caPEM()})
	defer missing.Close()
	if _, err := missing.Keys(ctx, ""); !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: %v", err)
	}
	down := httptest.NewTLSServer(http.NotFoundHandler())
	downURL, downCA := down.URL, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: down.Certificate().Raw}))
	down.Close()
	gone, _ := NewRemoteKeys(downURL+"/keys", RemoteOptions{CAPEM: downCA, Timeout: time.Second})
	defer gone.Close()
	if _, err := gone.Keys(ctx, ""); !errors.Is(err, ErrKeysUnavailable) || strings.Contains(err.Error(), "\n") {
		t.Errorf("down: %v", err)
	}
	// A redirect is not followed.
	redir := httptest.NewTLSServer(http.RedirectHandler(srv.URL+"/keys", http.StatusFound))
	defer redir.Close()
	rr, _ := NewRemoteKeys(redir.URL, RemoteOptions{CAPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: redir.Certificate().Raw}))})
	defer rr.Close()
	if _, err := rr.Keys(ctx, ""); !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("redirect: %v", err)
	}
}

func TestCheckURL(t *testing.T) {
	for _, c := range []struct {
		url       string
		allowHTTP bool
		want      string
	}{
		{"https://issuer.example/keys", false, ""},
		{"http://issuer.example/keys", false, "http://"},
		{"http://issuer.example/keys", true, ""},
		{"https://user:pw@issuer.example/keys", false, "credentials"},
		{"ftp://issuer.example/keys", false, "scheme"},
		{"/keys", false, "absolute URL"},
		{"::", false, "absolute URL"},
	} {
		err := CheckURL(c.url, c.allowHTTP)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckURL(%q, %v) = %v, want %q", c.url, c.allowHTTP, err, c.want)
		}
	}
	if _, err := NewRemoteKeys("https://x/keys", RemoteOptions{CAPEM: "nope"}); err == nil {
		t.Error("a CA that is not PEM was accepted")
	}
}
