package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Device records audit lines: a file, later perhaps a socket. Devices come
// only from the node's configuration.
//
// The broker calls Write from one goroutine per device, so lines never
// interleave. Reopen and Close may be called while a Write is in progress
// and must not wait for it: a write hung on a dead disk must not block a
// reopen or a shutdown.
type Device interface {
	// Name identifies the device in errors and [Stats] ("file:/var/log/…").
	Name() string
	// Write records one line, which ends in a newline, whole: one write
	// call per line.
	Write(line []byte) error
	// Reopen opens the device's target anew (SIGHUP after log rotation).
	Reopen() error
	// Close releases the device; it is idempotent.
	Close() error
}

const (
	// DefaultTimeout is how long a record may wait for a device when
	// [NewBroker] is given no timeout.
	DefaultTimeout = 2 * time.Second
	// queueSize bounds the records waiting for one device. It covers bursts
	// from many request goroutines while the device is healthy, and caps
	// what a hung device can hold: a record that finds the queue full waits
	// for room only until its deadline.
	queueSize = 128
)

// States of a record on one device: the writer and the caller race to move
// it out of queued; whoever wins decides whether it is written.
const (
	queued uint32 = iota
	taken
	abandoned
)

// Broker sends each record to every audit device of the node and fails
// closed: a record counts as audited when at least one device recorded it
// within the timeout. It is safe for concurrent use.
type Broker struct {
	node    string
	timeout time.Duration
	sinks   []*sink
	hasher  atomic.Pointer[Hasher]

	quit      chan struct{}
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	audited atomic.Uint64
	refused atomic.Uint64
}

// sink is one device with its writer goroutine.
type sink struct {
	idx   int
	dev   Device
	name  string
	queue chan *record
	done  chan struct{} // closed when the writer has returned
	// busySince is when the write in progress began (Unix nanoseconds), 0
	// between writes. A write older than the timeout means the device is
	// stalled: records skip it instead of waiting.
	busySince atomic.Int64
	reopening atomic.Bool

	written atomic.Uint64
	failed  atomic.Uint64

	mu      sync.Mutex
	lastErr string
}

// record is one line on its way to every device.
type record struct {
	line  []byte
	state []atomic.Uint32 // per device: queued, taken or abandoned
	acks  chan ack        // room for every device: a writer never blocks on it
}

// Why a record's wait ended before every device answered.
const (
	byTimeout = iota
	byContext
	byClose
)

// ack is a device's answer for a record.
type ack struct {
	dev int
	err error
}

// NewBroker returns a broker for node's audit devices (nil devices are
// ignored). A record waits at most timeout for a device (DefaultTimeout
// when timeout ≤ 0). It starts one writer goroutine per device; Close stops
// them. Without devices the broker audits nothing and never fails.
//
// The broker has no salt until [Broker.SetHasher]: until then sensitive
// values are written as [RedactedSealed].
func NewBroker(node string, timeout time.Duration, devices ...Device) *Broker {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	b := &Broker{node: node, timeout: timeout, quit: make(chan struct{})}
	for _, d := range devices {
		if d == nil {
			continue
		}
		s := &sink{
			idx:   len(b.sinks),
			dev:   d,
			name:  d.Name(),
			queue: make(chan *record, queueSize),
			done:  make(chan struct{}),
		}
		b.sinks = append(b.sinks, s)
	}
	for _, s := range b.sinks {
		go s.run(b.quit)
	}
	return b
}

// SetHasher gives the broker the cluster's audit salt (after unseal) or
// takes it away (h nil, at seal). The broker owns h from then on: it
// destroys the Hasher it replaces, the last one on Close, and one given
// after Close at once. Records being made meanwhile keep the salt they
// began with.
func (b *Broker) SetHasher(h *Hasher) {
	if old := b.hasher.Swap(h); old != nil && old != h {
		old.Destroy()
	}
	if h != nil && b.closed.Load() {
		if b.hasher.CompareAndSwap(h, nil) {
			h.Destroy()
		}
	}
}

// LogRequest records req on the node's audit devices. It returns nil once
// at least one device recorded it, and an error wrapping [ErrAuditFailed]
// when none did within the timeout or ctx's deadline: the server must then
// refuse the call. req is not modified.
func (b *Broker) LogRequest(ctx context.Context, req *Request) error {
	if req == nil {
		return b.log(ctx, nil)
	}
	return b.log(ctx, func(r *redactor, now time.Time) ([]byte, error) {
		return r.requestLine(b.node, now, req)
	})
}

