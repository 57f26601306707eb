package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestNoDevicesAuditsNothingAndNeverFails(t *testing.T) {
	b := NewBroker("n", 0, nil)
	ctx := context.Background()
	if err := b.LogRequest(ctx, sampleRequest("r")); err != nil {
		t.Errorf("LogRequest without devices = %v", err)
	}
	if err := b.LogResponse(ctx, nil); err != nil {
		t.Errorf("LogResponse without devices = %v", err)
	}
	if err := b.Reopen(); err != nil {
		t.Errorf("Reopen without devices = %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := b.LogRequest(ctx, sampleRequest("r")); err != nil {
		t.Errorf("LogRequest without devices after Close = %v", err)
	}
	if st := b.Stats(); st.Audited != 0 || st.Refused != 0 || len(st.Devices) != 0 {
		t.Errorf("stats = %+v, want zero", st)
	}
}

// One device failing is enough for neither success nor failure: the other
// records, so the call goes on; with both failing it is refused.
func TestTwoDevicesOneFailing(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.log")
	bad := filepath.Join(dir, "bad.log")
	if err := os.Symlink("/dev/full", bad); err != nil {
		t.Fatal(err)
	}
	b := NewBroker("n", 0, openFile(t, bad), openFile(t, good))
	defer b.Close()
	ctx := context.Background()
	if err := b.LogRequest(ctx, sampleRequest("r1")); err != nil {
		t.Fatalf("LogRequest with one good device = %v", err)
	}
	if err := b.LogResponse(ctx, &Response{Header: sampleRequest("r1").Header, ResultCode: "OK"}); err != nil {
		t.Fatalf("LogResponse with one good device = %v", err)
	}
	if lines := readLines(t, good); len(lines) != 2 {
		t.Errorf("good device has %d lines, want 2", len(lines))
	}
	st := b.Stats()
	if st.Audited != 2 || st.Refused != 0 {
		t.Errorf("audited/refused = %d/%d, want 2/0", st.Audited, st.Refused)
	}
	if d := st.Devices[0]; d.Name != "file:"+bad || d.Written != 0 || d.Failed != 2 || !strings.Contains(d.LastError, "no space left") {
		t.Errorf("failing device stats = %+v", d)
	}
	if d := st.Devices[1]; d.Name != "file:"+good || d.Written != 2 || d.Failed != 0 || d.LastError != "" {
		t.Errorf("good device stats = %+v", d)
	}

	// Now the good one fails too.
	if err := os.Remove(good); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/full", good); err != nil {
		t.Fatal(err)
	}
	b.Reopen()
	err := b.LogRequest(ctx, sampleRequest("r2"))
	if !errors.Is(err, ErrAuditFailed) {
		t.Fatalf("LogRequest with both devices failing = %v, want ErrAuditFailed", err)
	}
	for _, p := range []string{bad, good} {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("the error does not name %s: %v", p, err)
		}
	}
}

// fillPipe logs records until one fails, which happens once the pipe's
// buffer is full and the writer blocks. It returns that error and how long
// the failing call took.
func fillPipe(t *testing.T, b *Broker, ctx func() (context.Context, context.CancelFunc)) (error, time.Duration) {
	t.Helper()
	req := sampleRequest("fill")
	req.Data = map[string]any{"pad": strings.Repeat("x", 2048)}
	for i := range 10000 {
		c, cancel := ctx()
		start := time.Now()
		err := b.LogRequest(c, req)
		took := time.Since(start)
		cancel()
		if err != nil {
			if i == 0 {
				t.Fatalf("the first record already failed: %v", err)
			}
			return err, took
		}
	}
	t.Fatal("10000 records went into a pipe nobody reads")
	return nil, 0
}

