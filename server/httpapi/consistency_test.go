package httpapi_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"coffer/internal/testcluster"
)

// TestReadYourWritesAcrossNodes drives vault/api's SetReadYourWrites: a
// write through the leader answers X-Vault-Index, and a read that sends it
// back to a follower is answered at or after that index, or refused (412)
// while the follower cannot reach it; never with the older value.
func TestReadYourWritesAcrossNodes(t *testing.T) {
	c := testcluster.StartUnsealed(t, 3, testcluster.Options{TLS: true, HTTP: true})
	leader := c.WaitForLeader(t)
	fs := c.Followers(leader)
	behind, other := fs[0], fs[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	wl := vaultClient(t, c, leader, c.Token, false)
	wl.SetMaxRetries(0)
	wl.SetReadYourWrites(true)
	// A clone shares the client's replication states: it reads on another
	// node what the first one wrote.
	onNode := func(n *testcluster.Node, headers map[string]string) *vault.Client {
		cl, err := wl.Clone()
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.SetAddress(n.HTTPURL()); err != nil {
			t.Fatal(err)
		}
		cl.SetToken(wl.Token()) // a clone has no token of its own
		for k, v := range headers {
			cl.AddHeader(k, v)
		}
		return cl
	}
	stale := map[string]string{"X-Coffer-Consistency": "stale"}

	if _, err := wl.KVv2("secret").Put(ctx, "ryw", map[string]any{"v": "1"}); err != nil {
		t.Fatal(err)
	}
	if got, err := onNode(behind, stale).KVv2("secret").Get(ctx, "ryw"); err != nil || got.Data["v"] != "1" {
		t.Fatalf("read of version 1 on %s: %v %v", behind.ID, got, err)
	}

	// The follower falls behind: the next write does not reach it.
	behind.Net.Isolate()
	if _, err := wl.KVv2("secret").Put(ctx, "ryw", map[string]any{"v": "2"}); err != nil {
		t.Fatal(err)
	}
	_, err := onNode(behind, stale).KVv2("secret").Get(ctx, "ryw")
	if statusOf(err) != http.StatusPreconditionFailed {
		t.Fatalf("a stale read with the write's index on a follower that lacks it: %v, want 412", err)
	}
	// Without the index, a stale read answers the older value, and says so.
	rc := newRawClient(t, c, behind)
	a := rc.do("GET", "/v1/secret/data/ryw", nil, stale)
	if a.status != http.StatusOK || a.header.Get("X-Coffer-Stale") != "true" || a.header.Get("X-Coffer-Node") != behind.ID {
		t.Fatalf("a stale read without an index: %d stale=%q node=%q %s", a.status, a.header.Get("X-Coffer-Stale"), a.header.Get("X-Coffer-Node"), a.body)
	}
	// Asked to be forwarded, the follower goes to the leader instead of
	// waiting for the index; cut off from it, it fails with 503 (leader
	// unreachable), not 412.
	start := time.Now()
	_, err = onNode(behind, map[string]string{"X-Coffer-Consistency": "stale", "X-Vault-Inconsistent": "forward-active-node"}).KVv2("secret").Get(ctx, "ryw")
	if statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("a forwarded read from a cut-off follower: %v, want 503", err)
	}
	t.Logf("forward from a cut-off follower failed after %v", time.Since(start))

	// Healed, the follower answers the new value once it has it; until then
	// it refuses: it never answers version 1 to this client.
	behind.Net.Heal()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := onNode(behind, stale).KVv2("secret").Get(ctx, "ryw")
		if err == nil {
			if got.Data["v"] != "2" {
				t.Fatalf("read your writes broken: %s answered %v after the client wrote 2", behind.ID, got.Data)
			}
			break
		}
		if statusOf(err) != http.StatusPreconditionFailed && statusOf(err) != http.StatusServiceUnavailable {
			t.Fatalf("read on the healed follower: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the healed follower never caught up: %v", err)
		}
	}

	// A follower that has the index answers itself, forward asked or not.
	raw := newRawClient(t, c, other)
	w := newRawClient(t, c, leader).do("PUT", "/v1/secret/data/ryw", jsonBody(`{"data": {"v": "3"}}`), nil)
	idx := w.header.Get("X-Vault-Index")
	if w.status != http.StatusOK || idx == "" {
		t.Fatalf("write: %d index=%q %s", w.status, idx, w.body)
	}
	applied, err := strconv.ParseUint(w.header.Get("X-Coffer-Applied-Index"), 10, 64)
	if err != nil || applied == 0 {
		t.Fatalf("write answered X-Coffer-Applied-Index %q", w.header.Get("X-Coffer-Applied-Index"))
	}
	c.WaitForApplied(t, applied)
	a = raw.do("GET", "/v1/secret/data/ryw", nil, map[string]string{"X-Vault-Index": idx, "X-Vault-Inconsistent": "forward-active-node", "X-Coffer-Consistency": "stale"})
	if a.status != http.StatusOK || a.header.Get("X-Coffer-Node") != other.ID {
		t.Fatalf("read on a caught-up follower: %d node=%q %s", a.status, a.header.Get("X-Coffer-Node"), a.body)
	}
	if got, _ := strconv.ParseUint(a.header.Get("X-Coffer-Applied-Index"), 10, 64); got < applied {
		t.Fatalf("answered at index %d, before the write's %d", got, applied)
	}
}
