package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/timeline"
)

// benchResult is the outcome of one `coffer bench` run; its JSON form is
// what scripts read.
type benchResult struct {
	Workload    string            `json:"workload"`
	Protocol    string            `json:"protocol"`
	Clients     int               `json:"clients"`
	Consistency string            `json:"consistency"`
	ValueSize   int               `json:"value_size"`
	Keys        int               `json:"keys"`
	DurationS   float64           `json:"duration_s"`
	Ops         int64             `json:"ops"`
	OpsPerSec   float64           `json:"ops_per_sec"`
	P50Ms       float64           `json:"p50_ms"`
	P90Ms       float64           `json:"p90_ms"`
	P99Ms       float64           `json:"p99_ms"`
	MaxMs       float64           `json:"max_ms"`
	Errors      map[string]int64  `json:"errors"`
	NodeRSS     map[string]uint64 `json:"node_rss_bytes,omitempty"`
	// Timeline is the picture -timeline wrote.
	Timeline string `json:"timeline,omitempty"`
}

// benchOpts are the flags of `coffer bench`.
type benchOpts struct {
	workload    string
	clients     int
	duration    time.Duration
	valueSize   int
	keys        int
	consistency pb.Consistency
	consName    string
	writeRatio  float64
	prefix      string
	cpuProfile  string
	// tokenType is the token type of the approle-login workload's role.
	tokenType string
	// protocol is the API the workers call: grpc, or http (the
	// Vault-compatible HTTP API at httpAddrs).
	protocol  string
	httpAddrs string
	// timeline is the PNG file of -timeline ("": none).
	timeline string
	// noPrepopulate reads keys written before (coffer bench preload)
	// instead of writing them first.
	noPrepopulate bool
}

// benchValue is a value of size printable bytes (values are strings).
func benchValue(size int) string {
	value := make([]byte, size)
	rand.Read(value)
	for i := range value {
		value[i] = 'a' + value[i]%26
	}
	return string(value)
}

// benchKey names the keys of the workloads and of the preload: prefix +
// "k" + index.
func benchKey(prefix string) func(int) string {
	return func(i int) string { return prefix + "k" + strconv.Itoa(i) }
}

// validPrefix reports whether a -prefix names a folder.
func validPrefix(p string) bool { return strings.HasSuffix(p, "/") }

