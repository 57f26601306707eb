package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"coffer/api"
	"coffer/internal/watchload"
)

// benchWatchResult is the outcome of `coffer bench watch`; its JSON form is
// what scripts read.
type benchWatchResult struct {
	Workload    string  `json:"workload"`
	Streams     int     `json:"streams"`
	Connections int     `json:"connections"`
	Prefixes    int     `json:"prefixes"`
	Rate        float64 `json:"rate"`
	DurationS   float64 `json:"duration_s"`
	Writes      int     `json:"writes"`
	WriteErrors int     `json:"write_errors"`
	// Expected is the deliveries the acknowledged writes owe the streams,
	// Delivered those that arrived (each once, in index order).
	Expected  int64 `json:"expected"`
	Delivered int64 `json:"delivered"`
	// Short counts acknowledged writes that missed a watcher;
	// Unacknowledged the deliveries of writes that failed (yet applied).
	Short          int     `json:"short_writes"`
	Unacknowledged int64   `json:"unacknowledged_deliveries"`
	Duplicates     int64   `json:"duplicates"`
	OutOfOrder     int64   `json:"out_of_order"`
	Foreign        int64   `json:"foreign"`
	Failed         int64   `json:"failed_streams"`
	Compacted      int64   `json:"compacted"`
	P50Ms          float64 `json:"delivery_p50_ms"`
	P99Ms          float64 `json:"delivery_p99_ms"`
	MaxMs          float64 `json:"delivery_max_ms"`
	// The same from each write's acknowledgement (0 for an event that
	// arrived before it): what the watch adds to the write.
	AckP50Ms   float64 `json:"delivery_after_ack_p50_ms"`
	AckP99Ms   float64 `json:"delivery_after_ack_p99_ms"`
	AckMaxMs   float64 `json:"delivery_after_ack_max_ms"`
	WriteP50Ms float64 `json:"write_p50_ms"`
	WriteP99Ms float64 `json:"write_p99_ms"`
	OpenS      float64 `json:"open_s"`
	// The nodes' RSS before the streams open, once they are open, and
	// after the load; NodeBytesPerStream is the growth of their sum
	// divided by the streams, ClientBytesPerStream this process's heap
	// and stacks.
	NodeRSSBefore        map[string]uint64 `json:"node_rss_before_bytes"`
	NodeRSSOpen          map[string]uint64 `json:"node_rss_open_bytes"`
	NodeRSSAfter         map[string]uint64 `json:"node_rss_after_bytes"`
	NodeBytesPerStream   float64           `json:"node_bytes_per_stream"`
	ClientBytesPerStream float64           `json:"client_bytes_per_stream"`
	FirstError           string            `json:"first_error,omitempty"`
}

// cmdBenchWatch is `coffer bench watch`.
func cmdBenchWatch(e *env, args []string) error {
	f := newFlags("coffer bench watch", "[flags]", `
Open -streams watch streams over the nodes (COFFER_ADDR, round robin, over
-connections connections of at most 1,000 streams each), write -rate
secrets a second for -duration under a new prefix, spread over -prefixes
sub-prefixes, and report for every change the time from the write's start
to its arrival at each stream whose prefix it falls under: delivered of
expected (each exactly once, in index order), p50/p99/max, and the nodes'
RSS before and after the streams open, so the memory per stream. Stream i
watches sub-prefix i mod -prefixes, every (-prefixes+1)-th the whole
prefix.`).withClient()
	var (
		streams, conns, prefixes int
		rate                     float64
		duration                 time.Duration
	)
	f.fs.IntVar(&streams, "streams", 1000, "watch streams to open")
	f.fs.IntVar(&conns, "connections", 0, "client connections the streams spread over (default: one per 1,000 streams, at least 10)")
	f.fs.IntVar(&prefixes, "prefixes", 10, "sub-prefixes the writes spread over")
	f.fs.Float64Var(&rate, "rate", 200, "writes per second")
	f.fs.DurationVar(&duration, "duration", 10*time.Second, "how long to write")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if conns == 0 {
		conns = max(10, (streams+999)/1000)
	}
	switch {
	case streams < 1 || streams > 1_000_000:
		return usageErrorf(f.name, "-streams=%d: want 1 to 1000000", streams)
	case conns < 1 || (streams+conns-1)/conns > 1000:
		return usageErrorf(f.name, "-connections=%d: want at least one per 1,000 streams (a connection carries 1,024 calls at most)", conns)
	case prefixes < 1 || prefixes > 10_000:
		return usageErrorf(f.name, "-prefixes=%d: want 1 to 10000", prefixes)
	case rate <= 0 || rate > 100_000:
		return usageErrorf(f.name, "-rate must be above 0 and at most 100000 writes a second")
	case duration <= 0 || duration > time.Hour:
		return usageErrorf(f.name, "-duration must be positive and at most 1h")
	}
	cfg, err := f.clientConfig(e)
	if err != nil {
		return err
	}
	cfg.DisableStaleFallback = true
	tuneGC()
	res, err := runBenchWatch(context.Background(), cfg, streams, conns, prefixes, rate, duration, e.stderr)
	if err != nil {
		return err
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, res)
	}
	printBenchWatch(e.stdout, res)
	return nil
}