// LogResponse records resp as LogRequest records a request. Pass a context
// that outlives the client's cancellation (context.WithoutCancel) so that
// the outcome of a call the client abandoned is still recorded.
func (b *Broker) LogResponse(ctx context.Context, resp *Response) error {
	if resp == nil {
		return b.log(ctx, nil)
	}
	return b.log(ctx, func(r *redactor, now time.Time) ([]byte, error) {
		return r.responseLine(b.node, now, resp)
	})
}

// log makes the line with the current salt and records it; a nil encode
// means the server passed no record.
func (b *Broker) log(ctx context.Context, encode func(*redactor, time.Time) ([]byte, error)) error {
	switch {
	case len(b.sinks) == 0:
		return nil
	case b.closed.Load():
		return b.refuse(ErrClosed)
	case encode == nil:
		return b.refuse(errors.New("the server passed no record"))
	}
	r := redactor{mac: b.hasher.Load().mac()}
	line, err := encode(&r, time.Now())
	if err != nil {
		// Not err's text: an encoder's error may quote a value.
		return b.refuse(errors.New("the record could not be encoded as JSON"))
	}
	return b.record(ctx, line)
}

// refuse counts a record no device took and returns ErrAuditFailed with
// the reasons.
func (b *Broker) refuse(reasons ...error) error {
	b.refused.Add(1)
	format := "%w ("
	args := []any{ErrAuditFailed}
	for i, r := range reasons {
		if i > 0 {
			format += "; "
		}
		format += "%w"
		args = append(args, r)
	}
	return fmt.Errorf(format+")", args...)
}

// record hands line to every device and waits for their answers until the
// deadline.
func (b *Broker) record(ctx context.Context, line []byte) error {
	now := time.Now()
	deadline, callsOwn := now.Add(b.timeout), false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, callsOwn = d, true
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()

	n := len(b.sinks)
	rec := &record{line: line, state: make([]atomic.Uint32, n), acks: make(chan ack, n)}
	errs := make([]error, n)   // why each device failed
	waiting := make([]bool, n) // handed over, no answer yet
	pending, ok := 0, 0
	var full []*sink // queues to retry until the deadline

	// stop says why the wait ended early; nil while it goes on.
	var stop error
	expire := func(why int) {
		switch why {
		case byTimeout:
			if callsOwn {
				stop = fmt.Errorf("no answer before the call's deadline: %w", context.DeadlineExceeded)
			} else {
				stop = fmt.Errorf("no answer within %v (a hung disk or a full pipe?)", b.timeout)
			}
		case byContext:
			stop = fmt.Errorf("the call gave up first: %w", ctx.Err())
		default:
			stop = ErrClosed
		}
	}
	answer := func(a ack) {
		pending--
		waiting[a.dev] = false
		if a.err != nil {
			errs[a.dev] = a.err
		} else {
			ok++
		}
	}

	// Healthy devices get the record at once; a stalled one is skipped.
	for _, s := range b.sinks {
		if s.stalled(now, b.timeout) {
			errs[s.idx] = fmt.Errorf("%s: blocked in one write for over %v (a hung disk or a full pipe)", s.name, b.timeout)
			continue
		}
		select {
		case s.queue <- rec:
			waiting[s.idx] = true
			pending++
		default:
			full = append(full, s)
		}
	}
	// A full queue may drain before the deadline.
	for _, s := range full {
		if stop == nil {
			select {
			case s.queue <- rec:
				waiting[s.idx] = true
				pending++
				continue
			case <-timer.C:
				expire(byTimeout)
			case <-ctx.Done():
				expire(byContext)
			case <-b.quit:
				expire(byClose)
			}
		}
		errs[s.idx] = fmt.Errorf("%s: its queue stayed full (%d records): %w", s.name, queueSize, stop)
	}
	for pending > 0 && stop == nil {
		select {
		case a := <-rec.acks:
			answer(a)
		case <-timer.C:
			expire(byTimeout)
		case <-ctx.Done():
			expire(byContext)
		case <-b.quit:
			expire(byClose)
		}
	}
	// Answers that arrived as the wait ended still count.
	for drained := false; pending > 0 && !drained; {
		select {
		case a := <-rec.acks:
			answer(a)
		default:
			drained = true
		}
	}
	// Devices that have not answered: withdraw the record if the writer has
	// not taken it yet, so a device that comes back does not write stale
	// lines; if it has, the line may still land, which only over-records.
	for i, w := range waiting {
		if w {
			rec.state[i].CompareAndSwap(queued, abandoned)
			errs[i] = fmt.Errorf("%s: %w", b.sinks[i].name, stop)
		}
	}

	var reasons []error
	for i, err := range errs {
		if err == nil {
			continue
		}
		s := b.sinks[i]
		s.failed.Add(1)
		s.setLastError(err)
		reasons = append(reasons, err)
	}
	if ok > 0 {
		b.audited.Add(1)
		return nil
	}
	return b.refuse(reasons...)
}