func cmdBench(e *env, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "preload":
			return cmdBenchPreload(e, args[1:])
		case "report":
			return cmdBenchReport(e, args[1:])
		case "plot":
			return cmdBenchPlot(e, args[1:])
		case "watch":
			return cmdBenchWatch(e, args[1:]) // its own flags: benchwatch.go
		}
	}
	f := newFlags("coffer bench", "[flags] kv-write|kv-read|mixed|approle-login  (or: coffer bench preload|report|plot|watch -h)", `
Load a cluster (COFFER_ADDR, or one node with -address) and report ops/s,
latency percentiles, errors by kind and the nodes' memory. kv-read and mixed
first write the keys they read (-no-prepopulate: they were written before,
by coffer bench preload). approle-login first writes the AppRole role
bench-<token type> (token_policies default) and a secret_id without a use
limit, then logs in with them (-token-type=batch: any node serves it;
service: the leader writes each token). Progress goes to stderr once a
second.

-protocol=http drives the same KV workloads through the Vault-compatible
HTTP API instead (KV v2 at secret/data/…, X-Vault-Token): -http-addr or
VAULT_ADDR names the nodes' HTTP addresses, the TLS and token settings are
the gRPC ones. The HTTP workers use plain net/http, one keep-alive HTTP/1.1
connection each, so that the figures are the server's.

-timeline=FILE.png draws the run over time: writes/s and reads/s in 100 ms
buckets, failed calls and reads answered staler than asked marked (as the
chaos suite's pictures; logins count as writes with service tokens, reads
with batch tokens).`).withClient()
	o := benchOpts{}
	f.fs.IntVar(&o.clients, "clients", 16, "concurrent clients")
	f.fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to run")
	f.fs.IntVar(&o.valueSize, "value-size", 256, "bytes per value")
	f.fs.IntVar(&o.keys, "keys", 1000, "distinct secrets")
	f.fs.StringVar(&o.consName, "consistency", "default", "read consistency: stale, default or linearizable")
	f.fs.Float64Var(&o.writeRatio, "write-ratio", 0.1, "share of writes in the mixed workload")
	f.fs.StringVar(&o.prefix, "prefix", "secret/bench/", "path prefix of the secrets written")
	f.fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this load generator to this file (the nodes' profiles: coffer server -pprof-addr)")
	f.fs.StringVar(&o.tokenType, "token-type", "batch", "approle-login: the type of the tokens, batch or service")
	f.fs.StringVar(&o.protocol, "protocol", "grpc", "the API to load: grpc, or http (the Vault-compatible HTTP API)")
	f.fs.StringVar(&o.httpAddrs, "http-addr", "", "with -protocol=http: the nodes' HTTP API, host:port[,host:port…] (default $VAULT_ADDR)")
	f.fs.StringVar(&o.timeline, "timeline", "", "draw the operations per second over time into this PNG file")
	f.fs.BoolVar(&o.noPrepopulate, "no-prepopulate", false, "kv-read and mixed: read the keys a coffer bench preload wrote (same -keys and -prefix) instead of writing them first")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "WORKLOAD"); err != nil {
		return err
	}
	o.workload = args[0]
	switch o.workload {
	case "kv-write", "kv-read", "mixed", "approle-login":
	default:
		return usageErrorf(f.name, "unknown workload %q: want kv-write, kv-read, mixed or approle-login", o.workload)
	}
	switch o.protocol {
	case "grpc":
	case "http":
		if o.workload == "approle-login" {
			return usageErrorf(f.name, "-protocol=http runs kv-write, kv-read and mixed; approle-login is gRPC only")
		}
		if o.httpAddrs == "" {
			o.httpAddrs = e.getenv("VAULT_ADDR")
		}
	default:
		return usageErrorf(f.name, "-protocol=%q: want grpc or http", o.protocol)
	}
	if o.tokenType != "batch" && o.tokenType != "service" {
		return usageErrorf(f.name, "-token-type=%q: want batch or service", o.tokenType)
	}
	if o.consistency, err = parseConsistency(o.consName); err != nil {
		return err
	}
	switch {
	case o.clients < 1 || o.clients > 4096:
		return usageErrorf(f.name, "-clients=%d: want 1 to 4096", o.clients)
	case o.duration <= 0:
		return usageErrorf(f.name, "-duration must be positive")
	case o.valueSize < 1 || o.valueSize > 1<<20:
		return usageErrorf(f.name, "-value-size=%d: want 1 to 1048576 bytes", o.valueSize)
	case o.keys < 1:
		return usageErrorf(f.name, "-keys must be at least 1")
	case o.writeRatio < 0 || o.writeRatio > 1:
		return usageErrorf(f.name, "-write-ratio must be between 0 and 1")
	case !validPrefix(o.prefix):
		return usageErrorf(f.name, "-prefix must end with /")
	case o.timeline != "" && !strings.EqualFold(filepath.Ext(o.timeline), ".png"):
		return usageErrorf(f.name, "-timeline=%q: the picture is a PNG: name the file *.png", o.timeline)
	}
	cfg, err := f.clientConfig(e)
	if err != nil {
		return err
	}
	cfg.DisableStaleFallback = true
	tuneGC()
	if o.cpuProfile != "" {
		pf, err := os.Create(o.cpuProfile)
		if err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("-cpuprofile: %v", err)}
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("-cpuprofile: %v", err)}
		}
		defer pprof.StopCPUProfile()
	}
	// A -timeline file that cannot be written fails before the load.
	var picture *os.File
	if o.timeline != "" {
		if picture, err = os.Create(o.timeline); err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("-timeline: %v", err)}
		}
		defer picture.Close()
	}
	res, events, err := runBench(context.Background(), cfg, o, e.stderr)
	if err == nil && picture != nil {
		err = writeTimeline(picture, o, res, events)
	}
	if err != nil {
		if picture != nil {
			picture.Close()
			os.Remove(o.timeline)
		}
		return err
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, res)
	}
	printBench(e.stdout, res)
	return nil
}