// A device that blocks (a pipe whose reader never reads) fails calls within
// the timeout, again and again, without the broker growing goroutines; once
// the reader drains, calls succeed again and every line it read is whole.
func TestBlockedDeviceFailsFastAndRecovers(t *testing.T) {
	const timeout = 200 * time.Millisecond
	const margin = 800 * time.Millisecond // a loaded 2-core machine under -race
	fifo := filepath.Join(t.TempDir(), "audit.pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	b := NewBroker("n", timeout, openFile(t, fifo))
	defer b.Close()
	base := runtime.NumGoroutine()

	background := func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }
	err, took := fillPipe(t, b, background)
	if !errors.Is(err, ErrAuditFailed) || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("the call that met the full pipe = %v, want ErrAuditFailed for no answer", err)
	}
	if took > timeout+margin {
		t.Errorf("the call that met the full pipe took %v, more than %v", took, timeout+margin)
	}
	for i := range 50 {
		start := time.Now()
		err := b.LogRequest(context.Background(), sampleRequest(fmt.Sprint("blocked-", i)))
		if took := time.Since(start); took > timeout+margin {
			t.Errorf("call %d on the blocked device took %v, more than %v", i, took, timeout+margin)
		}
		if !errors.Is(err, ErrAuditFailed) {
			t.Fatalf("call %d on the blocked device = %v, want ErrAuditFailed", i, err)
		}
		if n := runtime.NumGoroutine(); n > base {
			t.Fatalf("goroutines grew from %d to %d while the device was blocked", base, n)
		}
	}
	// A SIGHUP now must not wait for the hung write either.
	start := time.Now()
	if err := b.Reopen(); err != nil {
		t.Errorf("Reopen while a write is blocked: %v", err)
	}
	if took := time.Since(start); took > timeout+margin {
		t.Errorf("Reopen while a write is blocked took %v", took)
	}
	st := b.Stats()
	if d := st.Devices[0]; !d.Stalled || d.Failed < 51 {
		t.Errorf("device stats while blocked = %+v, want stalled with ≥ 51 failures", d)
	}

	// The reader starts draining; every complete line it sees is whole JSON.
	type result struct{ lines, bad int }
	drained := make(chan result, 1)
	go func() {
		var r result
		br := bufio.NewReader(reader)
		for {
			line, err := br.ReadBytes('\n')
			if err != nil {
				drained <- r
				return
			}
			r.lines++
			if !json.Valid(line) {
				r.bad++
			}
		}
	}()
	eventually(t, 5*time.Second, func() error {
		return b.LogRequest(context.Background(), sampleRequest("after"))
	})
	for i := range 20 {
		if err := b.LogRequest(context.Background(), sampleRequest(fmt.Sprint("again-", i))); err != nil {
			t.Fatalf("call %d after the device recovered = %v", i, err)
		}
	}
	if d := b.Stats().Devices[0]; d.Stalled {
		t.Errorf("device still stalled after it recovered: %+v", d)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	r := <-drained
	if r.bad != 0 || r.lines < 21 {
		t.Errorf("the reader saw %d lines, %d of them not whole JSON", r.lines, r.bad)
	}
}

// A call's own deadline, shorter than the broker's timeout, bounds its
// wait; Close unblocks a writer parked on a full pipe.
func TestContextDeadlineBoundsTheWait(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "audit.pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	b := NewBroker("n", time.Minute, openFile(t, fifo))
	const wait = 100 * time.Millisecond
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), wait)
	}
	err, took := fillPipe(t, b, short)
	if !errors.Is(err, ErrAuditFailed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call with a short deadline = %v, want ErrAuditFailed over DeadlineExceeded", err)
	}
	if took > wait+time.Second {
		t.Errorf("call with a %v deadline took %v", wait, took)
	}
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close with a writer blocked on the pipe: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung behind a blocked write")
	}
	if err := b.LogRequest(context.Background(), sampleRequest("late")); !errors.Is(err, ErrAuditFailed) || !errors.Is(err, ErrClosed) {
		t.Errorf("LogRequest after Close = %v, want ErrAuditFailed over ErrClosed", err)
	}
}

// 50 goroutines log 200 records each to one file: every line is whole JSON
// and every record is there exactly once.
func TestConcurrentLogging(t *testing.T) {
	const workers, each = 50, 200
	b, path := newFileBroker(t, 0)
	b.SetHasher(newHasher(t))
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				req := sampleRequest(fmt.Sprintf("%d-%d", w, i))
				req.Data = map[string]any{"value": strings.Repeat("v", 100+w*i%700)}
				if err := b.LogRequest(context.Background(), req); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("LogRequest: %v", err)
	}
	lines := readLines(t, path) // fails on any line that is not whole JSON
	if len(lines) != workers*each {
		t.Fatalf("file has %d lines, want %d", len(lines), workers*each)
	}
	seen := make(map[string]bool, len(lines))
	for _, l := range lines {
		id := l["request_id"].(string)
		if seen[id] {
			t.Fatalf("record %s written twice", id)
		}
		seen[id] = true
	}
	if st := b.Stats(); st.Audited != workers*each || st.Devices[0].Written != workers*each {
		t.Errorf("stats = %+v, want %d audited and written", st, workers*each)
	}
}

