package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestLogFlags: -log-level and -log-format on the server and the agent,
// log_level and log_format in the server's -config (the flags win), and
// one-line errors naming the valid values, the source included.
func TestLogFlags(t *testing.T) {
	base := []string{"-node-id=n1", "-data-dir=" + t.TempDir()}
	parse := func(args ...string) (logSettings, error) {
		e, _, _ := testEnv("", nil)
		o, err := parseServer(e, append(append([]string{}, base...), args...))
		if err != nil {
			return logSettings{}, err
		}
		return o.logs, nil
	}
	for _, c := range []struct {
		args []string
		want logSettings
	}{
		{nil, logSettings{level: hclog.Info}},
		{[]string{"-log-level=debug", "-log-format=json"}, logSettings{level: hclog.Debug, json: true}},
		{[]string{"-log-level=TRACE", "-log-format=text"}, logSettings{level: hclog.Trace}},
		{[]string{"-config=" + writeConfig(t, `{"log_level": "warn", "log_format": "json"}`)}, logSettings{level: hclog.Warn, json: true}},
		{[]string{"-config=" + writeConfig(t, `{"log_level": "warn", "log_format": "json"}`), "-log-level=error", "-log-format=text"}, logSettings{level: hclog.Error}},
	} {
		got, err := parse(c.args...)
		if err != nil || got != c.want {
			t.Errorf("%v: %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-log-format=xml"}, `invalid -log-format "xml": want text or json`},
		{[]string{"-log-level=off"}, `invalid -log-level "off": want trace, debug, info, warn, error`},
		{[]string{"-config=" + writeConfig(t, `{"log_level": "loud"}`)}, `invalid log_level in -config "loud": want trace, debug, info, warn, error`},
		{[]string{"-config=" + writeConfig(t, `{"log_format": "yaml"}`)}, `invalid log_format in -config "yaml": want text or json`},
	} {
		e, _, errb := testEnv("", nil)
		if code := run(append(append([]string{"server"}, base...), c.args...), e); code != 1 {
			t.Fatalf("%v: exit %d", c.args, code)
		}
		assertOneLineError(t, errb.String(), c.want)
	}

	e, _, _ := testEnv("", nil)
	if _, err := parseAgent(e, []string{"-log-format=xml"}); err == nil || !strings.Contains(err.Error(), `invalid -log-format "xml": want text or json`) {
		t.Errorf("agent -log-format=xml: %v", err)
	}
	o, err := parseAgent(e, []string{"-log-format=json", "-log-level=debug"})
	if err != nil || o.logs != (logSettings{level: hclog.Debug, json: true}) {
		t.Errorf("agent -log-format=json -log-level=debug: %+v, %v", o, err)
	}
}

// TestJSONLogEndsInJSON: a server that fails after its logger exists ends
// a JSON log with one more JSON line (the error, with the node id), not a
// plain "Error:" line; a text log keeps the plain line.
func TestJSONLogEndsInJSON(t *testing.T) {
	args := []string{"server", "-insecure", "-node-id=n9", "-data-dir=" + t.TempDir(), "-bootstrap-expect=3"}
	e, _, errb := testEnv("", nil)
	if code := run(append(args, "-log-format=json"), e); code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	var last map[string]any
	for _, l := range lines {
		last = nil
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		if last["node"] != "n9" {
			t.Errorf("line without the node id: %q", l)
		}
	}
	if last["@level"] != "error" || !strings.Contains(last["error"].(string), "needs the gossip key") {
		t.Fatalf("last line %v: want the error", last)
	}

	e, _, errb = testEnv("", nil)
	if code := run(args, e); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	assertOneLineError(t, errb.String(), "needs the gossip key")
}

// TestTextLogCarriesNodeID: in the default text format, every line of a
// real node's stderr, from start to a clean stop, has a timestamp, a
// level, a module and node=<id>.
func TestTextLogCarriesNodeID(t *testing.T) {
	t.Parallel()
	p := startServer(t, nil, func(apiAddr, raftAddr string) []string {
		return []string{"-node-id=t1", "-data-dir=" + t.TempDir(), "-api-addr=" + apiAddr, "-raft-addr=" + raftAddr, "-log-level=debug"}
	})
	p.stop(t)
	line := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(TRACE|DEBUG|INFO|WARN|ERROR)\] +coffer[a-z.]*: .* node=t1( |$)`)
	lines := strings.Split(strings.TrimSpace(p.stderr.String()), "\n")
	debug := 0
	for _, l := range lines {
		if !line.MatchString(l) {
			t.Errorf("line %q: want a timestamp, a level, a module and node=t1", l)
		}
		if strings.Contains(l, "[DEBUG]") {
			debug++
		}
	}
	if len(lines) < 10 || debug == 0 {
		t.Fatalf("%d lines, %d at debug: want a debug log\n%s", len(lines), debug, p.stderr.String())
	}
}