// parseConsistency maps a -consistency value to the wire enum.
func parseConsistency(s string) (pb.Consistency, error) {
	switch s {
	case "default", "":
		return pb.Consistency_CONSISTENCY_DEFAULT, nil
	case "stale":
		return pb.Consistency_CONSISTENCY_STALE, nil
	case "linearizable":
		return pb.Consistency_CONSISTENCY_LINEARIZABLE, nil
	}
	return 0, &cliError{code: 1, msg: fmt.Sprintf("invalid -consistency %q: want stale, default or linearizable", s)}
}

// writeTimeline draws the events of a run into f and names it in res.
func writeTimeline(f *os.File, o benchOpts, res *benchResult, events []timeline.Event) error {
	s := timeline.Series{
		Title:  fmt.Sprintf("coffer bench %s: %d clients, %s, %s reads", res.Workload, o.clients, o.protocol, o.consName),
		Events: events,
	}
	if err := s.Render(f, 0, 0); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-timeline: %v", err)}
	}
	if err := f.Close(); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-timeline: %v", err)}
	}
	res.Timeline = o.timeline
	return nil
}

// runBench prepares the keys, runs the clients for the duration and
// gathers the figures, and with -timeline every call's end and outcome.
func runBench(ctx context.Context, cfg api.Config, o benchOpts, progress io.Writer) (*benchResult, []timeline.Event, error) {
	val, key := benchValue(o.valueSize), benchKey(o.prefix)
	if o.protocol == "http" {
		return runHTTPBench(ctx, cfg, o, val, key, progress)
	}

	// One client per group of 8 workers, so that load spreads over several
	// HTTP/2 connections as it would from several services.
	nClients := (o.clients + 7) / 8
	clients := make([]*api.Client, nClients)
	for i := range clients {
		ccfg := cfg
		if o.workload == "approle-login" && len(cfg.Endpoints) > 1 {
			// A login goes to the first endpoint that answers: rotate the
			// list so that the clients spread over the nodes.
			k := i % len(cfg.Endpoints)
			ccfg.Endpoints = append(append([]string(nil), cfg.Endpoints[k:]...), cfg.Endpoints[:k]...)
		}
		c, err := api.New(ccfg)
		if err != nil {
			return nil, nil, &cliError{code: 1, msg: err.Error()}
		}
		defer c.Close()
		clients[i] = c
	}
	var roleID, secretID string
	if o.workload == "approle-login" {
		var err error
		if roleID, secretID, err = prepareLogin(ctx, clients[0], o.tokenType); err != nil {
			return nil, nil, err
		}
	} else if o.workload != "kv-write" && !o.noPrepopulate {
		fmt.Fprintf(progress, "writing %d keys of %d bytes…\n", o.keys, o.valueSize)
		if err := prepopulate(ctx, clients, o.keys, key, val); err != nil {
			return nil, nil, err
		}
	}

	res, events := runWorkers(ctx, o, progress, func(ctx context.Context, w int, k string, write bool) (bool, error) {
		c := clients[w/8]
		var err error
		switch {
		case o.workload == "approle-login":
			_, err = c.LoginAppRole(ctx, roleID, secretID)
		case write:
			_, err = c.Put(ctx, &pb.PutRequest{Path: k, Data: map[string]string{"v": val}})
		default:
			var info api.ReadInfo
			_, info, err = c.GetWithInfo(ctx, &pb.GetRequest{Path: k, Read: &pb.ReadOptions{Consistency: o.consistency}})
			// Staler than asked: a fallback, or marked stale when the
			// read did not ask for a stale answer.
			return info.Fallback || info.Stale && o.consistency != pb.Consistency_CONSISTENCY_STALE, err
		}
		return false, err
	}, key)
	res.NodeRSS = nodeRSS(ctx, cfg)
	return res, events, nil
}

