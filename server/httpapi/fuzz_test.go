package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"coffer/internal/testcluster"
)

// FuzzRequest sends arbitrary requests to a real node: whatever the
// method, path, headers and body, the node answers with a status a Vault
// client knows, never 500, and every error in Vault's shape.
//
//	go test -run '^$' -fuzz FuzzRequest -fuzztime 60s ./server/httpapi/
func FuzzRequest(f *testing.F) {
	seeds := []struct {
		method, path, ctype, index string
		body                       string
	}{
		{"PUT", "/v1/secret/data/app/db", "application/json", "", `{"data": {"user": "app"}, "options": {"cas": 0}}`},
		{"GET", "/v1/secret/data/app/db?version=1", "", "djE6Y29mZmVyOjU6NTo=", ""},
		{"PATCH", "/v1/secret/data/app/db", "application/merge-patch+json", "", `{"data": {"user": null}}`},
		{"LIST", "/v1/secret/metadata/app/", "", "", ""},
		{"GET", "/v1/secret/metadata/?list=true&limit=2&after=a", "", "", ""},
		{"POST", "/v1/secret/destroy/app/db", "application/json", "", `{"versions": [1, 2]}`},
		{"POST", "/v1/secret/metadata/app/db", "text/plain", "", `{"max_versions": 3, "cas_required": true}`},
		{"GET", "/v1/sys/health?standbyok=true&sealedcode=200", "", "", ""},
		{"PUT", "/v1/sys/unseal", "", "", `{"key": "00ff"}`},
		{"PUT", "/v1/sys/init", "", "", `{"secret_shares": 1, "secret_threshold": 1}`},
		{"GET", "/v1/sys/internal/ui/mounts/secret/app", "", "", ""},
		{"PUT", "/v1/secret/data/a/../b", "", "", `{"data": {"k": "v"}}`},
		{"PUT", "/v1/secret/data/x", "application/json", "", `{"data": {"k": [1, {"a": null}]}}`},
		{"DELETE", "/v1/secret/data/x", "", "not base64", ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.ctype, s.index, []byte(s.body))
	}
	c := testcluster.StartUnsealed(f, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(f)
	tr := &http.Transport{TLSClientConfig: c.ClientTLS()}
	f.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	known := map[int]bool{200: true, 204: true, 400: true, 403: true, 404: true, 405: true, 408: true, 412: true, 413: true, 415: true, 429: true, 501: true, 503: true}

	f.Fuzz(func(t *testing.T, method, path, ctype, index string, body []byte) {
		if _, err := url.ParseRequestURI(path); err != nil || len(path) == 0 || path[0] != '/' {
			return
		}
		req, err := http.NewRequest(method, n.HTTPURL()+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client can send
		}
		req.Header.Set("X-Vault-Token", c.Token)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if index != "" {
			req.Header.Set("X-Vault-Index", index)
		}
		if err := req.Header.Write(io.Discard); err != nil {
			return
		}
		resp, err := hc.Do(req)
		if err != nil {
			return // the client refused to send it (an invalid header value)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %q: reading the answer: %v", method, path, err)
		}
		if !known[resp.StatusCode] {
			t.Fatalf("%s %q (%q): status %d: %s", method, path, body, resp.StatusCode, b)
		}
		if method == http.MethodHead || resp.StatusCode == http.StatusNoContent {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("%s %q: status %d with a body that is not JSON: %q", method, path, resp.StatusCode, b)
		}
		if resp.StatusCode >= 400 && !strings.HasPrefix(req.URL.Path, "/v1/sys/health") {
			var e struct {
				Errors *[]string `json:"errors"`
			}
			if err := json.Unmarshal(b, &e); err != nil || e.Errors == nil {
				t.Fatalf("%s %q: status %d without Vault's error shape: %q", method, path, resp.StatusCode, b)
			}
		}
	})
}
