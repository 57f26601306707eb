package audit

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzRedaction feeds arbitrary keys and values through a request record:
// the line is one line of JSON, every string in data is the HMAC of the
// value (or empty for an empty value), keys are kept, and the value never
// shows up in clear inside data.
func FuzzRedaction(f *testing.F) {
	f.Add("password", "hunter2", "secret/data/a")
	f.Add("", "", "")
	f.Add("key", "line\nbreak\x00\xff", "p\n{\"x\":1}")
	f.Add("version", "3", "sys/unseal")
	f.Add("\u2028", "<script>&amp;", "\xff")
	h := newHasher(f)
	f.Fuzz(func(t *testing.T, key, value, path string) {
		r := redactor{mac: h.mac()}
		req := &Request{
			Header: Header{Path: path, RequestID: value, Auth: Auth{ClientToken: value, Accessor: value}},
			Data: map[string]any{
				key:  value,
				"n":  map[string]any{"list": []any{value, map[string]any{key: []string{value}}}},
				"b":  []byte(value),
				"ok": true,
			},
		}
		line, err := r.requestLine("node", time.Unix(0, 0), req)
		if err != nil {
			t.Fatalf("requestLine: %v", err)
		}
		if bytes.IndexByte(line, '\n') != len(line)-1 {
			t.Fatalf("the record is not exactly one line: %q", line)
		}
		var got struct {
			Path string         `json:"path"`
			Auth map[string]any `json:"auth"`
			Data map[string]any `json:"data"`
		}
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("the line is not JSON (%v): %q", err, line)
		}
		want := ""
		if value != "" {
			want = expectHMAC(testSalt, value)
		}
		if got.Auth["client_token"] != want || got.Auth["accessor"] != want {
			t.Errorf("token/accessor = %v / %v, want %s", got.Auth["client_token"], got.Auth["accessor"], want)
		}
		if utf8.ValidString(path) && got.Path != path {
			t.Errorf("path = %q, want %q", got.Path, path)
		}
		if utf8.ValidString(key) {
			if _, ok := got.Data[key]; !ok {
				t.Errorf("key %q lost: %v", key, got.Data)
			}
		}
		if got.Data["ok"] != true {
			t.Errorf("a boolean changed: %v", got.Data["ok"])
		}
		n := 0
		walkStrings(got.Data, func(s string) {
			n++
			if s != want {
				t.Errorf("data string %q, want %q", s, want)
			}
		})
		if n < 4 {
			t.Errorf("found %d strings in data, want at least 4", n)
		}
	})
}