// runHTTPBench is runBench over the HTTP API (-protocol=http).
func runHTTPBench(ctx context.Context, cfg api.Config, o benchOpts, val string, key func(int) string, progress io.Writer) (*benchResult, []timeline.Event, error) {
	b, err := newHTTPBench(api.SplitEndpoints(o.httpAddrs), cfg.TLS, cfg.Token, o.consName, o.clients)
	if err != nil {
		return nil, nil, err
	}
	defer b.close()
	body, err := putBody(val)
	if err != nil {
		return nil, nil, err
	}
	if o.workload != "kv-write" && !o.noPrepopulate {
		fmt.Fprintf(progress, "writing %d keys of %d bytes over HTTP…\n", o.keys, o.valueSize)
		if err := b.prepopulate(ctx, o.keys, key, body); err != nil {
			return nil, nil, err
		}
	}
	res, events := runWorkers(ctx, o, progress, func(ctx context.Context, w int, k string, write bool) (bool, error) {
		if write {
			return false, b.put(ctx, w, k, body)
		}
		return false, b.get(ctx, w, k)
	}, key)
	res.NodeRSS = nodeRSS(ctx, cfg)
	return res, events, nil
}

// runWorkers runs o.clients workers calling op for o.duration (each call
// within 10s) and gathers the figures; the caller adds the nodes' RSS. op
// reports whether a read was answered staler than it asked. With
// -timeline it also returns every call's end and outcome.
func runWorkers(ctx context.Context, o benchOpts, progress io.Writer, op func(ctx context.Context, w int, key string, write bool) (stale bool, err error), key func(int) string) (*benchResult, []timeline.Event) {
	var ops atomic.Int64
	var errMu sync.Mutex
	errs := map[string]int64{}
	lat := make([][]time.Duration, o.clients)
	evs := make([][]timeline.Event, o.clients)
	// A login writes a token with service tokens only.
	loginKind := timeline.Read
	if o.tokenType == "service" {
		loginKind = timeline.Write
	}
	deadline := time.Now().Add(o.duration)
	done := make(chan struct{})
	go benchProgress(progress, &ops, o.duration, done)

	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < o.clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := uint64(w)*0x9E3779B97F4A7C15 + 1
			next := func() uint64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
			local := make([]time.Duration, 0, 4096)
			var events []timeline.Event
			for time.Now().Before(deadline) {
				k := key(int(next() % uint64(o.keys)))
				write := o.workload == "kv-write" || (o.workload == "mixed" && float64(next()%10000)/10000 < o.writeRatio)
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				stale, err := op(cctx, w, k, write)
				cancel()
				t1 := time.Now()
				if o.timeline != "" {
					e := timeline.Event{At: t1, Kind: timeline.Read}
					switch {
					case o.workload == "approle-login":
						e.Kind = loginKind
					case write:
						e.Kind = timeline.Write
					}
					switch {
					case err != nil:
						e.Outcome = timeline.Failed
					case stale:
						e.Outcome = timeline.Stale
					}
					events = append(events, e)
				}
				if err != nil {
					errMu.Lock()
					errs[errKind(err)]++
					errMu.Unlock()
					continue
				}
				local = append(local, t1.Sub(t0))
				ops.Add(1)
			}
			lat[w], evs[w] = local, events
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(done)

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	workload := o.workload
	if workload == "approle-login" {
		workload += " (" + o.tokenType + ")"
	}
	res := &benchResult{
		Workload: workload, Protocol: o.protocol, Clients: o.clients, Consistency: o.consName, ValueSize: o.valueSize, Keys: o.keys,
		DurationS: elapsed.Seconds(), Ops: int64(len(all)), OpsPerSec: float64(len(all)) / elapsed.Seconds(),
		P50Ms: pct(all, 0.50), P90Ms: pct(all, 0.90), P99Ms: pct(all, 0.99), Errors: errs,
	}
	if len(all) > 0 {
		res.MaxMs = ms(all[len(all)-1])
	}
	var events []timeline.Event
	for _, e := range evs {
		events = append(events, e...)
	}
	return res, events
}