// Rotating the file while many goroutines log loses no record and fails no
// call: every record is in one of the files, whole.
func TestReopenUnderLoad(t *testing.T) {
	const workers, each, rotations = 8, 300, 5
	b, path := newFileBroker(t, 0)
	progress := make(chan struct{}, workers*each)
	var wg, rot sync.WaitGroup
	errs := make(chan error, workers+1)
	workersDone := make(chan struct{})
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if err := b.LogRequest(context.Background(), sampleRequest(fmt.Sprintf("%d-%d", w, i))); err != nil {
					errs <- err
					return
				}
				progress <- struct{}{}
			}
		})
	}
	rot.Go(func() {
		seen := 0
		for r := 1; r <= rotations; r++ {
			for seen < r*workers*each/(rotations+1) {
				select {
				case <-progress:
					seen++
				case <-workersDone: // a worker failed early
					return
				}
			}
			if err := os.Rename(path, fmt.Sprintf("%s.%d", path, r)); err != nil {
				errs <- err
				return
			}
			if err := b.Reopen(); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(workersDone)
	rot.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	files := []string{path}
	for r := 1; r <= rotations; r++ {
		files = append(files, fmt.Sprintf("%s.%d", path, r))
	}
	for _, f := range files {
		lines := readLines(t, f)
		if len(lines) == 0 {
			t.Errorf("%s is empty: the rotation did not take", f)
		}
		for _, l := range lines {
			id := l["request_id"].(string)
			if seen[id] {
				t.Fatalf("record %s written twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != workers*each {
		t.Errorf("found %d records across the files, want %d", len(seen), workers*each)
	}
}

// SetHasher(nil) seals: the salt is zeroed and sensitive values are
// redacted again; Close destroys the salt too.
func TestSealAndCloseDestroyTheSalt(t *testing.T) {
	b, path := newFileBroker(t, 0)
	ctx := context.Background()
	h := newHasher(t)
	b.SetHasher(h)
	b.SetHasher(h) // the same one again keeps it
	if err := b.LogRequest(ctx, sampleRequest("unsealed")); err != nil {
		t.Fatal(err)
	}
	b.SetHasher(nil)
	if got := h.HMAC("x"); got != RedactedSealed {
		t.Errorf("the Hasher still works after SetHasher(nil): %q", got)
	}
	if err := b.LogRequest(ctx, sampleRequest("sealed")); err != nil {
		t.Fatal(err)
	}
	h2 := newHasher(t)
	b.SetHasher(h2)
	b.Close()
	if got := h2.HMAC("x"); got != RedactedSealed {
		t.Errorf("the Hasher still works after Close: %q", got)
	}
	h3 := newHasher(t)
	b.SetHasher(h3) // too late: the broker is closed
	if got := h3.HMAC("x"); got != RedactedSealed {
		t.Errorf("a Hasher given to a closed broker still works: %q", got)
	}

	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2", len(lines))
	}
	tokens := []any{lines[0]["auth"].(map[string]any)["client_token"], lines[1]["auth"].(map[string]any)["client_token"]}
	if tokens[0] != expectHMAC(testSalt, "s.client-token") || tokens[1] != RedactedSealed {
		t.Errorf("client tokens = %v, want the HMAC then %q", tokens, RedactedSealed)
	}
}

func TestNilRecordsFailClosed(t *testing.T) {
	b, _ := newFileBroker(t, 0)
	if err := b.LogRequest(context.Background(), nil); !errors.Is(err, ErrAuditFailed) {
		t.Errorf("LogRequest(nil) = %v, want ErrAuditFailed", err)
	}
	if err := b.LogResponse(context.Background(), nil); !errors.Is(err, ErrAuditFailed) {
		t.Errorf("LogResponse(nil) = %v, want ErrAuditFailed", err)
	}
}