// runBenchWatch runs the load of `coffer bench watch`.
func runBenchWatch(ctx context.Context, cfg api.Config, streams, conns, prefixes int, rate float64, duration time.Duration, progress io.Writer) (*benchWatchResult, error) {
	clients := make([]*api.Client, conns)
	for i := range clients {
		c := cfg
		c.Endpoints = []string{cfg.Endpoints[i%len(cfg.Endpoints)]}
		cl, err := api.New(c)
		if err != nil {
			return nil, &cliError{code: 1, msg: err.Error()}
		}
		defer cl.Close()
		clients[i] = cl
	}
	writer, err := api.New(cfg)
	if err != nil {
		return nil, &cliError{code: 1, msg: err.Error()}
	}
	defer writer.Close()
	run := make([]byte, 4)
	rand.Read(run)
	out := &benchWatchResult{Workload: "watch", Streams: streams, Connections: conns, Prefixes: prefixes, Rate: rate, DurationS: duration.Seconds()}
	out.NodeRSSBefore = nodeRSS(ctx, cfg)
	fmt.Fprintf(progress, "opening %d watch streams over %d connections…\n", streams, conns)
	res, err := watchload.Run(ctx, watchload.Config{
		Clients: clients, Writer: writer, Streams: streams, Groups: prefixes,
		Prefix: "secret/bench-watch/" + hex.EncodeToString(run) + "/",
		Rate:   rate, Duration: duration,
		Opened: func() {
			out.NodeRSSOpen = nodeRSS(ctx, cfg)
			fmt.Fprintf(progress, "writing %.0f secrets a second for %v…\n", rate, duration)
		},
	})
	if err != nil {
		return nil, &cliError{code: 1, msg: err.Error()}
	}
	out.NodeRSSAfter = nodeRSS(ctx, cfg)
	out.Writes, out.WriteErrors = res.Writes, res.WriteErrors
	out.Expected, out.Delivered = res.Expected, res.Delivered
	out.Short, out.Unacknowledged = res.Short, res.Unacknowledged
	out.Duplicates, out.OutOfOrder, out.Foreign = res.Duplicates, res.OutOfOrder, res.Foreign
	out.Failed, out.Compacted = res.Failed, res.Compacted
	out.P50Ms, out.P99Ms, out.MaxMs = ms(res.P50), ms(res.P99), ms(res.Max)
	out.AckP50Ms, out.AckP99Ms, out.AckMaxMs = ms(res.AckP50), ms(res.AckP99), ms(res.AckMax)
	wp50, wp99, _ := res.WriteLatency()
	out.WriteP50Ms, out.WriteP99Ms = ms(wp50), ms(wp99)
	out.OpenS = res.OpenTime.Seconds()
	out.ClientBytesPerStream = res.ClientBytesPerStream
	var grown int64
	for id, b := range out.NodeRSSOpen {
		if a, ok := out.NodeRSSBefore[id]; ok {
			grown += int64(b) - int64(a)
		}
	}
	out.NodeBytesPerStream = float64(grown) / float64(streams)
	out.FirstError = res.FirstError
	return out, nil
}

// printBenchWatch writes the table form of a result.
func printBenchWatch(w io.Writer, r *benchWatchResult) {
	rows := []row{
		{"workload", r.Workload},
		{"streams", fmt.Sprintf("%d over %d connections (opened in %.1fs)", r.Streams, r.Connections, r.OpenS)},
		{"prefixes", strconv.Itoa(r.Prefixes)},
		{"writes", fmt.Sprintf("%d at %.0f/s for %.1fs (%d failed)", r.Writes, r.Rate, r.DurationS, r.WriteErrors)},
		{"write latency", fmt.Sprintf("p50 %.2f ms, p99 %.2f ms", r.WriteP50Ms, r.WriteP99Ms)},
		{"delivered", fmt.Sprintf("%d of %d (%d writes short of a watcher; %d deliveries of failed writes)", r.Delivered, r.Expected, r.Short, r.Unacknowledged)},
		{"delivery p50", fmt.Sprintf("%.2f ms from the write's start, %.2f ms from its acknowledgement", r.P50Ms, r.AckP50Ms)},
		{"delivery p99", fmt.Sprintf("%.2f ms from the write's start, %.2f ms from its acknowledgement", r.P99Ms, r.AckP99Ms)},
		{"delivery max", fmt.Sprintf("%.2f ms from the write's start, %.2f ms from its acknowledgement", r.MaxMs, r.AckMaxMs)},
		{"duplicates", strconv.FormatInt(r.Duplicates, 10)},
		{"out of order", strconv.FormatInt(r.OutOfOrder, 10)},
		{"outside prefix", strconv.FormatInt(r.Foreign, 10)},
		{"failed streams", strconv.FormatInt(r.Failed, 10)},
		{"compacted", strconv.FormatInt(r.Compacted, 10)},
	}
	ids := make([]string, 0, len(r.NodeRSSBefore))
	for id := range r.NodeRSSBefore {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rows = append(rows, row{"rss " + id, fmt.Sprintf("%s → %s (streams open) → %s (after)",
			mib(float64(r.NodeRSSBefore[id])), mib(float64(r.NodeRSSOpen[id])), mib(float64(r.NodeRSSAfter[id])))})
	}
	rows = append(rows,
		row{"node memory per stream", fmt.Sprintf("%.1f KiB (RSS growth of the nodes / streams)", r.NodeBytesPerStream/1024)},
		row{"client memory per stream", fmt.Sprintf("%.1f KiB (this process's heap and stacks)", r.ClientBytesPerStream/1024)})
	if r.FirstError != "" {
		rows = append(rows, row{"first error", r.FirstError})
	}
	printKV(w, rows)
}
