package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/replication"
	"coffer/server"
)

// testKey returns a base64 cluster key of n bytes.
func testKey(n int) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, n))
}

func TestDecodeClusterKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xfb}, 32) // +/ in the standard alphabet, -_ in the URL one
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		in := " " + enc.EncodeToString(raw) + "\n"
		got, err := decodeClusterKey(in)
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("decodeClusterKey(%q) = %x, %v", in, got, err)
		}
	}
	const want = "want 32 bytes base64, e.g. from `openssl rand -base64 32`"
	for in, msg := range map[string]string{
		"":                  "empty",
		"   ":               "empty",
		"not base64 at all": "not valid base64",
		testKey(16):         "decodes to 16 bytes",
		testKey(33):         "decodes to 33 bytes",
	} {
		_, err := decodeClusterKey(in)
		if err == nil || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), want) {
			t.Errorf("decodeClusterKey(%q) = %v, want %q and %q", in, err, msg, want)
			continue
		}
		if s := strings.TrimSpace(in); s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error shows the key: %v", err)
		}
	}
}

// parseServerT parses a `coffer server` command line with the given
// environment and fails the test on error.
func parseServerT(t *testing.T, vars map[string]string, args ...string) server.Config {
	t.Helper()
	e, _, _ := testEnv("", vars)
	o, err := parseServer(e, args)
	if err != nil {
		t.Fatalf("coffer server %s: %v", strings.Join(args, " "), err)
	}
	return o.cfg
}

