package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// preloadResult is the outcome of `coffer bench preload`; its JSON form
// is what scripts read.
type preloadResult struct {
	Keys      int     `json:"keys"`
	From      int     `json:"from"`
	Written   int     `json:"written"`
	ValueSize int     `json:"value_size"`
	DurationS float64 `json:"duration_s"`
	KeysPerS  float64 `json:"keys_per_sec"`
}

// cmdBenchPreload is `coffer bench preload`: it writes the keys the read
// workloads read, fast, so that a row over a large key space
// (bench -no-prepopulate) does not write them itself.
func cmdBenchPreload(e *env, args []string) error {
	f := newFlags("coffer bench preload", "[flags]", `
Write the keys 0 … -keys minus 1 that coffer bench kv-read and mixed read
(PREFIX + "k" + index, values of -value-size printable bytes), with
-clients concurrent writers sharing one connection per eight. Progress, rate
and the time left go to stderr once a second.

Resumable: on an error or an interrupt (Ctrl-C) it says which -from=K
continues, every key below K being written; a later run with that -from
writes the rest. Then run the workloads with the same -keys and -prefix and
-no-prepopulate, e.g.

    coffer bench preload -keys=1000000
    coffer bench -keys=1000000 -no-prepopulate -consistency=stale kv-read`).withClient()
	var keys, from, clients, valueSize int
	var prefix string
	f.fs.IntVar(&keys, "keys", 0, "how many keys: 0 … keys-1 are written (required)")
	f.fs.IntVar(&from, "from", 0, "first key to write: resume an interrupted preload")
	f.fs.IntVar(&clients, "clients", 256, "concurrent writers")
	f.fs.IntVar(&valueSize, "value-size", 256, "bytes per value")
	f.fs.StringVar(&prefix, "prefix", "secret/bench/", "path prefix of the keys, as coffer bench -prefix")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	switch {
	case keys < 1:
		return usageErrorf(f.name, "-keys=%d: give how many keys to write, at least 1", keys)
	case from < 0 || from >= keys:
		return usageErrorf(f.name, "-from=%d: want 0 to %d (-keys minus 1)", from, keys-1)
	case clients < 1 || clients > 4096:
		return usageErrorf(f.name, "-clients=%d: want 1 to 4096", clients)
	case valueSize < 1 || valueSize > 1<<20:
		return usageErrorf(f.name, "-value-size=%d: want 1 to 1048576 bytes", valueSize)
	case !validPrefix(prefix):
		return usageErrorf(f.name, "-prefix must end with /")
	}
	cfg, err := f.clientConfig(e)
	if err != nil {
		return err
	}
	cfg.DisableStaleFallback = true
	tuneGC()
	conns := make([]*api.Client, (clients+7)/8)
	for i := range conns {
		c, err := api.New(cfg)
		if err != nil {
			return &cliError{code: 1, msg: err.Error()}
		}
		defer c.Close()
		conns[i] = c
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	val, key := benchValue(valueSize), benchKey(prefix)
	start := time.Now()
	next, err := preloadKeys(ctx, from, keys, clients, e.stderr, func(ctx context.Context, w, i int) error {
		_, err := conns[w/8].Put(ctx, &pb.PutRequest{Path: key(i), Data: map[string]string{"v": val}})
		return err
	})
	elapsed := time.Since(start)
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("preload stopped: %v; keys %d to %d are written: resume with -from=%d", err, from, next-1, next)}
	}
	res := preloadResult{Keys: keys, From: from, Written: keys - from, ValueSize: valueSize,
		DurationS: elapsed.Seconds(), KeysPerS: float64(keys-from) / elapsed.Seconds()}
	if f.format == formatJSON {
		return printJSON(e.stdout, res)
	}
	printKV(e.stdout, []row{
		{"keys", fmt.Sprintf("%d to %d", from, keys-1)},
		{"written", fmt.Sprint(res.Written)},
		{"value size", fmt.Sprintf("%d B", valueSize)},
		{"duration", fmt.Sprintf("%.1fs", res.DurationS)},
		{"keys/s", fmt.Sprintf("%.0f", res.KeysPerS)},
	})
	return nil
}

// preloadRetryable reports whether a failed write may be tried again: the
// cluster had no leader or was slow for a moment.
func preloadRetryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

// preloadKeys calls put for every index from from to keys-1 with workers
// concurrent callers (put's w is the caller, 0 … workers-1), each call
// within 30 s and tried up to five times while preloadRetryable. It
// returns keys when all succeeded; otherwise the first error and the
// resume point next: every index below next was put. ctx ending stops it
// the same way, with ctx's error.
func preloadKeys(ctx context.Context, from, keys, workers int, progress io.Writer, put func(ctx context.Context, w, i int) error) (next int, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var counter atomic.Int64 // the next index to hand out
	counter.Store(int64(from))
	// pending[w] is the index worker w has not finished (math.MaxInt64:
	// none); the lowest of them and the counter bound the written prefix.
	pending := make([]atomic.Int64, workers)
	var done atomic.Int64
	var once sync.Once
	var first error
	fail := func(e error) {
		once.Do(func() { first = e; cancel() })
	}
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		preloadProgress(progress, &done, keys-from, stopProgress)
	}()
	var wg sync.WaitGroup
	for w := range workers {
		pending[w].Store(math.MaxInt64)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := counter.Add(1) - 1
				if i >= int64(keys) {
					return
				}
				pending[w].Store(i)
				if err := putRetrying(ctx, w, int(i), put); err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("writing key %d: %s", i, status.Convert(err).Message()))
					}
					return
				}
				pending[w].Store(math.MaxInt64)
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	<-progressDone
	next = int(min(counter.Load(), int64(keys)))
	for w := range pending {
		next = int(min(int64(next), pending[w].Load()))
	}
	if first == nil && next < keys {
		first = errors.New("interrupted")
	}
	if first != nil {
		return next, first
	}
	return keys, nil
}

// putRetrying is one put of preloadKeys with its retries.
func putRetrying(ctx context.Context, w, i int, put func(ctx context.Context, w, i int) error) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * 200 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = put(cctx, w, i)
		cancel()
		if err == nil || ctx.Err() != nil || !preloadRetryable(err) {
			break
		}
	}
	if err == nil && ctx.Err() != nil {
		return nil // this one was written before the stop
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// preloadProgress prints the keys written, the rate and the time left once
// a second until stop closes.
func preloadProgress(w io.Writer, done *atomic.Int64, total int, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start, last := time.Now(), int64(0)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			n := done.Load()
			rate := float64(n) / time.Since(start).Seconds()
			eta := "?"
			if rate > 0 {
				eta = (time.Duration(float64(int64(total)-n)/rate) * time.Second).Round(time.Second).String()
			}
			fmt.Fprintf(w, "preload: %d/%d keys (%.1f %%), %d keys/s now, %.0f keys/s overall, %s left\n",
				n, total, 100*float64(n)/float64(total), n-last, rate, eta)
			last = n
		}
	}
}
