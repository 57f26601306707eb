package audit

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testSalt is a fixed 32-byte salt.
var testSalt = []byte("0123456789abcdef0123456789abcdef")

// expectHMAC computes what the log must show for value under salt, with
// crypto/hmac directly rather than through the package.
func expectHMAC(salt []byte, value string) string {
	m := hmac.New(sha256.New, salt)
	m.Write([]byte(value))
	return "hmac-sha256:" + hex.EncodeToString(m.Sum(nil))
}

// newHasher returns a Hasher over testSalt.
func newHasher(t testing.TB) *Hasher {
	t.Helper()
	h, err := NewHasher(testSalt)
	if err != nil {
		t.Fatalf("NewHasher: %v", err)
	}
	return h
}

// openFile opens a file device at path, failing the test on error.
func openFile(t testing.TB, path string) Device {
	t.Helper()
	d, err := OpenFile(path)
	if err != nil {
		t.Fatalf("OpenFile(%s): %v", path, err)
	}
	return d
}

// newFileBroker returns a broker on one file device in a temporary
// directory, closed when the test ends, and the file's path.
func newFileBroker(t testing.TB, timeout time.Duration) (*Broker, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	b := NewBroker("node-1", timeout, openFile(t, path))
	t.Cleanup(func() { b.Close() })
	return b, path
}

// readLines returns the file's lines, each decoded from JSON; a line that
// is not whole JSON fails the test.
func readLines(t testing.TB, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		t.Fatalf("%s does not end with a newline", path)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("%s line %d is not JSON (%v): %q", path, n, err, sc.Text())
		}
		if dec.More() {
			t.Fatalf("%s line %d holds more than one JSON value: %q", path, n, sc.Text())
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scan %s: %v", path, err)
	}
	return out
}

// sampleRequest is a request record with every header field filled.
func sampleRequest(id string) *Request {
	return &Request{
		Header: Header{
			RequestID:     id,
			Method:        "/coffer.v1.KV/Put",
			Path:          "secret/data/payments/db",
			Operation:     "update",
			RemoteAddress: "10.0.0.7:51234",
			Auth: Auth{
				ClientToken: "s.client-token",
				Accessor:    "accessor-1",
				DisplayName: "approle-payments",
				Policies:    []string{"default", "payments"},
				TokenType:   "service",
				EntityID:    "entity-9",
			},
		},
		Data: map[string]any{"data": map[string]any{"password": "hunter2"}},
	}
}

// eventually calls f every few milliseconds until it returns nil, and fails
// the test with f's last error if that takes longer than within.
func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", within, err)
		}
		<-tick.C
	}
}