// run is the device's writer: it writes the records it is handed, one at a
// time, until quit closes.
func (s *sink) run(quit <-chan struct{}) {
	defer close(s.done)
	for {
		select {
		case <-quit:
			return
		case rec := <-s.queue:
			if !rec.state[s.idx].CompareAndSwap(queued, taken) {
				continue // its caller gave up on it
			}
			s.busySince.Store(time.Now().UnixNano())
			err := s.dev.Write(rec.line)
			s.busySince.Store(0)
			if err == nil {
				s.written.Add(1)
			}
			rec.acks <- ack{dev: s.idx, err: err}
		}
	}
}

// stalled reports whether the device has been in one write for longer than
// timeout.
func (s *sink) stalled(now time.Time, timeout time.Duration) bool {
	since := s.busySince.Load()
	return since != 0 && now.UnixNano()-since > int64(timeout)
}

func (s *sink) setLastError(err error) {
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
}

// Reopen reopens every device (SIGHUP after log rotation) and returns the
// devices that failed, joined. It waits at most the timeout: a device still
// reopening then is reported, and a second Reopen does not start another
// reopen of it until the first has returned.
func (b *Broker) Reopen() error {
	if b.closed.Load() {
		return ErrClosed
	}
	results := make(chan error, len(b.sinks))
	started := 0
	var errs []error
	for _, s := range b.sinks {
		if !s.reopening.CompareAndSwap(false, true) {
			errs = append(errs, fmt.Errorf("%s: the previous reopen has not returned yet (a hung disk?)", s.name))
			continue
		}
		started++
		go func() {
			err := s.dev.Reopen()
			s.reopening.Store(false)
			if err != nil {
				s.setLastError(err)
			}
			results <- err
		}()
	}
	timer := time.NewTimer(b.timeout)
	defer timer.Stop()
	for ; started > 0; started-- {
		select {
		case err := <-results:
			if err != nil {
				errs = append(errs, err)
			}
		case <-timer.C:
			errs = append(errs, fmt.Errorf("audit: %d device(s) did not reopen within %v (a hung disk?)", started, b.timeout))
			return errors.Join(errs...)
		}
	}
	return errors.Join(errs...)
}

// Close stops the writers, closes the devices and destroys the salt. It
// waits at most the timeout for a writer blocked in a write, and reports
// it. After Close, LogRequest and LogResponse fail with [ErrAuditFailed]
// (unless the broker has no device). It is idempotent.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		close(b.quit)
		var errs []error
		// Close first: it unblocks a write parked on a full pipe.
		for _, s := range b.sinks {
			if err := s.dev.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		timer := time.NewTimer(b.timeout)
		defer timer.Stop()
		for _, s := range b.sinks {
			select {
			case <-s.done:
			case <-timer.C:
				errs = append(errs, fmt.Errorf("%s: still blocked in a write after close; its writer stops when the write returns", s.name))
			}
		}
		if h := b.hasher.Swap(nil); h != nil {
			h.Destroy()
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// Stats are the broker's counters, for the node's metrics.
type Stats struct {
	// Audited counts records at least one device recorded.
	Audited uint64
	// Refused counts records no device recorded (calls refused with
	// ErrAuditFailed).
	Refused uint64
	// Devices has one entry per device, in the order given to NewBroker.
	Devices []DeviceStats
}

// DeviceStats are one device's counters.
type DeviceStats struct {
	// Name is the device's name ("file:/var/log/coffer/audit.log").
	Name string
	// Written counts lines the device accepted.
	Written uint64
	// Failed counts records the device did not confirm in time (an error,
	// no answer, skipped while stalled, a full queue). A line that landed
	// after its caller gave up counts in both.
	Failed uint64
	// Stalled is true while the device has been in one write for longer
	// than the timeout.
	Stalled bool
	// LastError is the device's last failure, empty if none.
	LastError string
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	st := Stats{Audited: b.audited.Load(), Refused: b.refused.Load()}
	now := time.Now()
	for _, s := range b.sinks {
		s.mu.Lock()
		last := s.lastErr
		s.mu.Unlock()
		st.Devices = append(st.Devices, DeviceStats{
			Name:      s.name,
			Written:   s.written.Load(),
			Failed:    s.failed.Load(),
			Stalled:   s.stalled(now, b.timeout),
			LastError: last,
		})
	}
	return st
}
