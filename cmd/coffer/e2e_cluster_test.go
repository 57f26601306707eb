package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clusterNode is one `coffer server` of a test cluster.
type clusterNode struct {
	*serverProc
	id, gossipAddr string
	// args and env started the node; restart starts it again with them.
	args, env []string
}

// testCluster is three real coffer processes on loopback that bootstrap
// together through gossip.
type testCluster struct {
	nodes []*clusterNode
	token string // root token, once initialized
}

// clusterRaftFlags speed Raft up a little from the LAN defaults while
// leaving room for three race-enabled processes on a small machine.
var clusterRaftFlags = []string{"-raft-heartbeat-timeout=300ms", "-raft-election-timeout=300ms", "-raft-lease-timeout=150ms"}

// startCluster starts three nodes with -bootstrap-expect=3, each joining
// the other two, and waits until every one answers `coffer status`. The
// first node gets the cluster key by flag, the others by environment;
// every node gets the extra flags. A port taken meanwhile restarts the
// attempt on fresh ports.
func startCluster(t *testing.T, extra ...string) *testCluster {
	t.Helper()
	return startClusterWith(t, func(string) []string { return append([]string{"-log-level=warn"}, extra...) })
}

// startClusterWith is startCluster with the flags extra returns for each
// node id added to every node's command line.
func startClusterWith(t *testing.T, extra func(id string) []string) *testCluster {
	t.Helper()
	key := base64.StdEncoding.EncodeToString([]byte(rand.Text() + rand.Text())[:32])
	for attempt := 0; ; attempt++ {
		c := &testCluster{}
		for i := range 3 {
			c.nodes = append(c.nodes, &clusterNode{
				id:         fmt.Sprintf("n%d", i+1),
				gossipAddr: "127.0.0.1:" + strconv.Itoa(freePort(t)),
			})
		}
		for i, n := range c.nodes {
			var join []string
			for _, o := range c.nodes {
				if o != n {
					join = append(join, o.gossipAddr)
				}
			}
			api := "127.0.0.1:" + strconv.Itoa(freePort(t))
			raft := "127.0.0.1:" + strconv.Itoa(freePort(t))
			args := append([]string{
				"-node-id=" + n.id, "-data-dir=" + t.TempDir(),
				"-api-addr=" + api, "-raft-addr=" + raft, "-gossip-addr=" + n.gossipAddr,
				"-bootstrap-expect=3", "-join=" + strings.Join(join, ","),
			}, clusterRaftFlags...)
			args = append(args, extra(n.id)...)
			var env []string
			if i == 0 {
				args = append(args, "-cluster-key="+key)
			} else {
				env = []string{"COFFER_CLUSTER_KEY=" + key}
			}
			n.args, n.env = args, env
			n.serverProc = launch(t, env, api, raft, args)
		}
		var err error
		for _, n := range c.nodes {
			if err = n.waitServing(t, 90*time.Second); err != nil {
				err = fmt.Errorf("node %s: %w", n.id, err)
				break
			}
		}
		if err == nil {
			for _, n := range c.nodes {
				if strings.Contains(n.stderr.String(), key) {
					t.Errorf("node %s logged the cluster key", n.id)
				}
			}
			return c
		}
		inUse := false
		for _, n := range c.nodes {
			inUse = inUse || strings.Contains(n.stderr.String(), "address already in use")
			n.stop(t)
		}
		if !inUse || attempt >= 3 {
			t.Fatalf("cluster did not come up: %v\n%s", err, c.logs())
		}
	}
}

// logs returns every node's stderr, for failure messages.
func (c *testCluster) logs() string {
	var b strings.Builder
	for _, n := range c.nodes {
		fmt.Fprintf(&b, "--- %s (%s) stderr:\n%s\n", n.id, n.addr, n.stderr.String())
	}
	return b.String()
}

