package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/internal/pgtest"
)

// TestLogsJSONAndNoSecrets runs a three-node cluster of real processes at
// -log-level=trace (the most verbose: debug plus gRPC's own info lines)
// -log-format=json through a full life: init, unseal,
// secrets written, a policy, a token, an AppRole login, generate-root, a
// database credentials from a real PostgreSQL, the leader killed and
// re-elected, a node sealed and unsealed, a clean stop.
// Then every line every process wrote to stderr must be one JSON object
// with the node's id, a level, a timestamp and a message; and no log line
// nor audit file may hold the plaintext marker, an unseal share (base64 or
// hex), the root tokens, a token, a secret_id or the gossip key.
func TestLogsJSONAndNoSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	audits := map[string]string{}
	for _, id := range []string{"n1", "n2", "n3"} {
		audits[id] = filepath.Join(dir, id+"-audit.log")
	}
	c := startClusterWith(t, func(id string) []string {
		return []string{"-log-level=trace", "-log-format=json", "-audit-file=" + audits[id]}
	})
	// Every process a node ran: a restarted node's earlier logs count too.
	type proc struct {
		id string
		p  *serverProc
	}
	var procs []proc
	for _, n := range c.nodes {
		procs = append(procs, proc{n.id, n.serverProc})
	}
	secrets := map[string]string{} // what it is → its value
	for i, a := range c.nodes[0].args {
		if k, ok := strings.CutPrefix(a, "-cluster-key="); ok {
			secrets[fmt.Sprintf("cluster key (arg %d)", i)] = k
		}
	}

	leader := c.waitLeader(t, "")
	ini := c.initAndUnseal(t, c.others(leader)[0])
	secrets["root token"] = ini.RootToken
	for i, k := range ini.UnsealKeysB64 {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			t.Fatalf("share %d: %v", i, err)
		}
		secrets[fmt.Sprintf("share %d (base64)", i)] = k
		secrets[fmt.Sprintf("share %d (raw base64)", i)] = base64.RawStdEncoding.EncodeToString(raw)
		secrets[fmt.Sprintf("share %d (url base64)", i)] = base64.RawURLEncoding.EncodeToString(raw)
		secrets[fmt.Sprintf("share %d (hex)", i)] = hex.EncodeToString(raw)
	}
	unseal := func(n *clusterNode) {
		t.Helper()
		for _, k := range ini.UnsealKeysB64[:3] {
			if r := runCLI(t, nil, "", "operator", "unseal", "-address="+n.url, k); r.code != 0 {
				t.Fatalf("unseal %s: %s", n.id, r)
			}
		}
		if err := poll(30*time.Second, func() error {
			if r := c.on(t, n, "status"); r.code != 0 {
				return fmt.Errorf("%s: %s", n.id, r)
			}
			return nil
		}); err != nil {
			t.Fatalf("node not unsealed: %v\n%s", err, c.logs())
		}
	}

	// Secrets written and read back, through different nodes.
	marker := "log-scan-marker-" + rand.Text()
	secrets["marker"] = marker
	if r := c.on(t, c.nodes[1], "kv", "put", "secret/app/db", "password="+marker); r.code != 0 {
		t.Fatalf("kv put: %s", r)
	}
	c.mustRun(t, "kv", "put", "secret/app/api", "key="+marker+"-2", "user=app")
	if r := c.on(t, c.nodes[2], "kv", "get", "-field=password", "secret/app/db"); r.code != 0 || strings.TrimSpace(r.stdout) != marker {
		t.Fatalf("kv get: %s", r)
	}

	// A policy, a token under it, an AppRole login under it.
	pol := filepath.Join(dir, "app.hcl")
	if err := os.WriteFile(pol, []byte(`path "secret/data/app/*" { capabilities = ["read"] }`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustRun(t, "policy", "write", "app", pol)
	tok := hasKeys(t, c.mustRun(t, "token", "create", "-policy=app", "-ttl=1h", "-format=json"), "token", "accessor")
	secrets["created token"] = tok["token"].(string)
	as := func(token string, args ...string) result {
		return runCLI(t, []string{"COFFER_ADDR=" + addrs(c.nodes...), "COFFER_TOKEN=" + token}, "", args...)
	}
	if r := as(secrets["created token"], "kv", "get", "-field=password", "secret/app/db"); r.code != 0 {
		t.Fatalf("read with the created token: %s", r)
	}
	c.mustRun(t, "approle", "role", "write", "-token-policies=app", "-token-ttl=20m", "web")
	roleID := hasKeys(t, c.mustRun(t, "approle", "role-id", "-format=json", "web"), "role_id")["role_id"].(string)
	secretID := hasKeys(t, c.mustRun(t, "approle", "secret-id", "-format=json", "web"), "secret_id")["secret_id"].(string)
	secrets["secret_id"] = secretID
	r := runCLI(t, []string{"COFFER_ADDR=" + addrs(c.nodes...)}, "", "login", "-method=approle", "-format=json", "role_id="+roleID, "secret_id="+secretID)
	if r.code != 0 {
		t.Fatalf("approle login: %s", r)
	}
	secrets["login token"] = hasKeys(t, r, "token")["token"].(string)
	if r := as(secrets["login token"], "kv", "get", "-field=key", "secret/app/api"); r.code != 0 {
		t.Fatalf("read with the login token: %s", r)
	}
	// A wrong secret_id is refused (and its refusal logged at debug).
	if r := runCLI(t, []string{"COFFER_ADDR=" + addrs(c.nodes...)}, "", "login", "-method=approle", "role_id="+roleID, "secret_id="+secretID+"x"); r.code == 0 {
		t.Fatalf("login with a wrong secret_id: %s", r)
	}

	// generate-root from three shares.
	gr := hasKeys(t, c.mustRun(t, "operator", "generate-root", "-init", "-format=json"), "nonce", "otp")
	secrets["generate-root otp"] = gr["otp"].(string)
	var done map[string]any
	for _, k := range ini.UnsealKeysB64[:3] {
		done = hasKeys(t, c.mustRun(t, "operator", "generate-root", "-format=json", "-nonce="+gr["nonce"].(string), k), "complete")
	}
	if done["complete"] != true {
		t.Fatalf("generate-root did not complete: %v", done)
	}
	r = c.mustRun(t, "operator", "generate-root", "-decode="+done["encoded_token"].(string), "-otp="+gr["otp"].(string))
	secrets["generated root token"] = strings.TrimSpace(r.stdout)
	if r := as(secrets["generated root token"], "token", "lookup"); r.code != 0 {
		t.Fatalf("lookup with the generated root token: %s", r)
	}

	// Database credentials from a real PostgreSQL: the admin password,
	// a dynamic user's, a static role's, and a refused wrong password.
	pg := pgtest.Start(t)
	pg.Exec(t, `CREATE TABLE items (id int); CREATE ROLE app_static LOGIN PASSWORD 'first-Password-1'`)
	secrets["postgres admin password"] = pg.Password
	secrets["static password before rotation"] = "first-Password-1"
	create := filepath.Join(dir, "create.sql")
	if err := os.WriteFile(create, []byte(`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON items TO "{{name}}";
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c.mustRun(t, "database", "config", "write", "-connection-url="+pg.URLTemplate(), "-username="+pg.User, "-password="+pg.Password, "-allowed-roles=*", "pg")
	c.mustRun(t, "database", "role", "write", "-db=pg", "-creation-statements=@"+create, "-default-ttl=1h", "app")
	creds := hasKeys(t, c.mustRun(t, "database", "creds", "-format=json", "app"), "lease_id", "data")
	secrets["dynamic password"] = creds["data"].(map[string]any)["password"].(string)
	c.mustRun(t, "lease", "revoke", creds["lease_id"].(string))
	c.mustRun(t, "database", "static-role", "write", "-db=pg", "-username=app_static", "-rotation-period=1h", "static")
	secrets["static password"] = hasKeys(t, c.mustRun(t, "database", "static-creds", "-format=json", "static"), "password")["password"].(string)
	if r := c.run(t, "database", "config", "write", "-connection-url="+pg.URLTemplate(), "-username="+pg.User, "-password=wrong-Password-9", "-allowed-roles=*", "other"); r.code == 0 {
		t.Fatalf("a wrong database password accepted: %s", r)
	}
	secrets["refused database password"] = "wrong-Password-9"

	// The leader killed: a new one is elected, writes go on; the old
	// leader comes back sealed and is unsealed.
	leader = c.waitLeader(t, "")
	leader.kill()
	c.nodes = c.others(leader)
	newLeader := c.waitLeader(t, leader.id)
	c.mustRun(t, "kv", "put", "secret/app/after-kill", "password="+marker+"-3")
	leader.serverProc = launch(t, leader.env, leader.addr, leader.raftAddr, leader.args)
	procs = append(procs, proc{leader.id, leader.serverProc})
	if err := leader.waitServing(t, 90*time.Second); err != nil {
		t.Fatalf("restarting %s: %v\n%s", leader.id, err, leader.stderr.String())
	}
	c.nodes = append(c.nodes, leader)
	unseal(leader)
	t.Logf("leader %s killed, %s elected, %s back", leader.id, newLeader.id, leader.id)

	// Seal and unseal a node.
	n := c.others(newLeader)[0]
	if r := c.on(t, n, "operator", "seal"); r.code != 0 {
		t.Fatalf("seal %s: %s", n.id, r)
	}
	unseal(n)
	if r := c.on(t, n, "kv", "get", "-consistency=stale", "-field=password", "secret/app/db"); r.code != 0 || strings.TrimSpace(r.stdout) != marker {
		t.Fatalf("read on %s after unseal: %s", n.id, r)
	}

	// A clean stop, so that the shutdown is logged too.
	for _, n := range c.nodes {
		n.stop(t)
	}

	total, debug := 0, 0
	modules := map[string]int{}
	for _, pr := range procs {
		sc := bufio.NewScanner(strings.NewReader(pr.p.stderr.String()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			total++
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Errorf("%s: a line that is not one JSON object (%v): %q", pr.id, err, line)
				continue
			}
			if m["node"] != pr.id {
				t.Errorf("%s: line without node=%s: %q", pr.id, pr.id, line)
			}
			level, _ := m["@level"].(string)
			switch level {
			case "trace", "info", "warn", "error":
			case "debug":
				debug++
			default:
				t.Errorf("%s: line with level %q: %q", pr.id, level, line)
			}
			if ts, _ := m["@timestamp"].(string); ts == "" {
				t.Errorf("%s: line without a timestamp: %q", pr.id, line)
			} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
				t.Errorf("%s: timestamp %q: %v", pr.id, ts, err)
			}
			if msg, _ := m["@message"].(string); msg == "" {
				t.Errorf("%s: line without a message: %q", pr.id, line)
			}
			mod, _ := m["@module"].(string)
			modules[mod]++
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: reading its stderr: %v", pr.id, err)
		}
	}
	// Not vacuous: many lines, debug ones among them, and lines of the
	// libraries that log on their own (Raft, memberlist) and of the FSM.
	if total < 200 || debug < 50 {
		t.Errorf("%d log lines, %d at debug: want a full debug log (≥200, ≥50)", total, debug)
	}
	for _, want := range []string{"coffer.raft", "coffer.gossip.memberlist", "coffer.fsm", "coffer.database"} {
		if modules[want] == 0 {
			t.Errorf("no line from %s; modules seen: %v", want, modules)
		}
	}
	t.Logf("%d lines (%d debug) from %d processes; modules: %v", total, debug, len(procs), modules)

	// No secret anywhere: logs, and the audit files (hashed values only).
	hashed := 0
	scan := func(what, text string) {
		for name, v := range secrets {
			if v == "" {
				t.Fatalf("no value captured for %s", name)
			}
			if strings.Contains(text, v) {
				t.Errorf("%s holds the %s", what, name)
			}
		}
	}
	for _, pr := range procs {
		scan("the log of "+pr.id, pr.p.stderr.String()+pr.p.stdout.String())
	}
	for id, path := range audits {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("audit file of %s: %v", id, err)
		}
		scan("the audit file of "+id, string(b))
		hashed += strings.Count(string(b), "hmac-sha256:")
	}
	if hashed < 20 {
		t.Errorf("%d hashed values in the audit files: want the requests recorded", hashed)
	}
}
