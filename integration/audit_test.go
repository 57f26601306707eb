package integration

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// auditLine is the part of an audit record the tests look at.
type auditLine struct {
	Type       string         `json:"type"`
	Node       string         `json:"node"`
	RequestID  string         `json:"request_id"`
	Method     string         `json:"method"`
	Path       string         `json:"path"`
	ResultCode string         `json:"result_code"`
	Auth       map[string]any `json:"auth"`
	Data       map[string]any `json:"data"`
}

// readAudit parses a node's audit file, failing on a line that is not
// whole JSON.
func readAudit(t *testing.T, path string) []auditLine {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []auditLine
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s: a line is not JSON: %v: %q", path, err, sc.Text())
		}
		out = append(out, l)
	}
	return out
}

// TestAuditLogRecordsEveryCall: every request and response of a mixed run
// (writes, reads, lists and a denied read, through the leader and through
// followers, with the root token and a service token) is in the audit file
// of the node that served it, with its path, policies and result; no audit
// file holds a secret value, a token or an unseal share in clear; and
// `coffer audit hash` of a secret value finds it in the log.
func TestAuditLogRecordsEveryCall(t *testing.T) {
	c, _, root := unsealedCluster(t, ClusterOptions{TLS: true, AuditFiles: true})
	if _, err := root.WritePolicy(ctx(t), "app", `path "secret/data/app/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/app/*" { capabilities = ["list"] }`); err != nil {
		t.Fatal(err)
	}
	svc, err := root.CreateToken(ctx(t), &pb.CreateTokenRequest{Policies: []string{"app"}, TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	// The salt is made by the leader once unsealed; wait until every node
	// hashes (rather than redacts) so that audit hash can be checked.
	testcluster.WaitFor(t, 10*time.Second, "the audit salt on every node", func() error {
		for _, n := range c.Running() {
			if _, err := tokenClient(t, c, c.Token, n).AuditHash(ctx(t), "x"); err != nil {
				return fmt.Errorf("%s: %v", n.ID, err)
			}
		}
		return nil
	})

	markers := map[string]string{}
	for _, n := range c.Running() {
		marker := "audit-secret-marker-" + n.ID
		markers[n.ID] = marker
		cl := tokenClient(t, c, svc.GetToken(), n)
		path := "secret/app/" + n.ID + "/db"
		if _, err := cl.Put(ctx(t), &pb.PutRequest{Path: path, Data: map[string]string{"password": marker}}); err != nil {
			t.Fatalf("put through %s: %v", n.ID, err)
		}
		if _, err := cl.Get(ctx(t), &pb.GetRequest{Path: path}); err != nil {
			t.Fatalf("get through %s: %v", n.ID, err)
		}
		if _, err := cl.List(ctx(t), &pb.ListRequest{Path: "secret/app"}); err != nil {
			t.Fatalf("list through %s: %v", n.ID, err)
		}
		if _, err := cl.Get(ctx(t), &pb.GetRequest{Path: "secret/other/" + n.ID}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("a denied read through %s: %v", n.ID, err)
		}
	}

	secrets := []string{c.Token, svc.GetToken()}
	for _, m := range markers {
		secrets = append(secrets, m)
	}
	for _, sh := range c.Shares {
		secrets = append(secrets, base64.StdEncoding.EncodeToString(sh), hex.EncodeToString(sh))
	}
	for _, n := range c.Running() {
		raw, err := os.ReadFile(n.AuditFile())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if bytes.Contains(raw, []byte(s)) {
				t.Errorf("%s's audit file holds a secret in clear (%.12s…)", n.ID, s)
			}
		}
		lines := readAudit(t, n.AuditFile())
		path := "secret/data/app/" + n.ID + "/db"
		seen := map[string]int{}
		byID := map[string][]auditLine{}
		for _, l := range lines {
			if l.Node != n.ID {
				t.Errorf("%s's audit file has a line of node %q", n.ID, l.Node)
			}
			byID[l.RequestID] = append(byID[l.RequestID], l)
			switch {
			case l.Path == path && strings.HasSuffix(l.Method, "/Put"):
				seen["put "+l.Type]++
			case l.Path == path && strings.HasSuffix(l.Method, "/Get"):
				seen["get "+l.Type]++
			case l.Path == "secret/metadata/app/" && strings.HasSuffix(l.Method, "/List"):
				seen["list "+l.Type]++
			case l.Path == "secret/data/other/"+n.ID && l.Type == "response" && l.ResultCode == "PermissionDenied":
				seen["denied response"]++
			}
		}
		for _, want := range []string{"put request", "put response", "get request", "get response", "list request", "list response", "denied response"} {
			if seen[want] == 0 {
				t.Errorf("%s's audit file lacks the %s of the call it served (saw %v)", n.ID, want, seen)
			}
		}
		// Every request has its response, under the same request id.
		for id, ls := range byID {
			if len(ls) != 2 || ls[0].Type != "request" || ls[1].Type != "response" {
				t.Errorf("%s: request id %s has records %v, want a request then a response", n.ID, id, types(ls))
			}
		}
		// The value a node wrote is in its log as its HMAC.
		h, err := tokenClient(t, c, c.Token, n).AuditHash(ctx(t), markers[n.ID])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte(h)) {
			t.Errorf("%s: audit hash of the value it wrote (%s) is not in its log", n.ID, h)
		}
	}
}

