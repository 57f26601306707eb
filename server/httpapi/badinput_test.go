package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"coffer/internal/testcluster"
	"coffer/server"
)

// rawClient sends hand-made requests to a node's HTTP API.
type rawClient struct {
	t     testing.TB
	hc    *http.Client
	base  string
	token string
}

func newRawClient(t testing.TB, c *testcluster.Cluster, n *testcluster.Node) *rawClient {
	tr := &http.Transport{TLSClientConfig: c.ClientTLS(), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &rawClient{t: t, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}, base: n.HTTPURL(), token: c.Token}
}

// answer is a response read whole.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// errors decodes Vault's error shape; it fails the test when the body is
// not {"errors": [...]}.
func (a answer) errors(t testing.TB) []string {
	t.Helper()
	var e struct {
		Errors *[]string `json:"errors"`
	}
	if err := json.Unmarshal(a.body, &e); err != nil || e.Errors == nil {
		t.Fatalf("status %d: body is not Vault's error shape {\"errors\": [...]}: %q", a.status, a.body)
	}
	return *e.Errors
}

func (r *rawClient) do(method, path string, body io.Reader, header map[string]string) answer {
	r.t.Helper()
	req, err := http.NewRequest(method, r.base+path, body)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.token != "" {
		req.Header.Set("X-Vault-Token", r.token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// TestBadInput sends requests a client should not send: each gets one
// clear error in Vault's shape, with Vault's status, and nothing is
// written.
func TestBadInput(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	rc := newRawClient(t, c, n)

	huge := bytes.Repeat([]byte("a"), 3<<20)
	cases := []struct {
		name, method, path string
		body               io.Reader
		header             map[string]string
		status             int
		want               string
	}{
		{"malformed JSON", "PUT", "/v1/secret/data/bad/a", strings.NewReader(`{"data": {"k": "v"`), nil, 400, "not valid JSON"},
		{"JSON of the wrong shape", "PUT", "/v1/secret/data/bad/b", strings.NewReader(`{"data": ["k", "v"]}`), nil, 400, `field "data" must be`},
		{"two JSON values", "PUT", "/v1/secret/data/bad/c", strings.NewReader(`{"data": {"k": "v"}} {"data": {}}`), nil, 400, "data after its JSON value"},
		{"no data", "PUT", "/v1/secret/data/bad/d", strings.NewReader(`{"options": {}}`), nil, 400, "no data provided"},
		{"an object value", "PUT", "/v1/secret/data/bad/e", strings.NewReader(`{"data": {"k": {"nested": 1}}}`), nil, 400, "coffer stores string values"},
		{"a negative cas", "PUT", "/v1/secret/data/bad/f", strings.NewReader(`{"data": {"k": "v"}, "options": {"cas": -1}}`), nil, 400, "options.cas"},
		{"form data", "PUT", "/v1/secret/data/bad/g", strings.NewReader(`data=1`), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "send a JSON object"},
		{"a huge body", "PUT", "/v1/secret/data/bad/h", bytes.NewReader(huge), nil, 413, "request body too large"},
		{"a huge body without a length", "PUT", "/v1/secret/data/bad/i", io.MultiReader(bytes.NewReader(huge)), nil, 413, "request body too large"},
		{"an unknown path", "GET", "/v1/sys/nope", nil, nil, 404, `no handler for route "sys/nope"`},
		{"an unknown KV kind", "GET", "/v1/secret/nope/x", nil, nil, 404, "route entry not found"},
		{"outside /v1/", "GET", "/v2/secret/data/x", nil, nil, 404, "route entry not found"},
		{"a method not allowed", "DELETE", "/v1/sys/health", nil, nil, 405, "unsupported operation"},
		{"an unknown method", "BREW", "/v1/secret/data/x", nil, nil, 405, "unsupported operation"},
		{"a dot-dot segment", "PUT", "/v1/secret/data/bad/../j", strings.NewReader(`{"data": {"k": "v"}}`), nil, 400, "invalid path"},
		{"a NUL", "PUT", "/v1/secret/data/bad/k%00l", strings.NewReader(`{"data": {"k": "v"}}`), nil, 400, "control character"},
		{"an empty segment", "PUT", "/v1/secret/data/bad//m", strings.NewReader(`{"data": {"k": "v"}}`), nil, 400, "invalid path"},
		{"a forged index", "GET", "/v1/secret/data/bad/a", nil, map[string]string{"X-Vault-Index": "bm90LWFuLWluZGV4"}, 400, "X-Vault-Index"},
		{"an unknown consistency", "GET", "/v1/secret/data/bad/a", nil, map[string]string{"X-Coffer-Consistency": "eventual"}, 400, "X-Coffer-Consistency"},
		{"a bad staleness", "GET", "/v1/secret/data/bad/a", nil, map[string]string{"X-Coffer-Max-Staleness": "soon"}, 400, "X-Coffer-Max-Staleness"},
		{"a bad version", "GET", "/v1/secret/data/bad/a?version=two", nil, nil, 400, "version"},
		{"a bad health code", "GET", "/v1/sys/health?standbycode=abc", nil, nil, 400, "standbycode"},
		{"a bad unseal key", "PUT", "/v1/sys/unseal", strings.NewReader(`{"key": "%%%"}`), nil, 400, "hex or base64"},
		{"a wrapped answer", "GET", "/v1/secret/data/bad/a", nil, map[string]string{"X-Vault-Wrap-TTL": "5m"}, 400, "response wrapping"},
		{"a namespace", "GET", "/v1/secret/data/bad/a", nil, map[string]string{"X-Vault-Namespace": "team-a/"}, 400, "namespaces"},
		{"a secret path without a name", "PUT", "/v1/secret/data/", strings.NewReader(`{"data": {"k": "v"}}`), nil, 400, "name a secret"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := rc.do(tc.method, tc.path, tc.body, tc.header)
			if a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
			if tc.method == "HEAD" {
				return
			}
			msgs := a.errors(t)
			if len(msgs) != 1 || !strings.Contains(msgs[0], tc.want) {
				t.Fatalf("errors %q: want one error containing %q", msgs, tc.want)
			}
			if strings.Contains(msgs[0], "\n") {
				t.Fatalf("error %q is not one line", msgs[0])
			}
		})
	}
	// curl -d sends a form's content type: a JSON object is read as JSON,
	// as Vault reads it.
	if a := rc.do("PUT", "/v1/secret/data/curl", jsonBody(`{"data": {"k": "v"}}`), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); a.status != http.StatusOK {
		t.Fatalf("a JSON body sent as a form: %d %s", a.status, a.body)
	}
	// Nothing was written under bad/.
	if a := rc.do("LIST", "/v1/secret/metadata/bad/", nil, nil); a.status != http.StatusNotFound {
		t.Fatalf("after the bad requests, LIST secret/metadata/bad/ answered %d: %s", a.status, a.body)
	}
	if a := rc.do("GET", "/v1/secret/data/j", nil, nil); a.status != http.StatusNotFound {
		t.Fatalf("the dot-dot request wrote secret/j: %d %s", a.status, a.body)
	}
}

// jsonBody is a request body.
func jsonBody(s string) io.Reader { return strings.NewReader(s) }

// TestBodiesCountAgainstTheBudget: an HTTP body takes its bytes from the
// node's request-byte budget as it is read, in 64 KiB steps, as a gRPC
// message does; a body that cannot fit is refused with 503 instead of held
// in memory.
func TestBodiesCountAgainstTheBudget(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true, MaxInflightBytes: server.MaxRequestSize})
	n := c.WaitForLeader(t)
	rc := newRawClient(t, c, n)
	const step = 64 << 10
	limit := n.Srv.Inflight().Limit
	steps := limit / step // the slow body takes them all, its last one half-read

	// A body without a length, sent slowly: it holds the whole budget.
	pr, pw := io.Pipe()
	first := make(chan answer, 1)
	go func() { first <- rc.do("PUT", "/v1/secret/data/slow", pr, nil) }()
	prefix := `{"data": {"k": "`
	if _, err := pw.Write([]byte(prefix + strings.Repeat("a", int((steps-1)*step+step/2)-len(prefix)))); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "the slow body's reservation", func() error {
		if st := n.Srv.Inflight(); st.InUse < steps*step {
			return fmt.Errorf("in use %d of %d", st.InUse, st.Limit)
		}
		return nil
	})
	a := rc.do("PUT", "/v1/secret/data/other", jsonBody(`{"data": {"k": "v"}}`), nil)
	if a.status != http.StatusServiceUnavailable || !strings.Contains(strings.Join(a.errors(t), " "), "max-inflight-bytes") {
		t.Fatalf("a write while the budget is spent: %d %s", a.status, a.body)
	}
	if _, err := pw.Write([]byte(`"}}`)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	// The slow write's value is over the largest secret, and its message
	// finds no room beside its own body: refused either way.
	if a := <-first; a.status != http.StatusRequestEntityTooLarge && a.status != http.StatusServiceUnavailable {
		t.Fatalf("the slow write: %d %s", a.status, a.body)
	}
	testcluster.WaitFor(t, 5*time.Second, "the budget given back", func() error {
		if st := n.Srv.Inflight(); st.InUse != 0 || st.Refused == 0 {
			return fmt.Errorf("after both: %+v", st)
		}
		return nil
	})
	if a := rc.do("PUT", "/v1/secret/data/other", jsonBody(`{"data": {"k": "v"}}`), nil); a.status != http.StatusOK {
		t.Fatalf("a write once the budget is free: %d %s", a.status, a.body)
	}
}
