package audit

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Every field is on every line, with the values the server gave, the token
// and accessor hashed, and the data strings hashed.
func TestLinesHoldEveryField(t *testing.T) {
	b, path := newFileBroker(t, 0)
	b.SetHasher(newHasher(t))
	ctx := context.Background()

	req := sampleRequest("req-1")
	req.Time = time.Date(2031, 2, 3, 4, 5, 6, 789, time.FixedZone("X", 3600))
	req.Auth.Metadata = map[string]string{"role_name": "payments"}
	if err := b.LogRequest(ctx, req); err != nil {
		t.Fatalf("LogRequest: %v", err)
	}
	before := time.Now()
	resp := &Response{
		Header:     req.Header,
		ResultCode: "PERMISSION_DENIED",
		Reason:     "POLICY_DENIED",
		Error:      "server: permission denied",
		Data:       map[string]any{"lease_duration": 3600},
	}
	resp.Time = time.Time{} // stamped by the broker
	if err := b.LogResponse(ctx, resp); err != nil {
		t.Fatalf("LogResponse: %v", err)
	}

	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2", len(lines))
	}
	header := []string{"time", "type", "node", "request_id", "method", "path", "operation", "remote_address", "auth", "data"}
	wantKeys := map[string][]string{
		"request":  header,
		"response": append(slices.Clone(header), "result_code", "reason", "error"),
	}
	for i, l := range lines {
		typ, _ := l["type"].(string)
		if want := []string{"request", "response"}[i]; typ != want {
			t.Fatalf("line %d type = %q, want %q", i, typ, want)
		}
		got := slices.Sorted(mapsKeys(l))
		want := slices.Sorted(slices.Values(wantKeys[typ]))
		if !slices.Equal(got, want) {
			t.Errorf("%s line keys = %v, want %v", typ, got, want)
		}
		for k, want := range map[string]string{
			"node": "node-1", "request_id": "req-1", "method": "/coffer.v1.KV/Put",
			"path": "secret/data/payments/db", "operation": "update", "remote_address": "10.0.0.7:51234",
		} {
			if l[k] != want {
				t.Errorf("%s %s = %v, want %q", typ, k, l[k], want)
			}
		}
		auth := l["auth"].(map[string]any)
		for k, want := range map[string]any{
			"client_token": expectHMAC(testSalt, "s.client-token"),
			"accessor":     expectHMAC(testSalt, "accessor-1"),
			"display_name": "approle-payments",
			"token_type":   "service",
			"entity_id":    "entity-9",
			"policies":     []any{"default", "payments"},
			"metadata":     map[string]any{"role_name": "payments"},
		} {
			if !reflect.DeepEqual(auth[k], want) {
				t.Errorf("%s auth.%s = %v, want %v", typ, k, auth[k], want)
			}
		}
		ts, err := time.Parse(time.RFC3339Nano, l["time"].(string))
		if err != nil || !strings.HasSuffix(l["time"].(string), "Z") {
			t.Errorf("%s time %q is not RFC 3339 in UTC: %v", typ, l["time"], err)
		}
		if typ == "request" && !ts.Equal(req.Time) {
			t.Errorf("request time = %v, want %v", ts, req.Time)
		}
		if typ == "response" && (ts.Before(before.Add(-time.Second)) || ts.After(time.Now())) {
			t.Errorf("response time %v was not stamped at logging", ts)
		}
	}
	if got := lines[0]["data"].(map[string]any)["data"].(map[string]any)["password"]; got != expectHMAC(testSalt, "hunter2") {
		t.Errorf("request data.data.password = %v, want its HMAC", got)
	}
	r := lines[1]
	if r["result_code"] != "PERMISSION_DENIED" || r["reason"] != "POLICY_DENIED" || r["error"] != "server: permission denied" {
		t.Errorf("response outcome = %v / %v / %v", r["result_code"], r["reason"], r["error"])
	}
	if got := r["data"].(map[string]any)["lease_duration"]; got != json.Number("3600") {
		t.Errorf("a number in data = %v (%T), want 3600 unchanged", got, got)
	}
}

func mapsKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

type loginResult struct {
	SecretID string `json:"secret_id"`
	TTL      int    `json:"ttl"`
}

type shareString string

// markerRecords returns a request and a response whose sensitive values
// all contain "MARKER", in every shape data can take.
func markerRecords() (*Request, *Response) {
	str := "MARKER-pointer"
	h := Header{
		RequestID: "r", Method: "Unseal", Path: "sys/unseal", Operation: "update",
		Auth: Auth{ClientToken: "s.MARKER-token", Accessor: "MARKER-accessor"},
	}
	req := &Request{Header: h, Data: map[string]any{
		"key":       "MARKER-unseal-share",
		"shares":    []string{"MARKER-share-1", "MARKER-share-2"},
		"secret_id": "MARKER-secret-id",
		"password":  []byte("MARKER-bytes"),
		"data": map[string]any{
			"db_password": "MARKER-db",
			"nested":      []any{"MARKER-in-slice", map[string]any{"deep": []any{"MARKER-deeper"}}},
			"labels":      map[string]string{"x": "MARKER-map-string"},
		},
		"typed":   loginResult{SecretID: "MARKER-struct", TTL: 60},
		"pointer": &str,
		"named":   shareString("MARKER-named-type"),
		"many":    []map[string]any{{"token": "MARKER-slice-of-maps"}},
		"version": 3,
		"cas":     true,
	}}
	resp := &Response{Header: h, ResultCode: "OK", Data: map[string]any{
		"client_token":    "s.MARKER-new-token",
		"accessor":        "MARKER-new-accessor",
		"secret_id":       "MARKER-issued-secret-id",
		"keys":            []any{"MARKER-key-share"},
		"root_token":      "s.MARKER-root",
		"lease_duration":  3600,
		"renewable":       false,
		"something_empty": "",
	}}
	return req, resp
}

// No marker is written in clear, with or without a salt, and every data
// string is the HMAC of the original.
func TestNoSecretInClear(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		name := map[bool]string{false: "unsealed", true: "sealed"}[sealed]
		t.Run(name, func(t *testing.T) {
			b, path := newFileBroker(t, 0)
			if !sealed {
				b.SetHasher(newHasher(t))
			}
			req, resp := markerRecords()
			if err := b.LogRequest(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			if err := b.LogResponse(context.Background(), resp); err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if i := strings.Index(string(raw), "MARKER"); i >= 0 {
				t.Fatalf("a secret is in clear in the log: …%s…", raw[max(0, i-60):min(len(raw), i+40)])
			}
			lines := readLines(t, path)
			hashed := regexp.MustCompile(`^hmac-sha256:[0-9a-f]{64}$`)
			n := 0
			for _, l := range lines {
				walkStrings(l["data"], func(s string) {
					n++
					switch {
					case s == "":
					case sealed && s != RedactedSealed:
						t.Errorf("sealed node wrote %q, want %q", s, RedactedSealed)
					case !sealed && !hashed.MatchString(s):
						t.Errorf("data string %q is not an HMAC", s)
					}
				})
			}
			// markerRecords holds 18 marked strings and one empty one.
			if n != 19 {
				t.Fatalf("found %d strings in data, want 19: the walk lost or invented some", n)
			}
			d := lines[0]["data"].(map[string]any)
			if d["version"] != json.Number("3") || d["cas"] != true {
				t.Errorf("numbers and booleans changed: version=%v cas=%v", d["version"], d["cas"])
			}
			if !sealed {
				if got := d["secret_id"]; got != expectHMAC(testSalt, "MARKER-secret-id") {
					t.Errorf("secret_id = %v, want the HMAC of the value", got)
				}
				if got := d["typed"].(map[string]any)["secret_id"]; got != expectHMAC(testSalt, "MARKER-struct") {
					t.Errorf("a struct's field = %v, want the HMAC of the value", got)
				}
			}
			// The server's own maps are left as they were.
			if req.Data["secret_id"] != "MARKER-secret-id" || req.Data["data"].(map[string]any)["db_password"] != "MARKER-db" {
				t.Error("LogRequest modified the caller's data")
			}
		})
	}
}