// addrs is the COFFER_ADDR of the given nodes, in order.
func addrs(nodes ...*clusterNode) string {
	var a []string
	for _, n := range nodes {
		a = append(a, n.url)
	}
	return strings.Join(a, ",")
}

// run runs the CLI with COFFER_ADDR listing every node and the root token.
func (c *testCluster) run(t *testing.T, args ...string) result {
	t.Helper()
	return runCLI(t, []string{"COFFER_ADDR=" + addrs(c.nodes...), "COFFER_TOKEN=" + c.token}, "", args...)
}

// mustRun runs the CLI against the whole cluster and fails unless it exits 0.
func (c *testCluster) mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := c.run(t, args...)
	if r.code != 0 {
		t.Fatalf("coffer %s: %s\n%s", strings.Join(args, " "), r, c.logs())
	}
	return r
}

// on runs the CLI against node n only.
func (c *testCluster) on(t *testing.T, n *clusterNode, args ...string) result {
	t.Helper()
	return runCLI(t, []string{"COFFER_ADDR=" + n.url, "COFFER_TOKEN=" + c.token}, "", args...)
}

// status returns node n's `coffer status -format=json`.
func (c *testCluster) status(t *testing.T, n *clusterNode) (statusJSON, error) {
	t.Helper()
	r := c.on(t, n, "status", "-format=json")
	var st statusJSON
	if r.code == 1 {
		return st, fmt.Errorf("status of %s: %s", n.id, r)
	}
	if err := jsonUnmarshalStrict(r.stdout, &st); err != nil {
		return st, fmt.Errorf("status of %s: %v: %s", n.id, err, r)
	}
	return st, nil
}

// waitLeader polls until every node reports the same leader, other than
// not (when given), and returns it.
func (c *testCluster) waitLeader(t *testing.T, not string) *clusterNode {
	t.Helper()
	var leader *clusterNode
	err := poll(60*time.Second, func() error {
		seen := ""
		for _, n := range c.nodes {
			st, err := c.status(t, n)
			if err != nil {
				return err
			}
			switch {
			case st.LeaderID == "":
				return fmt.Errorf("%s knows no leader yet (raft state %s)", n.id, st.RaftState)
			case st.LeaderID == not:
				return fmt.Errorf("%s still reports the old leader %s", n.id, not)
			case seen != "" && st.LeaderID != seen:
				return fmt.Errorf("nodes disagree on the leader: %s and %s", seen, st.LeaderID)
			}
			seen = st.LeaderID
		}
		for _, n := range c.nodes {
			if n.id == seen {
				leader = n
				return nil
			}
		}
		return stopPolling{fmt.Errorf("leader %q is none of the nodes", seen)}
	})
	if err != nil {
		t.Fatalf("waiting for a leader: %v\n%s", err, c.logs())
	}
	return leader
}

