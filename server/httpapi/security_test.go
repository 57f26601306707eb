package httpapi_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"coffer/internal/testcluster"
)

// strangerRequests are calls a stranger (no token, or a token of no
// policy but default) might try, with bodies a real client would send.
var strangerRequests = []struct{ method, path, body string }{
	{"GET", "/v1/secret/data/guarded", ""},
	{"PUT", "/v1/secret/data/guarded", `{"data": {"k": "stolen"}}`},
	{"DELETE", "/v1/secret/data/guarded", ""},
	{"GET", "/v1/secret/metadata/guarded", ""},
	{"PUT", "/v1/secret/metadata/guarded", `{"max_versions": 1}`},
	{"DELETE", "/v1/secret/metadata/guarded", ""},
	{"LIST", "/v1/secret/metadata/", ""},
	{"PUT", "/v1/secret/destroy/guarded", `{"versions": [1]}`},
	{"PUT", "/v1/secret/delete/guarded", `{"versions": [1]}`},
	{"PUT", "/v1/sys/seal", ""},
	{"PUT", "/v1/sys/step-down", ""},
	{"GET", "/v1/sys/mounts", ""},
	{"POST", "/v1/auth/token/create", `{"policies": ["root"]}`},
	{"POST", "/v1/auth/token/create-orphan", `{"policies": ["default"]}`},
	{"POST", "/v1/auth/token/lookup", `{"token": "hvs.someone-else"}`},
	{"POST", "/v1/auth/token/revoke-accessor", `{"accessor": "someone-else"}`},
	{"PUT", "/v1/sys/policies/acl/stolen", `{"policy": "path \"*\" { capabilities = [\"sudo\", \"read\"] }"}`},
	{"DELETE", "/v1/sys/policies/acl/default", ""},
	{"LIST", "/v1/sys/policies/acl", ""},
	{"POST", "/v1/auth/approle/role/stolen", `{"token_policies": ["root"]}`},
	{"POST", "/v1/auth/approle/role/stolen/secret-id", ""},
	{"POST", "/v1/auth/jwt/config", `{"jwt_validation_pubkeys": ["x"]}`},
	{"POST", "/v1/auth/cert/certs/stolen", `{"allowed_common_names": ["stolen"], "token_policies": ["root"]}`},
	{"POST", "/v1/sys/rotate", ""},
	{"POST", "/v1/sys/audit-hash/file", `{"input": "guess"}`},
	{"POST", "/v1/sys/capabilities", `{"token": "hvs.someone-else", "paths": ["secret/data/guarded"]}`},
}

// TestHTTPStrangerGetsNothing: every HTTP endpoint that needs a token
// goes through the gateway: without a token, with a token that does not exist, and with a
// token of the default policy only, each call is refused with 403 and
// nothing changes.
func TestHTTPStrangerGetsNothing(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	follower := c.Followers(leader)[0]
	root := newRawClient(t, c, leader)
	if a := root.do("PUT", "/v1/secret/data/guarded", jsonBody(`{"data": {"k": "v"}}`), nil); a.status != http.StatusOK {
		t.Fatalf("setup write: %d %s", a.status, a.body)
	}
	a := root.do("POST", "/v1/auth/token/create", jsonBody(`{"policies": ["default"], "ttl": "1h"}`), nil)
	if a.status != http.StatusOK {
		t.Fatalf("token create: %d %s", a.status, a.body)
	}
	defaultOnly := tokenOf(t, a.body)

	for _, n := range []*testcluster.Node{leader, follower} {
		for _, token := range []string{"", "hvs.not-a-token", defaultOnly} {
			rc := newRawClient(t, c, n)
			rc.token = token
			for _, r := range strangerRequests {
				var body io.Reader
				if r.body != "" {
					body = strings.NewReader(r.body)
				}
				a := rc.do(r.method, r.path, body, nil)
				if a.status != http.StatusForbidden {
					t.Fatalf("%s %s %s on %s: %d, want 403: %s", tokenName(token, defaultOnly), r.method, r.path, n.ID, a.status, a.body)
				}
				if msgs := a.errors(t); len(msgs) == 0 || msgs[0] != "permission denied" {
					t.Fatalf("%s %s: errors %q", r.method, r.path, msgs)
				}
			}
		}
	}
	// Nothing changed: one version, not deleted, the leader unchanged.
	a = root.do("GET", "/v1/secret/metadata/guarded", nil, nil)
	if a.status != http.StatusOK || !strings.Contains(string(a.body), `"current_version":1,`) || strings.Contains(string(a.body), `"max_versions":1,`) {
		t.Fatalf("the secret's metadata changed: %s", a.body)
	}
	if a := root.do("GET", "/v1/sys/policies/acl/stolen", nil, nil); a.status != http.StatusNotFound {
		t.Fatalf("the stranger's policy exists: %d %s", a.status, a.body)
	}
	if a := root.do("GET", "/v1/auth/approle/role/stolen", nil, nil); a.status != http.StatusNotFound {
		t.Fatalf("the stranger's role exists: %d %s", a.status, a.body)
	}
	if got := c.WaitForLeader(t); got != leader {
		t.Fatalf("leadership moved from %s to %s", leader.ID, got.ID)
	}
	for _, n := range c.Nodes() {
		if st := c.Status(t, n); st.GetSeal().GetSealed() {
			t.Fatalf("%s was sealed", n.ID)
		}
	}
}

func tokenName(token, defaultOnly string) string {
	switch token {
	case "":
		return "no token:"
	case defaultOnly:
		return "a default-policy token:"
	}
	return "an unknown token:"
}

// TestHTTPSpeaksOnlyTLS: a node with certificates answers no plaintext
// request on its HTTP port, whatever the request carries.
func TestHTTPSpeaksOnlyTLS(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	root := newRawClient(t, c, n)
	if a := root.do("PUT", "/v1/secret/data/x", jsonBody(`{"data": {"k": "in-the-clear"}}`), nil); a.status != http.StatusOK {
		t.Fatalf("setup: %d %s", a.status, a.body)
	}
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	req, _ := http.NewRequest("GET", "http://"+n.HTTPAddr()+"/v1/secret/data/x", nil)
	req.Header.Set("X-Vault-Token", c.Token)
	resp, err := plain.Do(req)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || strings.Contains(string(b), "in-the-clear") {
			t.Fatalf("a plaintext request was served: %d %s", resp.StatusCode, b)
		}
	}
	// And TLS below 1.2 is refused.
	old := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{MaxVersion: tls.VersionTLS11, InsecureSkipVerify: true}}}
	if resp, err := old.Get(n.HTTPURL() + "/v1/sys/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("a TLS 1.1 client was served: %d", resp.StatusCode)
	}
}

// tokenOf reads auth.client_token from a token-creating answer.
func tokenOf(t testing.TB, body []byte) string {
	t.Helper()
	var r struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Auth.ClientToken == "" {
		t.Fatalf("no auth.client_token in %s", body)
	}
	return r.Auth.ClientToken
}