func types(ls []auditLine) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Type)
	}
	return out
}

// TestAuditFailsClosed: when a node's audit file cannot be written (a
// full disk: the file is /dev/full), that node refuses calls with
// AUDIT_FAILED — within the audit timeout also when the device blocks (a
// pipe nobody reads) — and serves again once the file is writable; the
// other nodes serve throughout.
func TestAuditFailsClosed(t *testing.T) {
	const timeout = 500 * time.Millisecond
	c := NewCluster(t, 3, ClusterOptions{TLS: true, AuditFiles: true, AuditTimeout: timeout})
	c.Init(t, c.WaitForLeader(t))
	c.UnsealAll(t)
	leader := c.WaitForLeader(t)
	put, err := c.Client(t, leader).Put(ctx(t), &pb.PutRequest{Path: "secret/app/db", Data: map[string]string{"v": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	f := c.Followers(leader)[0]
	other := c.Followers(leader)[1]
	// Straight to one node, without the client's retries: what it answers.
	read := func(n *Node) error {
		_, err := n.KV.Get(c.Auth(t), &pb.GetRequest{Path: "secret/app/db", Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MinIndex: put.Index}})
		return err
	}
	if err := read(f); err != nil {
		t.Fatal(err)
	}
	swap := func(with func(path string)) {
		t.Helper()
		path := f.AuditFile()
		if err := os.Rename(path, filepath.Join(t.TempDir(), "old.log")); err != nil {
			t.Fatal(err)
		}
		with(path)
		if err := f.Srv.ReopenAudit(); err != nil {
			t.Logf("reopen: %v", err)
		}
	}

	// A full disk.
	swap(func(path string) {
		if err := os.Symlink("/dev/full", path); err != nil {
			t.Fatal(err)
		}
	})
	if err := read(f); api.Reason(err) != pb.ErrorReason_AUDIT_FAILED {
		t.Fatalf("a read with the audit file full: %v, want AUDIT_FAILED", err)
	}
	if err := read(other); err != nil {
		t.Fatalf("another node stopped serving: %v", err)
	}
	swap(func(string) {}) // the symlink moves away; reopening makes a file
	if err := read(f); err != nil {
		t.Fatalf("a read with the audit file writable again: %v", err)
	}

	// A device that blocks: a pipe whose reader never reads.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	swap(func(path string) {
		if err := os.Rename(fifo, path); err != nil {
			t.Fatal(err)
		}
	})
	var failed error
	var took time.Duration
	for i := 0; i < 2000 && failed == nil; i++ {
		start := time.Now()
		if err := read(f); err != nil {
			failed, took = err, time.Since(start)
		}
	}
	t.Logf("with the audit pipe full, a read failed after %v", took)
	if api.Reason(failed) != pb.ErrorReason_AUDIT_FAILED {
		t.Fatalf("reads with a blocked audit device: %v, want AUDIT_FAILED", failed)
	}
	if took > timeout+2*time.Second {
		t.Errorf("a read with a blocked audit device failed after %v (timeout %v)", took, timeout)
	}
	// The reader drains: the node serves again.
	go func() { _, _ = io.Copy(io.Discard, reader) }()
	testcluster.WaitFor(t, 10*time.Second, "reads once the audit pipe drains", func() error { return read(f) })
}
