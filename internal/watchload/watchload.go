// Package watchload opens many watch streams over a cluster, writes secrets
// at a steady rate and measures how long each change takes to reach every
// watcher whose prefix it falls under. It checks as it goes that every
// watcher sees each of its changes exactly once, in index order, and none
// of the others'. coffer bench watch and the watch scale test use it.
package watchload

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Config is one run. Clients carry the streams (round robin, one client per
// connection: a connection carries at most 1,024 calls at once); Writer
// writes.
type Config struct {
	Clients []*api.Client
	Writer  *api.Client
	// Streams is how many watches to open; Groups how many sub-prefixes
	// the writes spread over. Stream i watches Prefix+"g<i mod Groups>/",
	// except every (Groups+1)-th, which watches Prefix whole.
	Streams, Groups int
	// Prefix ends with "/" and should be new for the run.
	Prefix string
	// Rate is the writes per second, Duration how long they go on.
	Rate     float64
	Duration time.Duration
	// Drain bounds the wait for the last deliveries after the writes
	// (default 10s), WriteTimeout each write (default 10s).
	Drain, WriteTimeout time.Duration
	// Opened, when set, is called once every stream is open, before the
	// first write (to take the nodes' memory).
	Opened func()
}

// Result is what a run measured.
type Result struct {
	Streams int
	// Writes is the writes acknowledged, WriteErrors the writes that
	// failed (their changes are not counted either way).
	Writes, WriteErrors int
	// Expected is the deliveries the acknowledged writes owe the
	// watchers, Delivered those that arrived (Unacknowledged counts the
	// deliveries of writes that failed yet were applied); Duplicates,
	// OutOfOrder and Foreign count events a watcher saw twice, before a
	// lower index, or outside its prefix; Failed counts streams that
	// ended with an error. Short counts the acknowledged writes that did
	// not reach every watcher of their prefix: with no duplicates and none
	// foreign, 0 means every watcher saw each of its changes exactly once.
	Expected, Delivered, Unacknowledged int64
	Duplicates, OutOfOrder              int64
	Foreign, Failed, Compacted          int64
	Short                               int
	// P50, P99 and Max are the delivery latencies from each write's
	// start; AckP50, AckP99 and AckMax from its acknowledgement (0 for an
	// event that arrived before it): what the watch adds to the write.
	P50, P99, Max                time.Duration
	AckP50, AckP99, AckMax       time.Duration
	OpenTime                     time.Duration
	ClientBytesPerStream         float64
	FirstError                   string
	writeP50, writeP99, writeMax time.Duration
}

// WriteLatency reports the p50, p99 and max of the writes' own latency.
func (r *Result) WriteLatency() (p50, p99, max time.Duration) {
	return r.writeP50, r.writeP99, r.writeMax
}

// histogram counts latencies in 100 µs buckets up to a minute.
type histogram struct {
	buckets []atomic.Int64
	max     atomic.Int64
	n       atomic.Int64
}

const bucket = 100 * time.Microsecond

func newHistogram() *histogram {
	return &histogram{buckets: make([]atomic.Int64, int(time.Minute/bucket)+1)}
}

func (h *histogram) add(d time.Duration) {
	d = max(d, 0)
	i := min(int(d/bucket), len(h.buckets)-1)
	h.buckets[i].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
}

// quantile returns the upper edge of the bucket holding the q-quantile.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := int64(float64(n-1)*q) + 1
	var seen int64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= rank {
			return min(time.Duration(i+1)*bucket, time.Duration(h.max.Load()))
		}
	}
	return time.Duration(h.max.Load())
}

// write is one write of the run: when it started, and its index once
// acknowledged (0 while in flight, or after a failure).
type write struct {
	start     atomic.Int64
	ack       atomic.Int64 // when the write was acknowledged (0: not yet)
	index     atomic.Uint64
	delivered atomic.Int64 // to how many watchers
	group     int
}

type watcher struct {
	group  int // -1: the whole prefix
	last   uint64
	failed atomic.Bool
}