// others returns the nodes other than n.
func (c *testCluster) others(n *clusterNode) []*clusterNode {
	var out []*clusterNode
	for _, o := range c.nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// initAndUnseal initializes the cluster through node via (5 shares,
// threshold 3) and keeps the root token; then it unseals each node with
// its own 3 of the 5 shares right away, as a script would (a follower that
// has not applied the init yet must still take them), and waits until
// every node answers `coffer status` unsealed. It returns what init
// printed.
func (c *testCluster) initAndUnseal(t *testing.T, via *clusterNode) initJSON {
	t.Helper()
	r := c.on(t, via, "operator", "init", "-key-shares=5", "-key-threshold=3", "-format=json")
	if r.code != 0 {
		t.Fatalf("init through %s: %s\n%s", via.id, r, c.logs())
	}
	var ini initJSON
	decodeJSON(t, r, &ini)
	if len(ini.UnsealKeysB64) != 5 || ini.RootToken == "" {
		t.Fatalf("init: %+v", ini)
	}
	c.token = ini.RootToken
	for i, n := range c.nodes {
		for _, k := range []string{ini.UnsealKeysB64[i], ini.UnsealKeysB64[i+1], ini.UnsealKeysB64[i+2]} {
			if r := runCLI(t, nil, "", "operator", "unseal", "-address="+n.url, k); r.code != 0 {
				t.Fatalf("unseal %s: %s", n.id, r)
			}
		}
	}
	for _, n := range c.nodes {
		if err := poll(30*time.Second, func() error {
			if r := c.on(t, n, "status"); r.code != 0 {
				return fmt.Errorf("%s: %s", n.id, r)
			}
			return nil
		}); err != nil {
			t.Fatalf("node not unsealed: %v\n%s", err, c.logs())
		}
	}
	return ini
}

// jsonUnmarshalStrict decodes s into v, refusing unknown fields; it
// reports instead of failing the test, for use inside poll.
func jsonUnmarshalStrict(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// TestCluster is the cluster story end to end with the real binary: three
// nodes bootstrap through gossip, init through a follower, unseal each,
// write through one node and read stale with -min-index on another, list
// members and peers, save a snapshot (no plaintext), step down, restore.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	leader := c.waitLeader(t, "")
	t.Logf("first leader: %s", leader.id)

	// `coffer status` (table) shows the leader, the term and the applied index.
	follower := c.others(leader)[0]
	r := c.on(t, follower, "status")
	for _, re := range []string{
		`(?m)^Leader ID\s+` + leader.id + `$`,
		`(?m)^Leader Address\s+` + regexp.QuoteMeta(leader.addr) + `$`,
		`(?m)^Raft Term\s+[1-9][0-9]*$`,
		`(?m)^Raft Applied Index\s+[0-9]+$`,
		`(?m)^Raft State\s+follower$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("status table of %s does not match %s:\n%s", follower.id, re, r.stdout)
		}
	}

	// Init through a follower, unseal every node.
	c.initAndUnseal(t, follower)

	// Write through node 2, read stale on node 3 at the write's index.
	n2, n3 := c.nodes[1], c.nodes[2]
	marker := "plaintext-marker-" + rand.Text()
	var put putJSON
	r = c.on(t, n2, "kv", "put", "-format=json", "secret/cluster/db", "password="+marker)
	if r.code != 0 {
		t.Fatalf("put via %s: %s\n%s", n2.id, r, c.logs())
	}
	decodeJSON(t, r, &put)
	if put.Index == 0 || put.Version != 1 {
		t.Fatalf("put: %+v", put)
	}
	r = runCLI(t, []string{"COFFER_TOKEN=" + c.token}, "", "kv", "get", "-address="+n3.url, "-consistency=stale",
		"-min-index="+strconv.FormatUint(put.Index, 10), "-format=json", "secret/cluster/db")
	if r.code != 0 {
		t.Fatalf("stale get on %s: %s\n%s", n3.id, r, c.logs())
	}
	var get getJSON
	decodeJSON(t, r, &get)
	if get.Data["password"] != marker {
		t.Fatalf("stale get on %s: %v", n3.id, get.Data)
	}
	if get.ReadMeta == nil || get.ReadMeta.NodeID != n3.id || get.ReadMeta.AppliedIndex < put.Index {
		t.Fatalf("read_meta of the stale get on %s: %+v (put index %d)", n3.id, get.ReadMeta, put.Index)
	}

	// Members: three, alive, unsealed voters (seal state travels by gossip).
	var members []memberJSON
	if err := poll(30*time.Second, func() error {
		r := c.run(t, "operator", "members", "-format=json")
		if r.code != 0 {
			return fmt.Errorf("members: %s", r)
		}
		members = nil
		if err := jsonUnmarshalStrict(r.stdout, &members); err != nil {
			return stopPolling{fmt.Errorf("members JSON: %v: %s", err, r.stdout)}
		}
		if len(members) != 3 {
			return fmt.Errorf("%d members: %s", len(members), r.stdout)
		}
		for _, m := range members {
			if m.Status != "alive" || m.Sealed || !m.Voter || m.APIAddress == "" {
				return fmt.Errorf("member %s: %+v", m.ID, m)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("operator members: %v\n%s", err, c.logs())
	}
	for i, n := range c.nodes {
		if m := members[i]; m.ID != n.id || m.APIAddress != n.addr || m.GossipAddress != n.gossipAddr {
			t.Errorf("member %d = %+v, want id %s api %s gossip %s", i, m, n.id, n.addr, n.gossipAddr)
		}
	}
	r = c.mustRun(t, "operator", "members")
	if !regexp.MustCompile(`(?m)^n2\s+` + regexp.QuoteMeta(n2.addr) + `\s+` + regexp.QuoteMeta(n2.gossipAddr) + `\s+alive\s+false\s+true$`).MatchString(r.stdout) {
		t.Errorf("members table:\n%s", r.stdout)
	}

	// Peers: three voters, one leader, everyone reachable.
	checkPeers := func(want int) []peerJSON {
		t.Helper()
		var peers []peerJSON
		if err := poll(30*time.Second, func() error {
			r := c.run(t, "operator", "raft", "list-peers", "-format=json")
			if r.code != 0 {
				return fmt.Errorf("list-peers: %s", r)
			}
			peers = nil
			if err := jsonUnmarshalStrict(r.stdout, &peers); err != nil {
				return stopPolling{fmt.Errorf("list-peers JSON: %v: %s", err, r.stdout)}
			}
			leaders := 0
			for _, p := range peers {
				if p.Leader {
					leaders++
				}
				if !p.Voter || !p.Reachable || p.Address == "" {
					return fmt.Errorf("peer %+v", p)
				}
			}
			if len(peers) != want || leaders != 1 {
				return fmt.Errorf("%d peers, %d leaders: %s", len(peers), leaders, r.stdout)
			}
			return nil
		}); err != nil {
			t.Fatalf("operator raft list-peers: %v\n%s", err, c.logs())
		}
		return peers
	}
	for _, p := range checkPeers(3) {
		if p.AppliedIndex < put.Index {
			t.Errorf("peer %s applied %d < put index %d", p.ID, p.AppliedIndex, put.Index)
		}
	}
	r = c.mustRun(t, "operator", "raft", "list-peers")
	if !strings.HasPrefix(r.stdout, "Node ") || strings.Count(r.stdout, "\n") != 5 {
		t.Errorf("list-peers table:\n%s", r.stdout)
	}

	// Snapshot: ciphertext only, 0600, no temporary file left.
	dir := t.TempDir()
	snap := filepath.Join(dir, "cluster.snap")
	r = c.mustRun(t, "operator", "raft", "snapshot", "save", snap)
	fi, err := os.Stat(snap)
	if err != nil {
		t.Fatalf("snapshot file: %v", err)
	}
	if !strings.Contains(r.stdout, fmt.Sprintf("%d bytes", fi.Size())) || !strings.Contains(r.stdout, snap) {
		t.Errorf("save output %q does not give the size %d and the path", r.stdout, fi.Size())
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := os.Stat(snap + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(marker)) {
		t.Fatal("the snapshot holds the plaintext marker")
	}
	if len(b) < 1024 {
		t.Fatalf("snapshot of %d bytes is too small to hold the state", len(b))
	}
	var sj snapshotJSON
	decodeJSON(t, c.mustRun(t, "operator", "raft", "snapshot", "save", "-format=json", snap+".2"), &sj)
	if sj.Path != snap+".2" || sj.Size < 1024 {
		t.Errorf("save -format=json: %+v", sj)
	}

	// A write after the snapshot, which the restore will undo.
	c.mustRun(t, "kv", "put", "secret/cluster/after-snapshot", "v=1")

	// Step down: the leader changes, and every node sees the new one. The
	// leader may have moved since the start (a sealed leader hands over to
	// the first unsealed voter), so ask again.
	leader = c.waitLeader(t, "")
	var sd stepDownJSON
	decodeJSON(t, c.mustRun(t, "operator", "step-down", "-format=json"), &sd)
	if sd.NewLeaderID == "" || sd.NewLeaderID == leader.id {
		t.Fatalf("step-down: new leader %q, old %s", sd.NewLeaderID, leader.id)
	}
	newLeader := c.waitLeader(t, leader.id)
	if newLeader.id != sd.NewLeaderID {
		// Another election may have followed; the old leader must not be back.
		t.Logf("step-down named %s, the cluster now agrees on %s", sd.NewLeaderID, newLeader.id)
	}
	t.Logf("leader after step-down: %s", newLeader.id)

	// Restore through a follower alone is refused, naming the leader.
	fol := c.others(newLeader)[0]
	r = runCLI(t, []string{"COFFER_TOKEN=" + c.token}, "", "operator", "raft", "snapshot", "restore", "-address="+fol.url, snap)
	wantErr(t, r, 1, "not the leader")
	assertOneLineError(t, r.stderr, "only the leader restores: list every node in -address or COFFER_ADDR")

	// Restore with every node listed, the leader last: the client finds it.
	order := append(c.others(newLeader), newLeader)
	r = runCLI(t, []string{"COFFER_ADDR=" + addrs(order...), "COFFER_TOKEN=" + c.token}, "", "operator", "raft", "snapshot", "restore", snap)
	if r.code != 0 {
		t.Fatalf("restore: %s\n%s", r, c.logs())
	}
	if !strings.Contains(r.stdout, "Success!") {
		t.Errorf("restore output: %q", r.stdout)
	}
	// Every node converges on the restored state: the later write is gone,
	// the marker is back.
	for _, n := range c.nodes {
		if err := poll(30*time.Second, func() error {
			if r := c.on(t, n, "kv", "get", "secret/cluster/after-snapshot"); r.code != 2 {
				return fmt.Errorf("%s: the write after the snapshot is still there: %s", n.id, r)
			}
			r := c.on(t, n, "kv", "get", "-field=password", "secret/cluster/db")
			if r.code != 0 || r.stdout != marker+"\n" {
				return fmt.Errorf("%s: the marker after restore: %s", n.id, r)
			}
			return nil
		}); err != nil {
			t.Fatalf("after restore: %v\n%s", err, c.logs())
		}
	}
	c.mustRun(t, "kv", "put", "secret/cluster/after-restore", "v=1")

	// A snapshot from another cluster (a dev node, other keys) is refused
	// without -force.
	dev := startDev(t)
	foreign := filepath.Join(dir, "foreign.snap")
	dev.mustRun(t, "operator", "raft", "snapshot", "save", foreign)
	r = c.run(t, "operator", "raft", "snapshot", "restore", foreign)
	wantErr(t, r, 1, "-force")
	c.mustRun(t, "kv", "get", "secret/cluster/after-restore")

	// Not a snapshot at all.
	junk := filepath.Join(dir, "junk.snap")
	if err := os.WriteFile(junk, []byte("not a snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantErr(t, c.run(t, "operator", "raft", "snapshot", "restore", junk), 1, "not a coffer snapshot")

	// remove-peer: an unknown id is refused; a killed follower is removed.
	wantErr(t, c.run(t, "operator", "raft", "remove-peer", "no-such-node"), 1, "no-such-node")
	leader = c.waitLeader(t, "")
	victim := c.others(leader)[0]
	victim.kill()
	live := c.others(victim)
	c.nodes = live
	var rp removePeerJSON
	decodeJSON(t, c.mustRun(t, "operator", "raft", "remove-peer", "-format=json", victim.id), &rp)
	if rp.ID != victim.id || rp.Index == 0 {
		t.Errorf("remove-peer: %+v", rp)
	}
	for _, p := range checkPeers(2) {
		if p.ID == victim.id {
			t.Fatalf("removed peer %s still listed", victim.id)
		}
	}
	c.mustRun(t, "kv", "put", "secret/cluster/after-remove", "v=1")
}