// prepareLogin writes the AppRole role of the approle-login workload and
// returns its role_id and a secret_id without a use limit.
func prepareLogin(ctx context.Context, c *api.Client, tokenType string) (roleID, secretID string, err error) {
	fail := func(what string, err error) (string, string, error) {
		return "", "", &cliError{code: 1, msg: fmt.Sprintf("preparing the logins: %s: %s", what, status.Convert(err).Message())}
	}
	name := "bench-" + tokenType
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.WriteAppRole(cctx, &pb.AppRole{Name: name, Token: &pb.RoleToken{Type: tokenType, TtlSeconds: 600}}); err != nil {
		return fail("writing the role", err)
	}
	if roleID, err = c.AppRoleID(cctx, name); err != nil {
		return fail("reading its role_id", err)
	}
	s, err := c.AppRoleSecretID(cctx, name)
	if err != nil {
		return fail("making a secret_id", err)
	}
	// A follower that has not applied the secret_id yet asks the leader
	// for it: the first logins are a little slower, none fails.
	return roleID, s.GetSecretId(), nil
}

// prepopulate writes every key once, spread over the clients, from 16
// workers (preloadKeys, without its progress lines).
func prepopulate(ctx context.Context, clients []*api.Client, keys int, key func(int) string, val string) error {
	_, err := preloadKeys(ctx, 0, keys, 16, io.Discard, func(ctx context.Context, w, i int) error {
		_, err := clients[w%len(clients)].Put(ctx, &pb.PutRequest{Path: key(i), Data: map[string]string{"v": val}})
		return err
	})
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("writing the keys to read: %v", err)}
	}
	return nil
}

// benchProgress prints the running rate once a second until done closes.
func benchProgress(w io.Writer, ops *atomic.Int64, total time.Duration, done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start, last := time.Now(), int64(0)
	for {
		select {
		case <-done:
			return
		case <-t.C:
			n := ops.Load()
			fmt.Fprintf(w, "%5.0fs / %s: %d ops, %d ops/s\n", time.Since(start).Seconds(), total, n, n-last)
			last = n
		}
	}
}

// errKind names an error by its gRPC code ("timeout" for deadlines; "http
// 503" and the like for answers of the HTTP API, "transport" for an HTTP
// call that got none).
func errKind(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	var he *httpStatusError
	if errors.As(err, &he) {
		return fmt.Sprintf("http %d", he.code)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return "transport"
	}
	return strings.ToLower(status.Code(err).String())
}

// nodeRSS asks every endpoint for its node's resident memory.
func nodeRSS(ctx context.Context, cfg api.Config) map[string]uint64 {
	out := map[string]uint64{}
	for _, ep := range cfg.Endpoints {
		c := cfg
		c.Endpoints = []string{ep}
		cl, err := api.New(c)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cl.Status(sctx)
		cancel()
		cl.Close()
		if err == nil && st.GetMemoryRssBytes() > 0 && status.Code(err) != codes.Unimplemented {
			out[st.GetNodeId()] = st.GetMemoryRssBytes()
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the q-quantile of sorted latencies, in milliseconds.
func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * q)
	return ms(sorted[i])
}

// printBench writes the table form of a result.
func printBench(w io.Writer, r *benchResult) {
	rows := []row{
		{"workload", r.Workload},
		{"protocol", r.Protocol},
		{"clients", strconv.Itoa(r.Clients)},
		{"consistency", r.Consistency},
		{"value size", strconv.Itoa(r.ValueSize) + " B"},
		{"duration", fmt.Sprintf("%.1fs", r.DurationS)},
		{"ops", strconv.FormatInt(r.Ops, 10)},
		{"ops/s", fmt.Sprintf("%.0f", r.OpsPerSec)},
		{"latency p50", fmt.Sprintf("%.2f ms", r.P50Ms)},
		{"latency p90", fmt.Sprintf("%.2f ms", r.P90Ms)},
		{"latency p99", fmt.Sprintf("%.2f ms", r.P99Ms)},
		{"latency max", fmt.Sprintf("%.2f ms", r.MaxMs)},
	}
	kinds := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	if len(kinds) == 0 {
		rows = append(rows, row{"errors", "0"})
	}
	for _, k := range kinds {
		rows = append(rows, row{"errors " + k, strconv.FormatInt(r.Errors[k], 10)})
	}
	ids := make([]string, 0, len(r.NodeRSS))
	for id := range r.NodeRSS {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rows = append(rows, row{"rss " + id, fmt.Sprintf("%.1f MiB", float64(r.NodeRSS[id])/(1<<20))})
	}
	if r.Timeline != "" {
		rows = append(rows, row{"timeline", r.Timeline})
	}
	printKV(w, rows)
}