// walkStrings calls f with every string inside v.
func walkStrings(v any, f func(string)) {
	switch x := v.(type) {
	case string:
		f(x)
	case map[string]any:
		for _, e := range x {
			walkStrings(e, f)
		}
	case []any:
		for _, e := range x {
			walkStrings(e, f)
		}
	}
}

// Only the values the record names are written in clear, and only at the
// path named.
func TestClearKeys(t *testing.T) {
	b, path := newFileBroker(t, 0)
	b.SetHasher(newHasher(t))
	req := sampleRequest("r")
	req.Data = map[string]any{
		"path":     "payments/db",
		"policies": []string{"default", "payments"},
		"options":  map[string]any{"cas": "7", "note": "secret-note"},
		"data":     map[string]any{"path": "user-secret", "password": "pw"},
		"keys":     []any{map[string]any{"name": "k1", "value": "v1"}},
	}
	req.ClearKeys = []string{"path", "policies", "options.cas", "keys.name", ""}
	if err := b.LogRequest(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	d := readLines(t, path)[0]["data"].(map[string]any)
	checks := []struct {
		what string
		got  any
		want any
	}{
		{"path", d["path"], "payments/db"},
		{"policies", d["policies"], []any{"default", "payments"}},
		{"options.cas", d["options"].(map[string]any)["cas"], "7"},
		{"options.note", d["options"].(map[string]any)["note"], expectHMAC(testSalt, "secret-note")},
		{"data.path (same key name, other path)", d["data"].(map[string]any)["path"], expectHMAC(testSalt, "user-secret")},
		{"data.password", d["data"].(map[string]any)["password"], expectHMAC(testSalt, "pw")},
		{"keys.name", d["keys"].([]any)[0].(map[string]any)["name"], "k1"},
		{"keys.value", d["keys"].([]any)[0].(map[string]any)["value"], expectHMAC(testSalt, "v1")},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

// Values JSON cannot hold, and data nested without end, become markers
// instead of breaking the line.
func TestAwkwardValues(t *testing.T) {
	b, path := newFileBroker(t, 0)
	b.SetHasher(newHasher(t))
	loop := map[string]any{}
	loop["self"] = loop
	req := sampleRequest("r")
	req.Path = "secret/data/line\nbreak"
	req.Data = map[string]any{
		"nan":   math.NaN(),
		"inf":   float32(math.Inf(1)),
		"fn":    func() {},
		"ch":    make(chan int),
		"loop":  loop,
		"num":   json.Number("12.5"),
		"fake":  json.Number("not-a-number"),
		"small": float32(1.5),
	}
	if err := b.LogRequest(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1 (a newline in a value must not split the line)", len(lines))
	}
	if lines[0]["path"] != "secret/data/line\nbreak" {
		t.Errorf("path = %q", lines[0]["path"])
	}
	d := lines[0]["data"].(map[string]any)
	for k, want := range map[string]any{
		"nan":   "NaN",
		"inf":   "+Inf",
		"fn":    "[redacted: cannot encode func()]",
		"ch":    "[redacted: cannot encode chan int]",
		"num":   json.Number("12.5"),
		"fake":  expectHMAC(testSalt, "not-a-number"),
		"small": json.Number("1.5"),
	} {
		if !reflect.DeepEqual(d[k], want) {
			t.Errorf("data.%s = %v (%T), want %v", k, d[k], d[k], want)
		}
	}
	depth := 0
	for v := d["loop"]; ; depth++ {
		m, ok := v.(map[string]any)
		if !ok {
			if v != redactedTooDeep {
				t.Errorf("the end of a self-containing map = %v, want %q", v, redactedTooDeep)
			}
			break
		}
		v = m["self"]
	}
	if depth > maxDepth {
		t.Errorf("walked %d levels, more than %d", depth, maxDepth)
	}
}