func TestServerClusterFlags(t *testing.T) {
	base := []string{"-node-id=n1", "-data-dir=" + t.TempDir()}
	flagKey, envKey := testKey(32), base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	decoded := func(s string) []byte { b, _ := base64.StdEncoding.DecodeString(s); return b }

	t.Run("defaults", func(t *testing.T) {
		cfg := parseServerT(t, nil, base...)
		def := server.DefaultConfig()
		if cfg.Gossip != nil || cfg.BootstrapExpect != 0 || cfg.ReadReplica || cfg.Advertise != "" {
			t.Fatalf("cfg = %+v", cfg)
		}
		if !reflect.DeepEqual(timings(cfg), timings(def)) {
			t.Fatalf("raft = %+v, want the defaults %+v", timings(cfg), timings(def))
		}
		if cfg.Clustered() {
			t.Fatal("a node without -join and -bootstrap-expect must stay a one-node cluster")
		}
	})

	t.Run("request budget: flag, then file", func(t *testing.T) {
		if cfg := parseServerT(t, nil, base...); cfg.MaxInflightBytes != server.DefaultMaxInflightBytes {
			t.Fatalf("default budget %d", cfg.MaxInflightBytes)
		}
		file := filepath.Join(t.TempDir(), "c.json")
		if err := os.WriteFile(file, []byte(`{"max_inflight_bytes": 16777216}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if cfg := parseServerT(t, nil, append(base, "-config="+file)...); cfg.MaxInflightBytes != 16<<20 {
			t.Fatalf("budget from the file: %d", cfg.MaxInflightBytes)
		}
		cfg := parseServerT(t, nil, append(base, "-config="+file, "-max-inflight-bytes=33554432")...)
		if cfg.MaxInflightBytes != 32<<20 {
			t.Fatalf("the flag does not win over the file: %d", cfg.MaxInflightBytes)
		}
		cfg = parseServerT(t, nil, append(base, "-max-inflight-bytes=1000", "-insecure")...)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "-max-inflight-bytes=1000") {
			t.Fatalf("a budget below the largest request: %v", err)
		}
	})

	t.Run("every flag", func(t *testing.T) {
		cfg := parseServerT(t, nil, append(base,
			"-gossip-addr=0.0.0.0:9402", "-advertise=coffer1", "-join= h2:8402 ,,h3:8402,",
			"-bootstrap-expect=3", "-cluster-key="+flagKey, "-dead-server-timeout=2m",
			"-raft-heartbeat-timeout=200ms", "-raft-election-timeout=300ms", "-raft-lease-timeout=100ms")...)
		if g := cfg.Gossip; g == nil || g.BindAddr != "0.0.0.0:9402" || cfg.Advertise != "coffer1" || cfg.BootstrapExpect != 3 ||
			g.DeadServerTimeout != 2*time.Minute || !bytes.Equal(g.ClusterKey, decoded(flagKey)) {
			t.Fatalf("cfg = %+v, gossip %+v", cfg, cfg.Gossip)
		}
		if !reflect.DeepEqual(cfg.Gossip.Join, []string{"h2:8402", "h3:8402"}) {
			t.Fatalf("join = %q", cfg.Gossip.Join)
		}
		if r := cfg; r.HeartbeatTimeout != 200*time.Millisecond || r.ElectionTimeout != 300*time.Millisecond || r.LeaderLeaseTimeout != 100*time.Millisecond {
			t.Fatalf("raft = %+v", r)
		}
		cfg = parseServerT(t, nil, append(base, "-join=h2:8402", "-read-replica")...)
		if !cfg.ReadReplica || !cfg.Clustered() {
			t.Fatalf("read replica: %+v", cfg)
		}
	})

	// The key matters to a clustered node only.
	clusterKey := func(c server.Config) []byte {
		if c.Gossip == nil {
			return nil
		}
		return c.Gossip.ClusterKey
	}
	keyBase := append(append([]string{}, base...), "-bootstrap-expect=3")
	t.Run("cluster key: flag, then env, then file", func(t *testing.T) {
		base := keyBase
		env := map[string]string{EnvClusterKey: envKey}
		if cfg := parseServerT(t, env, append(base, "-cluster-key="+flagKey)...); !bytes.Equal(clusterKey(cfg), decoded(flagKey)) {
			t.Errorf("flag does not win over the environment")
		}
		if cfg := parseServerT(t, env, base...); !bytes.Equal(clusterKey(cfg), decoded(envKey)) {
			t.Errorf("environment key not used")
		}
		fileKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x11}, 32))
		file := writeConfig(t, `{"cluster_key": "`+fileKey+`"}`)
		fileRaw := decoded(fileKey)
		if cfg := parseServerT(t, nil, append(base, "-config="+file)...); !bytes.Equal(clusterKey(cfg), fileRaw) {
			t.Errorf("file key not used: %x", clusterKey(cfg))
		}
		if cfg := parseServerT(t, env, append(base, "-config="+file)...); !bytes.Equal(clusterKey(cfg), decoded(envKey)) {
			t.Errorf("environment does not win over the file")
		}
		if cfg := parseServerT(t, env, append(base, "-config="+file, "-cluster-key="+flagKey)...); !bytes.Equal(clusterKey(cfg), decoded(flagKey)) {
			t.Errorf("flag does not win over the file")
		}
	})

	t.Run("bad cluster keys name their source, never the key", func(t *testing.T) {
		base := keyBase
		short := testKey(16)
		file := writeConfig(t, `{"cluster_key": "`+short+`"}`)
		cases := []struct {
			vars map[string]string
			args []string
			want string
		}{
			{nil, []string{"-cluster-key=" + short}, "invalid -cluster-key: decodes to 16 bytes: want 32 bytes base64, e.g. from `openssl rand -base64 32`"},
			{nil, []string{"-cluster-key="}, "invalid -cluster-key: empty"},
			{nil, []string{"-cluster-key=%%%secret%%%"}, "invalid -cluster-key: not valid base64"},
			{map[string]string{EnvClusterKey: short}, nil, "invalid $COFFER_CLUSTER_KEY: decodes to 16 bytes"},
			{nil, []string{"-config=" + file}, "invalid cluster_key in -config: decodes to 16 bytes"},
			// A good flag hides a bad environment.
		}
		for _, c := range cases {
			e, out, errb := testEnv("", c.vars)
			code := run(append(append([]string{"server"}, base...), c.args...), e)
			if code != 1 {
				t.Fatalf("%v %v: exit %d, want 1", c.vars, c.args, code)
			}
			assertOneLineError(t, errb.String(), c.want)
			for _, secret := range []string{short, "%%%secret%%%"} {
				if strings.Contains(errb.String()+out.String(), secret) {
					t.Fatalf("output shows the key: %q", errb.String())
				}
			}
		}
		cfg := parseServerT(t, map[string]string{EnvClusterKey: short}, append(base, "-cluster-key="+flagKey)...)
		if !bytes.Equal(clusterKey(cfg), decoded(flagKey)) {
			t.Fatal("flag key not used over a bad environment key")
		}
	})

	t.Run("config file keys, flags win", func(t *testing.T) {
		file := writeConfig(t, `{"node_id": "f1", "data_dir": "`+t.TempDir()+`", "gossip_addr": "10.0.0.1:7402",
			"advertise": "coffer-file", "join": ["j1:8402", "j2:8402"], "bootstrap_expect": 5, "read_replica": false}`)
		cfg := parseServerT(t, nil, "-config="+file)
		if cfg.NodeID != "f1" || cfg.Gossip == nil || cfg.Gossip.BindAddr != "10.0.0.1:7402" || cfg.Advertise != "coffer-file" ||
			!reflect.DeepEqual(cfg.Gossip.Join, []string{"j1:8402", "j2:8402"}) || cfg.BootstrapExpect != 5 {
			t.Fatalf("from the file: %+v", cfg)
		}
		cfg = parseServerT(t, nil, "-config="+file, "-gossip-addr=127.0.0.1:1", "-advertise=coffer-flag",
			"-join=k1:1", "-bootstrap-expect=3")
		if cfg.Gossip.BindAddr != "127.0.0.1:1" || cfg.Advertise != "coffer-flag" || !reflect.DeepEqual(cfg.Gossip.Join, []string{"k1:1"}) || cfg.BootstrapExpect != 3 {
			t.Fatalf("flags do not win: %+v", cfg)
		}
		file = writeConfig(t, `{"node_id": "r1", "data_dir": "`+t.TempDir()+`", "join": ["j1:8402"], "read_replica": true}`)
		if cfg := parseServerT(t, nil, "-config="+file); !cfg.ReadReplica {
			t.Fatalf("read_replica from the file: %+v", cfg)
		}
		if cfg := parseServerT(t, nil, "-config="+file, "-read-replica=false"); cfg.ReadReplica {
			t.Fatalf("-read-replica=false does not win over the file")
		}
	})

	t.Run("raft timings", func(t *testing.T) {
		def := server.DefaultConfig()
		// A fast heartbeat alone keeps the lease within it and the election above it.
		cfg := parseServerT(t, nil, append(base, "-raft-heartbeat-timeout=100ms")...)
		if r := cfg; r.HeartbeatTimeout != 100*time.Millisecond || r.LeaderLeaseTimeout > r.HeartbeatTimeout || r.ElectionTimeout < r.HeartbeatTimeout {
			t.Fatalf("heartbeat alone: %+v", r)
		}
		// A slow heartbeat alone raises the election timeout.
		cfg = parseServerT(t, nil, append(base, "-raft-heartbeat-timeout=2s")...)
		if r := cfg; r.ElectionTimeout != 2*time.Second || r.LeaderLeaseTimeout != def.LeaderLeaseTimeout {
			t.Fatalf("slow heartbeat: %+v", r)
		}
		// Zero means the default.
		cfg = parseServerT(t, nil, append(base, "-raft-heartbeat-timeout=0", "-raft-election-timeout=0", "-raft-lease-timeout=0")...)
		if !reflect.DeepEqual(timings(cfg), timings(def)) {
			t.Fatalf("zero timings: %+v", timings(cfg))
		}
		// Snapshot settings.
		cfg = parseServerT(t, nil, append(base, "-raft-snapshot-interval=30s", "-raft-snapshot-threshold=65536", "-raft-trailing-logs=4096")...)
		if r := cfg; r.SnapshotInterval != 30*time.Second || r.SnapshotThreshold != 65536 || r.TrailingLogs != 4096 {
			t.Fatalf("snapshot settings: %+v", r)
		}
	})

	t.Run("raft log store", func(t *testing.T) {
		if cfg := parseServerT(t, nil, base...); cfg.RaftLogStore != replication.LogStoreWAL {
			t.Fatalf("default log store %q, want wal", cfg.RaftLogStore)
		}
		if cfg := parseServerT(t, nil, append(base, "-raft-log-store=boltdb")...); cfg.RaftLogStore != replication.LogStoreBoltDB {
			t.Fatalf("-raft-log-store=boltdb gave %q", cfg.RaftLogStore)
		}
		file := writeConfig(t, `{"node_id": "n1", "data_dir": "`+t.TempDir()+`", "raft_log_store": "boltdb"}`)
		if cfg := parseServerT(t, nil, "-config="+file); cfg.RaftLogStore != replication.LogStoreBoltDB {
			t.Fatalf("raft_log_store from the file gave %q", cfg.RaftLogStore)
		}
		if cfg := parseServerT(t, nil, "-config="+file, "-raft-log-store=wal"); cfg.RaftLogStore != replication.LogStoreWAL {
			t.Fatalf("the flag does not win over the file: %q", cfg.RaftLogStore)
		}
		bad := writeConfig(t, `{"node_id": "n1", "data_dir": "`+t.TempDir()+`", "raft_log_store": "rocksdb"}`)
		for _, args := range [][]string{append(base, "-raft-log-store=rocksdb"), {"-config=" + bad}} {
			e, _, errb := testEnv("", nil)
			if code := run(append([]string{"server"}, args...), e); code != 1 {
				t.Fatalf("%v: exit %d", args, code)
			}
			assertOneLineError(t, errb.String(), `invalid -raft-log-store="rocksdb" (or raft_log_store in -config): want wal or boltdb`)
		}
	})

	t.Run("usage errors", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"-join=nohostport"}, `invalid -join address "nohostport"`},
			{[]string{"-bootstrap-expect=-1"}, "invalid -bootstrap-expect=-1"},
			{[]string{"-bootstrap-expect=x"}, `invalid value "x" for flag -bootstrap-expect`},
			{[]string{"-dead-server-timeout=-1s"}, "invalid -dead-server-timeout=-1s"},
			{[]string{"-raft-heartbeat-timeout=-1s"}, "invalid -raft-heartbeat-timeout=-1s"},
			{[]string{"-raft-snapshot-interval=-1s"}, "invalid -raft-snapshot-interval=-1s"},
			{[]string{"-raft-trailing-logs=-5"}, `invalid value "-5" for flag -raft-trailing-logs`},
			{[]string{"-raft-heartbeat-timeout=100ms", "-raft-lease-timeout=200ms"}, "-raft-lease-timeout=200ms exceeds -raft-heartbeat-timeout=100ms"},
			{[]string{"-raft-election-timeout=100ms"}, "-raft-election-timeout=100ms is below -raft-heartbeat-timeout=" + replication.DefaultConfig().HeartbeatTimeout.String()},
			// Checked by server.Config.Validate before anything starts.
			{[]string{"-read-replica"}, "needs -join"},
			{[]string{"-bootstrap-expect=3", "-api-addr=0.0.0.0:0", "-cluster-key=" + flagKey}, "-advertise"},
			{[]string{"-bootstrap-expect=3"}, "needs the gossip key"},
		} {
			e, _, errb := testEnv("", nil)
			if code := run(append(append([]string{"server"}, base...), c.args...), e); code != 1 {
				t.Fatalf("%v: exit %d", c.args, code)
			}
			assertOneLineError(t, errb.String(), c.want)
		}
	})
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "coffer.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Fixed wire values for the rendering tests.
var (
	testMembers = []*pb.Member{
		{Id: "n2", ApiAddress: "10.0.0.2:8400", RaftAddress: "10.0.0.2:8401", GossipAddress: "10.0.0.2:8402", Status: "suspect", Sealed: true, Voter: true, Version: "0.3.0"},
		{Id: "n1", ApiAddress: "10.0.0.1:8400", RaftAddress: "10.0.0.1:8401", GossipAddress: "10.0.0.1:8402", Status: "alive", Voter: true, Version: "0.3.0"},
		{Id: "r1", ApiAddress: "10.0.0.9:8400", RaftAddress: "10.0.0.9:8401", GossipAddress: "10.0.0.9:8402", Status: "alive", ReadReplica: true, Version: "0.3.0"},
	}
	testPeers = []*pb.Peer{
		{Id: "n1", Address: "10.0.0.1:8401", Voter: true, Leader: true, AppliedIndex: 120, Reachable: true},
		{Id: "n2", Address: "10.0.0.2:8401", Voter: true, AppliedIndex: 117, Lag: 3, Reachable: true},
		{Id: "n3", Address: "10.0.0.3:8401", Voter: true},
	}
)

func TestPrintMembers(t *testing.T) {
	var out bytes.Buffer
	if err := printMembers(&out, formatJSON, testMembers); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("not a JSON list: %v\n%s", err, out.String())
	}
	want := []map[string]any{
		{"id": "n1", "api_address": "10.0.0.1:8400", "raft_address": "10.0.0.1:8401", "gossip_address": "10.0.0.1:8402", "status": "alive", "sealed": false, "voter": true, "read_replica": false, "version": "0.3.0"},
		{"id": "n2", "api_address": "10.0.0.2:8400", "raft_address": "10.0.0.2:8401", "gossip_address": "10.0.0.2:8402", "status": "suspect", "sealed": true, "voter": true, "read_replica": false, "version": "0.3.0"},
		{"id": "r1", "api_address": "10.0.0.9:8400", "raft_address": "10.0.0.9:8401", "gossip_address": "10.0.0.9:8402", "status": "alive", "sealed": false, "voter": false, "read_replica": true, "version": "0.3.0"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("members JSON:\n%s\nwant %v", out.String(), want)
	}

	out.Reset()
	if err := printMembers(&out, formatTable, testMembers); err != nil {
		t.Fatal(err)
	}
	wantTable := `Node    API Address      Gossip Address    Status     Sealed    Voter
----    -----------      --------------    ------     ------    -----
n1      10.0.0.1:8400    10.0.0.1:8402     alive      false     true
n2      10.0.0.2:8400    10.0.0.2:8402     suspect    true      true
r1      10.0.0.9:8400    10.0.0.9:8402     alive      false     false (read replica)
`
	if out.String() != wantTable {
		t.Fatalf("members table:\n%s\nwant:\n%s", out.String(), wantTable)
	}

	out.Reset()
	if err := printMembers(&out, formatJSON, nil); err != nil || out.String() != "[]\n" {
		t.Fatalf("no members: %q %v", out.String(), err)
	}
}

func TestPrintPeers(t *testing.T) {
	var out bytes.Buffer
	if err := printPeers(&out, formatJSON, testPeers); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("not a JSON list: %v\n%s", err, out.String())
	}
	want := []map[string]any{
		{"id": "n1", "address": "10.0.0.1:8401", "voter": true, "leader": true, "applied_index": 120.0, "lag": 0.0, "reachable": true},
		{"id": "n2", "address": "10.0.0.2:8401", "voter": true, "leader": false, "applied_index": 117.0, "lag": 3.0, "reachable": true},
		{"id": "n3", "address": "10.0.0.3:8401", "voter": true, "leader": false, "applied_index": 0.0, "lag": 0.0, "reachable": false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("peers JSON:\n%s\nwant %v", out.String(), want)
	}

	out.Reset()
	if err := printPeers(&out, formatTable, testPeers); err != nil {
		t.Fatal(err)
	}
	wantTable := `Node    Address          Voter    Leader    Applied Index    Lag
----    -------          -----    ------    -------------    ---
n1      10.0.0.1:8401    true     true      120              0
n2      10.0.0.2:8401    true     false     117              3
n3      10.0.0.3:8401    true     false     unreachable      n/a
`
	if out.String() != wantTable {
		t.Fatalf("peers table:\n%s\nwant:\n%s", out.String(), wantTable)
	}
}

// TestOperatorUsageErrors runs operator command lines that fail before any
// call, in process.
func TestOperatorUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args    []string
		code    int
		wantErr string
		wantOut string
	}{
		{args: []string{"operator", "raft"}, code: 1},
		{args: []string{"operator", "raft", "-h"}, wantOut: "list-peers"},
		{args: []string{"operator", "raft", "frob"}, code: 1, wantErr: `unknown command "coffer operator raft frob"`},
		{args: []string{"operator", "raft", "snapshot", "-h"}, wantOut: "restore"},
		{args: []string{"operator", "raft", "snapshot", "restore", "-h"}, wantOut: "-force"},
		{args: []string{"operator", "raft", "remove-peer"}, code: 1, wantErr: "missing ID"},
		{args: []string{"operator", "raft", "remove-peer", ""}, code: 1, wantErr: "empty ID"},
		{args: []string{"operator", "raft", "list-peers", "x"}, code: 1, wantErr: "takes no arguments"},
		{args: []string{"operator", "members", "-format=yaml"}, code: 1, wantErr: `invalid -format "yaml"`},
		{args: []string{"operator", "step-down", "now"}, code: 1, wantErr: "takes no arguments"},
		{args: []string{"operator", "raft", "snapshot", "save"}, code: 1, wantErr: "missing FILE"},
		{args: []string{"operator", "raft", "snapshot", "restore", filepath.Join(dir, "nope.snap")}, code: 1, wantErr: "reading the snapshot"},
		{args: []string{"operator", "raft", "snapshot", "restore", dir}, code: 1, wantErr: "is not a regular file"},
		{args: []string{"operator", "raft", "snapshot", "restore", "x.snap", "-force"}, code: 1, wantErr: "flag -force must come before the arguments"},
		{args: []string{"operator", "-h"}, wantOut: "step-down"},
		{args: []string{"operator", "-h"}, wantOut: "rekey"},
		{args: []string{"operator", "unseal", "-reset", "-migrate"}, code: 1, wantErr: "-reset and -migrate exclude each other"},
		{args: []string{"operator", "unseal", "-h"}, wantOut: "-migrate"},
		{args: []string{"operator", "rekey"}, code: 1, wantErr: "give one of -init, -nonce, -status or -cancel"},
		{args: []string{"operator", "rekey", "-init", "-status"}, code: 1, wantErr: "give one of"},
		{args: []string{"operator", "rekey", "-status", "AAAA"}, code: 1, wantErr: "a SHARE goes with -nonce"},
		{args: []string{"operator", "rekey", "-init", "-key-shares=300"}, code: 1, wantErr: "at most 255"},
		{args: []string{"operator", "init", "-recovery-shares=256"}, code: 1, wantErr: "at most 255"},
		{args: []string{"server", "-h"}, wantOut: "-seal-key-file"},
		{args: []string{"server", "-h"}, wantOut: "-bootstrap-expect"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			e, out, errb := testEnv("", nil)
			if code := run(tt.args, e); code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.code, errb.String())
			}
			if tt.wantErr != "" {
				assertOneLineError(t, errb.String(), tt.wantErr)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Fatalf("stdout %q does not contain %q", out.String(), tt.wantOut)
			}
		})
	}
}

// TestSnapshotSaveUnreachable checks that a failed save leaves neither
// FILE nor FILE.tmp behind.
func TestSnapshotSaveUnreachable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "s.snap")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	e, _, errb := testEnv("", nil)
	if code := run([]string{"operator", "raft", "snapshot", "save", "-address=" + addr, file}, e); code != 1 {
		t.Fatalf("exit %d", code)
	}
	assertOneLineError(t, errb.String(), "is the server running?")
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
}

// timings are the Raft timings and snapshot settings of a config.
func timings(c server.Config) []any {
	return []any{c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout, c.CommitTimeout,
		c.SnapshotInterval, c.SnapshotThreshold, c.TrailingLogs, c.MaxAppendEntries}
}
