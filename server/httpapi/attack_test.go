package httpapi_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"coffer/internal/testcluster"
	"coffer/server/httpapi"
)

// TestSilentBodiesHoldLittle: strangers that announce large bodies on an
// endpoint without a token (unseal) and send one byte each hold one step
// of the node's budget each, never the budget: the node keeps serving,
// and after bodyReadTimeout they are cut off and hold nothing.
func TestSilentBodiesHoldLittle(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	root := newRawClient(t, c, n)
	if a := root.do("PUT", "/v1/secret/data/x", jsonBody(`{"data": {"k": "v"}}`), nil); a.status != http.StatusOK {
		t.Fatalf("setup: %d %s", a.status, a.body)
	}
	const conns = 32
	for i := 0; i < conns; i++ {
		conn, err := tls.Dial("tcp", n.HTTPAddr(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := fmt.Fprintf(conn, "POST /v1/sys/unseal HTTP/1.1\r\nHost: coffer\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 2<<20); err != nil {
			t.Fatal(err)
		}
	}
	const step = 64 << 10
	testcluster.WaitFor(t, 10*time.Second, "the silent bodies' first steps", func() error {
		if st := n.Srv.Inflight(); st.InUse < conns*step {
			return fmt.Errorf("in use %d", st.InUse)
		}
		return nil
	})
	if st := n.Srv.Inflight(); st.InUse > conns*step+64<<10 {
		t.Fatalf("%d silent connections hold %d bytes of the budget, more than a step each", conns, st.InUse)
	}
	if a := root.do("GET", "/v1/secret/data/x", nil, nil); a.status != http.StatusOK {
		t.Fatalf("a read while strangers stall: %d %s", a.status, a.body)
	}
	testcluster.WaitFor(t, 30*time.Second, "the silent bodies cut off", func() error {
		if st := n.Srv.Inflight(); st.InUse != 0 {
			return fmt.Errorf("in use %d", st.InUse)
		}
		return nil
	})
}

// TestAuditHashChecksTheDevicePath: sys/audit-hash/DEVICE is checked at
// that path, so a Vault policy that grants sys/* to operators but denies
// sys/audit-hash/* stops the hashing oracle (Vault answers 403 too).
func TestAuditHashChecksTheDevicePath(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	root := newRawClient(t, c, n)
	testcluster.WaitFor(t, 20*time.Second, "the audit salt", func() error {
		if a := root.do("POST", "/v1/sys/audit-hash/file", jsonBody(`{"input": "x"}`), nil); a.status != http.StatusOK {
			return fmt.Errorf("%d %s", a.status, a.body)
		}
		return nil
	})
	policy := "path \"sys/*\" {\n  capabilities = [\"update\", \"sudo\"]\n}\n\npath \"sys/audit-hash/*\" {\n  capabilities = [\"deny\"]\n}\n"
	body, _ := json.Marshal(map[string]string{"policy": policy})
	if a := root.do("PUT", "/v1/sys/policies/acl/ops", jsonBody(string(body)), nil); a.status != http.StatusNoContent {
		t.Fatalf("policy: %d %s", a.status, a.body)
	}
	a := root.do("POST", "/v1/auth/token/create", jsonBody(`{"policies": ["ops"], "ttl": "1h"}`), nil)
	if a.status != http.StatusOK {
		t.Fatalf("token: %d %s", a.status, a.body)
	}
	rc := newRawClient(t, c, n)
	rc.token = tokenOf(t, a.body)
	a = rc.do("POST", "/v1/sys/audit-hash/file", jsonBody(`{"input": "guess"}`), nil)
	if a.status != http.StatusForbidden {
		t.Fatalf("sys/audit-hash/file with sys/audit-hash/* denied: %d %s (Vault: 403)", a.status, a.body)
	}
}

// TestStrangersBodyIsNotRead: a body sent without a token to an endpoint
// that needs one is refused before it is read: a body of tiny JSON items,
// which decoding would turn into many times its size, costs the node
// nothing.
func TestStrangersBodyIsNotRead(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	rc := newRawClient(t, c, n)
	rc.token = ""
	var sb strings.Builder
	sb.WriteString(`{"versions": [0`)
	for sb.Len() < httpapi.DefaultMaxBodyBytes-16 {
		sb.WriteString(",0")
	}
	sb.WriteString("]}")
	body := sb.String()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := rc.do("PUT", "/v1/secret/destroy/x", strings.NewReader(body), nil)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("status %d; %d MB allocated for a %d MB unauthenticated body", a.status, alloc>>20, len(body)>>20)
	if a.status != http.StatusForbidden {
		t.Fatalf("status %d %s", a.status, a.body)
	}
	if alloc > 4*uint64(len(body)) {
		t.Fatalf("an unauthenticated request of %d bytes made the node allocate %d MB before refusing it (budget counted %d bytes)", len(body), alloc>>20, len(body))
	}
}

// TestListHonoursADenyOnTheFolder: a LIST of a folder follows Vault's
// order for lists (an exact rule on the bare path before the wildcards),
// so an exact deny on secret/metadata/app stops the listing a broader
// wildcard grants.
func TestListHonoursADenyOnTheFolder(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	root := newRawClient(t, c, n)
	if a := root.do("PUT", "/v1/secret/data/app/hidden-name", jsonBody(`{"data": {"k": "v"}}`), nil); a.status != http.StatusOK {
		t.Fatalf("setup: %d %s", a.status, a.body)
	}
	policy := "path \"secret/metadata/*\" {\n  capabilities = [\"list\"]\n}\n\npath \"secret/metadata/app\" {\n  capabilities = [\"deny\"]\n}\n"
	body, _ := json.Marshal(map[string]string{"policy": policy})
	if a := root.do("PUT", "/v1/sys/policies/acl/lister", jsonBody(string(body)), nil); a.status != http.StatusNoContent {
		t.Fatalf("policy: %d %s", a.status, a.body)
	}
	a := root.do("POST", "/v1/auth/token/create", jsonBody(`{"policies": ["lister"], "ttl": "1h"}`), nil)
	if a.status != http.StatusOK {
		t.Fatalf("token: %d %s", a.status, a.body)
	}
	rc := newRawClient(t, c, n)
	rc.token = tokenOf(t, a.body)
	a = rc.do("LIST", "/v1/secret/metadata/app", nil, nil)
	if a.status != http.StatusForbidden {
		t.Fatalf("LIST secret/metadata/app with an exact deny on secret/metadata/app: %d %s (Vault: 403)", a.status, a.body)
	}
}

// TestHugeDurationsAreRefused: a TTL, period or increment past 100 years
// is refused with 400, never wrapped around into a token that lives for
// ever or expired at once.
func TestHugeDurationsAreRefused(t *testing.T) {
	c := testcluster.StartUnsealed(t, 1, testcluster.Options{Standalone: true, TLS: true, HTTP: true})
	n := c.WaitForLeader(t)
	root := newRawClient(t, c, n)
	for _, body := range []string{
		`{"ttl": 36028797018963968}`,
		`{"period": "36028797018963968s"}`,
		`{"explicit_max_ttl": "400000d"}`,
	} {
		if a := root.do("POST", "/v1/auth/token/create", jsonBody(body), nil); a.status != http.StatusBadRequest {
			t.Fatalf("token create %s: %d %s", body, a.status, a.body)
		}
	}
	a := root.do("POST", "/v1/auth/token/create", jsonBody(`{"ttl": "1h"}`), nil)
	if a.status != http.StatusOK {
		t.Fatalf("token create: %d %s", a.status, a.body)
	}
	rc := newRawClient(t, c, n)
	rc.token = tokenOf(t, a.body)
	if a := rc.do("POST", "/v1/auth/token/renew-self", jsonBody(`{"increment": 36028797018963968}`), nil); a.status != http.StatusBadRequest {
		t.Fatalf("renew with a huge increment: %d %s", a.status, a.body)
	}
}