// Run opens the streams, writes for cfg.Duration, waits for the deliveries
// and returns the figures. It fails only when the streams cannot be opened.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Groups < 1 {
		cfg.Groups = 1
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 10 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if len(cfg.Clients) == 0 || cfg.Writer == nil || cfg.Streams < 1 || cfg.Rate <= 0 || !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, errors.New("watchload: want clients, a writer, streams, a rate and a prefix ending in /")
	}
	total := int(cfg.Rate*cfg.Duration.Seconds()) + 1
	writes := make([]write, total)
	for i := range writes {
		writes[i].group = i % cfg.Groups
	}
	lat, afterAck := newHistogram(), newHistogram()
	res := &Result{Streams: cfg.Streams}
	var mu sync.Mutex // guards res.FirstError
	fail := func(err error) {
		mu.Lock()
		if res.FirstError == "" {
			res.FirstError = err.Error()
		}
		mu.Unlock()
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchers := make([]*watcher, cfg.Streams)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	openStart := time.Now()
	var open, wg sync.WaitGroup
	var opened atomic.Int64
	var delivered, dups, order, foreign, failed, compacted atomic.Int64
	sem := make(chan struct{}, 256) // streams being opened at once
	for i := range watchers {
		w := &watcher{group: i % (cfg.Groups + 1)}
		prefix := cfg.Prefix
		if w.group == cfg.Groups {
			w.group = -1
		} else {
			prefix += "g" + strconv.Itoa(w.group) + "/"
		}
		watchers[i] = w
		open.Add(1)
		wg.Add(1)
		sem <- struct{}{}
		ch, err := cfg.Clients[i%len(cfg.Clients)].Watch(wctx, prefix, 0)
		if err != nil {
			<-sem
			return nil, fmt.Errorf("watchload: stream %d: %w", i, err)
		}
		go func() {
			defer wg.Done()
			first := true
			done := func() {
				if first {
					first = false
					<-sem
					opened.Add(1)
					open.Done()
				}
			}
			defer done()
			for ev := range ch {
				now := time.Now()
				switch ev.Type {
				case api.WatchProgress:
					done()
				case api.WatchCompacted:
					compacted.Add(1)
				case api.WatchFailed:
					w.failed.Store(true)
					failed.Add(1)
					fail(ev.Err)
				case api.WatchChange:
					done()
					if !strings.HasPrefix(ev.Path, cfg.Prefix) {
						continue // not the run's
					}
					if ev.Index == w.last {
						dups.Add(1)
						continue
					}
					if ev.Index < w.last {
						order.Add(1)
						continue
					}
					w.last = ev.Index
					seq, g, ok := parsePath(ev.Path[len(cfg.Prefix):])
					if !ok || seq >= len(writes) || (w.group >= 0 && g != w.group) {
						foreign.Add(1)
						continue
					}
					lat.add(now.Sub(time.Unix(0, writes[seq].start.Load())))
					if ack := writes[seq].ack.Load(); ack != 0 {
						afterAck.add(now.Sub(time.Unix(0, ack)))
					} else {
						afterAck.add(0) // before the writer heard of it
					}
					writes[seq].delivered.Add(1)
					delivered.Add(1)
				}
			}
		}()
	}
	openDone := make(chan struct{})
	go func() { open.Wait(); close(openDone) }()
	select {
	case <-openDone:
	case <-ctx.Done():
		return nil, fmt.Errorf("watchload: %d of %d streams open: %w", opened.Load(), cfg.Streams, ctx.Err())
	}
	res.OpenTime = time.Since(openStart)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)
	res.ClientBytesPerStream = float64(grown) / float64(cfg.Streams)
	if cfg.Opened != nil {
		cfg.Opened()
	}

	// The writes, at a steady rate, each from its own goroutine so that
	// a slow one does not hold back the next.
	wlat := newHistogram()
	var werr atomic.Int64
	var writers sync.WaitGroup
	start := time.Now()
	every := time.Duration(float64(time.Second) / cfg.Rate)
	for seq := range writes {
		at := start.Add(time.Duration(seq) * every)
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		if ctx.Err() != nil {
			// The writes not issued stay unacknowledged (index 0) and
			// are owed to no one; the slice is not cut, since the
			// watchers read it.
			break
		}
		writers.Add(1)
		go func() {
			defer writers.Done()
			w := &writes[seq]
			path := cfg.Prefix + "g" + strconv.Itoa(w.group) + "/" + strconv.Itoa(seq)
			t0 := time.Now()
			w.start.Store(t0.UnixNano())
			cctx, cancel := context.WithTimeout(ctx, cfg.WriteTimeout)
			resp, err := cfg.Writer.Put(cctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": "x"}})
			cancel()
			if err != nil {
				werr.Add(1)
				fail(fmt.Errorf("write %s: %w", path, err))
				return
			}
			t1 := time.Now()
			w.ack.Store(t1.UnixNano())
			wlat.add(t1.Sub(t0))
			w.index.Store(resp.Index)
		}()
	}
	writers.Wait()

	// What the acknowledged writes owe the watchers.
	watchersOf := make([]int64, cfg.Groups)
	var whole int64
	for _, w := range watchers {
		if w.group < 0 {
			whole++
		} else {
			watchersOf[w.group]++
		}
	}
	owed := func(wr *write) int64 { return watchersOf[wr.group] + whole }
	for i := range writes {
		if writes[i].index.Load() != 0 {
			res.Writes++
			res.Expected += owed(&writes[i])
		}
	}
	res.WriteErrors = int(werr.Load())
	deadline := time.Now().Add(cfg.Drain)
	poll := time.NewTicker(10 * time.Millisecond)
	acked := func() (n int64) {
		for i := range writes {
			if writes[i].index.Load() != 0 {
				n += writes[i].delivered.Load()
			}
		}
		return n
	}
	for acked() < res.Expected && time.Now().Before(deadline) && ctx.Err() == nil {
		<-poll.C
	}
	poll.Stop()
	cancel()
	wg.Wait()

	for i := range writes {
		n := writes[i].delivered.Load()
		if writes[i].index.Load() == 0 {
			res.Unacknowledged += n
			continue
		}
		res.Delivered += n
		if n != owed(&writes[i]) {
			res.Short++
		}
	}
	res.Duplicates, res.OutOfOrder, res.Foreign = dups.Load(), order.Load(), foreign.Load()
	res.Failed, res.Compacted = failed.Load(), compacted.Load()
	res.P50, res.P99, res.Max = lat.quantile(0.50), lat.quantile(0.99), time.Duration(lat.max.Load())
	res.AckP50, res.AckP99, res.AckMax = afterAck.quantile(0.50), afterAck.quantile(0.99), time.Duration(afterAck.max.Load())
	res.writeP50, res.writeP99, res.writeMax = wlat.quantile(0.50), wlat.quantile(0.99), time.Duration(wlat.max.Load())
	return res, nil
}

// parsePath reads "g<group>/<seq>".
func parsePath(rest string) (seq, group int, ok bool) {
	g, s, found := strings.Cut(rest, "/")
	if !found || !strings.HasPrefix(g, "g") {
		return 0, 0, false
	}
	group, err1 := strconv.Atoi(g[1:])
	seq, err2 := strconv.Atoi(s)
	return seq, group, err1 == nil && err2 == nil
}
