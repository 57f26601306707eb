package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// cofferBin is the binary under test, built once by TestMain; buildErr
// holds the build output when that failed.
var (
	cofferBin string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "coffer-cli-test-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cofferBin = filepath.Join(dir, "coffer")
	buildErr = buildBinary(cofferBin)
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// buildBinary builds ./cmd/coffer from the module root into out, with the
// race detector when the tests run with it.
func buildBinary(out string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/coffer")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// needBinary fails the test when the binary could not be built.
func needBinary(t *testing.T) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("building the coffer binary: %v", buildErr)
	}
}

// result is the outcome of one CLI run.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// baseEnv is the test process's environment without COFFER_* variables.
// A race-enabled binary would sleep a second at exit by default.
func baseEnv() []string {
	env := []string{"GORACE=atexit_sleep_ms=0"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COFFER_") && !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	return env
}

// runCLI runs the binary with env added to a COFFER_-free environment,
// stdin as its standard input, and returns its output and exit code.
func runCLI(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	needBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cofferBin, args...)
	cmd.Env = append(baseEnv(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	bindToTest(cmd)
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("coffer %s: %v (stderr: %s)", strings.Join(args, " "), err, r.stderr)
	}
	if r.code == 66 && raceEnabled {
		t.Errorf("coffer %s: data race:\n%s", strings.Join(args, " "), r.stderr)
	}
	return r
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reading test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serverProc is a running `coffer server` process.
type serverProc struct {
	cmd      *exec.Cmd
	addr     string // API address
	raftAddr string
	// url is the API address as clients give it: http://addr for a
	// process without TLS (a bare address speaks TLS).
	url string
	// clientEnv is what clients need besides the address: COFFER_CACERT
	// for a node with -certs-dir.
	clientEnv      []string
	stdout, stderr *syncBuffer
	exited         chan struct{}
	waitErr        error
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startServer starts `coffer server` with the arguments args returns for a
// fresh API and Raft address, and waits until `coffer status` answers
// (any exit code but 1). It retries with new ports when a port was taken
// meanwhile. The process is stopped in t.Cleanup.
func startServer(t *testing.T, env []string, args func(apiAddr, raftAddr string) []string) *serverProc {
	t.Helper()
	for attempt := 0; ; attempt++ {
		apiAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		raftAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		p := launch(t, env, apiAddr, raftAddr, args(apiAddr, raftAddr))
		err := p.waitServing(t, 90*time.Second)
		if err == nil {
			return p
		}
		if attempt < 4 && strings.Contains(p.stderr.String(), "address already in use") {
			p.stop(t)
			continue
		}
		t.Fatalf("server did not come up: %v\nserver stderr:\n%s", err, p.stderr.String())
	}
}

// restartServer starts the server again on the addresses old used, as an
// operator restarting a node would; it retries while a port is still taken.
func restartServer(t *testing.T, old *serverProc, env []string, args func(apiAddr, raftAddr string) []string) *serverProc {
	t.Helper()
	var p *serverProc
	err := poll(30*time.Second, func() error {
		p = launch(t, env, old.addr, old.raftAddr, args(old.addr, old.raftAddr))
		err := p.waitServing(t, 90*time.Second)
		if err != nil && strings.Contains(p.stderr.String(), "address already in use") {
			p.stop(t)
			return err
		}
		if err != nil {
			return stopPolling{fmt.Errorf("%w\nserver stderr:\n%s", err, p.stderr.String())}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restarting the server: %v", err)
	}
	return p
}

// launch starts the process without waiting for it.
func launch(t *testing.T, env []string, apiAddr, raftAddr string, args []string) *serverProc {
	t.Helper()
	needBinary(t)
	p := &serverProc{addr: apiAddr, raftAddr: raftAddr, url: "http://" + apiAddr, stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	if !slices.ContainsFunc(args, func(a string) bool {
		return a == "-dev" || a == "-insecure" || strings.HasPrefix(a, "-certs-dir") || strings.HasPrefix(a, "-insecure=")
	}) {
		// A node without certificates runs only when told so.
		args = append([]string{"-insecure"}, args...)
	}
	for _, a := range args {
		if dir, ok := strings.CutPrefix(a, "-certs-dir="); ok {
			p.url, p.clientEnv = apiAddr, []string{"COFFER_CACERT=" + filepath.Join(dir, "ca.crt")}
		}
	}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "-http-addr") }) {
		// Several nodes share the machine: none takes Vault's port.
		args = append(args, "-http-addr=127.0.0.1:0")
	}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "-metrics-addr") }) {
		args = append(args, "-metrics-addr=127.0.0.1:0") // nor the metrics port
	}
	p.cmd = exec.Command(cofferBin, append([]string{"server"}, args...)...)
	p.cmd.Env = append(baseEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	bindToTest(p.cmd)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting coffer server: %v", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// waitServing polls `coffer status` until the node answers it.
func (p *serverProc) waitServing(t *testing.T, timeout time.Duration) error {
	t.Helper()
	return poll(timeout, func() error {
		select {
		case <-p.exited:
			return stopPolling{fmt.Errorf("server exited: %v", p.waitErr)}
		default:
		}
		r := runCLI(t, p.clientEnv, "", "status", "-address="+p.url)
		if r.code == 1 {
			return fmt.Errorf("status: %s", r)
		}
		return nil
	})
}

// stop ends the process: SIGTERM for a clean shutdown, SIGKILL if it does
// not exit in time. It is idempotent.
func (p *serverProc) stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Errorf("server %s did not stop within 20s of SIGTERM; killing it\nstderr:\n%s", p.addr, p.stderr.String())
		p.kill()
	}
	if raceEnabled && strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
		t.Errorf("data race in the server:\n%s", p.stderr.String())
	}
}

// kill sends SIGKILL (kill -9) and waits for the process to be reaped.
func (p *serverProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// stopPolling ends poll at once with its error.
type stopPolling struct{ err error }

func (s stopPolling) Error() string { return s.err.Error() }

// poll calls cond until it returns nil, with a short growing backoff, and
// fails with cond's last error after timeout.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	backoff := 20 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var sp stopPolling
		if errors.As(err, &sp) {
			return sp.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		timer := time.NewTimer(backoff)
		<-timer.C
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}
