package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Timeouts of the harness. Generous: a loaded two-core machine running
// other suites can take seconds to start a server.
const (
	readyTimeout = 60 * time.Second // from postgres's start until a login works
	stopTimeout  = 20 * time.Second // from SIGINT until the postmaster has exited
	queryTimeout = 30 * time.Second // one query of a helper
)

// Ports lie below Linux's ephemeral range (32768 and up) so that a stopped
// server's port is not taken by an outgoing connection before Start, and
// below internal/testcluster's range (20000–32000) so that a test using
// both never sees one port twice.
const (
	portLow  = 15000
	portHigh = 20000
)

// Option changes how Start sets up the server.
type Option func(*options)

type options struct {
	maxConnections int
	settings       map[string]string
}

// MaxConnections sets max_connections (300 by default).
func MaxConnections(n int) Option {
	return func(o *options) { o.maxConnections = n }
}

// Setting sets a server parameter, as postgres -c name=value does; it wins
// over the harness's own settings.
func Setting(name, value string) Option {
	return func(o *options) {
		if o.settings == nil {
			o.settings = make(map[string]string)
		}
		o.settings[name] = value
	}
}

// Server is one PostgreSQL cluster started by Start. Its methods that take
// a testing.TB fail the test on an error of the harness itself; call them
// from the test's goroutine.
type Server struct {
	// Host is the TCP address the server listens on: 127.0.0.1.
	Host string
	// Port is its TCP port, the same after Stop and Start.
	Port int
	// SocketDir holds the server's unix socket (.s.PGSQL.<Port>).
	SocketDir string
	// User is the superuser's name and Password its generated password.
	User     string
	Password string
	// Database is the database the URLs name: postgres.
	Database string

	dir     string // the server's own directory, removed at cleanup
	dataDir string
	bins    binaries
	cred    *syscall.Credential // nil when not root
	opts    options

	mu   sync.Mutex
	proc *process      // nil while stopped
	pool *pgxpool.Pool // the superuser's pool, made on first use
}

// process is one running postmaster.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // its exit, once done is closed
	logs *lockedBuffer
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// binaries are the PostgreSQL programs the harness runs.
type binaries struct {
	initdb, postgres string
}

// Start creates a PostgreSQL cluster in a fresh directory, starts it and
// waits until the superuser can log in over TCP. The server is stopped and
// its directory removed when the test ends. Without PostgreSQL installed
// the test is skipped (failed with CI=true).
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bins := findBinaries(t)
	s := &Server{
		Host:     "127.0.0.1",
		User:     "postgres",
		Database: "postgres",
		bins:     bins,
		opts:     options{maxConnections: 300},
	}
	for _, o := range opts {
		o(&s.opts)
	}
	reapLeftovers(t)
	begin := time.Now()
	s.cred = unprivileged(t)
	s.prepareDir(t)
	t.Cleanup(func() { s.cleanup(t) })
	s.initdb(t)
	// A port found free may be taken by the time postgres binds it; then a
	// new one is tried.
	var err error
	for range 3 {
		s.Port = freePort(t)
		if err = s.start(t); err == nil || !strings.Contains(err.Error(), "could not bind") {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pgtest: PostgreSQL on %s:%d ready in %s", s.Host, s.Port, time.Since(begin).Round(time.Millisecond))
	return s
}

// findBinaries returns initdb and postgres, or skips or fails t.
func findBinaries(t testing.TB) binaries {
	t.Helper()
	var candidates []string
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, p)
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	// The highest version first: 15 before 9.6.
	slices.SortFunc(found, func(a, b string) int { return versionOf(b) - versionOf(a) })
	candidates = append(candidates, found...)
	for _, c := range candidates {
		real, err := filepath.EvalSymlinks(c)
		if err != nil {
			continue
		}
		pg := filepath.Join(filepath.Dir(real), "postgres")
		if st, err := os.Stat(pg); err == nil && !st.IsDir() {
			return binaries{initdb: real, postgres: pg}
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("PostgreSQL is not installed (no initdb), and CI=true wants these tests run: run make test-deps (Debian's postgresql package; .ci/run does)")
	}
	t.Skip("PostgreSQL is not installed (no initdb): make test-deps installs Debian's postgresql package (with CI=true these tests fail instead of skipping)")
	return binaries{}
}

// versionOf reads the major version out of /usr/lib/postgresql/<v>/bin/initdb.
func versionOf(path string) int {
	v := filepath.Base(filepath.Dir(filepath.Dir(path)))
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}

// unprivileged returns the credentials postgres runs with when the test
// runs as root, nil otherwise.
func unprivileged(t testing.TB) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	names := []string{"postgres", "nobody"}
	if n := os.Getenv("COFFER_PGTEST_USER"); n != "" {
		names = []string{n}
	}
	for _, n := range names {
		u, err := user.Lookup(n)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	t.Fatalf("pgtest: running as root and no unprivileged account (%s) exists to run PostgreSQL as: create one, or name one in COFFER_PGTEST_USER", strings.Join(names, ", "))
	return nil
}

// prepareDir makes the server's directory, owned by the account postgres
// runs as, and records the test process as its owner.
func (s *Server) prepareDir(t testing.TB) {
	t.Helper()
	dir, err := os.MkdirTemp(tempRoot(s.cred != nil), "coffer-pgtest-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s.dir = dir
	s.dataDir = filepath.Join(dir, "data")
	s.SocketDir = filepath.Join(dir, "sock")
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := os.Mkdir(s.SocketDir, 0o700); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if s.cred != nil {
		for _, p := range []string{dir, s.SocketDir} {
			if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				t.Fatalf("pgtest: %v", err)
			}
		}
	}
}

// tempRoot is where server directories go: the temporary directory, or
// /tmp when the postgres account could not reach into it.
func tempRoot(asOther bool) string {
	root := os.TempDir()
	if !asOther {
		return root
	}
	for p := root; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if p == "/" {
			return root
		}
	}
}

// initdb creates the cluster with a generated superuser password.
func (s *Server) initdb(t testing.TB) {
	t.Helper()
	s.Password = randomString(24)
	pwfile := filepath.Join(s.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.Password+"\n"), 0o600); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer os.Remove(pwfile)
	if s.cred != nil {
		if err := os.Chown(pwfile, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	cmd := exec.Command(s.bins.initdb,
		"-D", s.dataDir,
		"-U", s.User,
		"--pwfile="+pwfile,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"--encoding=UTF8", "--locale=C",
		"--no-sync", "--no-instructions")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	s.setProc(cmd)
	if err := cmd.Run(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out.String())
	}
}

// setProc runs cmd as the postgres account, in the server's directory, in
// its own process group, with a clean environment.
func (s *Server) setProc(cmd *exec.Cmd) {
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "LANG=C", "TZ=UTC"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
}

// start runs postgres and waits until a login works; the error says why
// it did not, with the server's log.
func (s *Server) start(t testing.TB) error {
	t.Helper()
	settings := map[string]string{
		"listen_addresses":           s.Host,
		"port":                       strconv.Itoa(s.Port),
		"unix_socket_directories":    s.SocketDir,
		"max_connections":            strconv.Itoa(s.opts.maxConnections),
		"fsync":                      "off",
		"synchronous_commit":         "off",
		"full_page_writes":           "off",
		"shared_buffers":             "32MB",
		"dynamic_shared_memory_type": "mmap",
		"max_wal_size":               "256MB",
		"log_min_messages":           "warning",
		"password_encryption":        "scram-sha-256",
	}
	for k, v := range s.opts.settings {
		settings[k] = v
	}
	args := []string{"-D", s.dataDir}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	cmd := exec.Command(s.bins.postgres, args...)
	p := &process{cmd: cmd, done: make(chan struct{}), logs: &lockedBuffer{}}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	s.setProc(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %v", err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		last = s.ping(ctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			s.mu.Lock()
			s.proc = nil
			s.mu.Unlock()
			return fmt.Errorf("pgtest: postgres exited before it answered (%v):\n%s", p.err, p.logs.String())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			s.kill(p)
			return fmt.Errorf("pgtest: postgres did not answer within %s: %v\n%s", readyTimeout, last, p.logs.String())
		}
	}
}

// ping logs in as the superuser over TCP.
func (s *Server) ping(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.URL())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// URL is the superuser's connection URL over TCP.
func (s *Server) URL() string {
	return s.URLFor(s.User, s.Password)
}

// URLFor is the connection URL of user with password over TCP, to the
// server's database, without TLS.
func (s *Server) URLFor(user, password string) string {
	u := url.URL{
		Scheme:   "postgresql",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + s.Database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// URLTemplate is a connection URL in Vault's template form, with
// {{username}} and {{password}} where the credentials go.
func (s *Server) URLTemplate() string {
	return fmt.Sprintf("postgresql://{{username}}:{{password}}@%s/%s?sslmode=disable",
		net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), s.Database)
}

// Pool returns a connection pool of the superuser, made on first use and
// closed by Stop and at the end of the test.
func (s *Server) Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil {
		return s.pool
	}
	if s.proc == nil {
		t.Fatal("pgtest: the server is stopped: Start it first")
	}
	p, err := pgxpool.New(context.Background(), s.URL())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s.pool = p
	return p
}

// Exec runs sql as the superuser (several statements are allowed when
// args is empty) and fails t on an error.
func (s *Server) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	if _, err := s.Pool(t).Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", firstLine(sql), err)
	}
}

// RoleExists reports whether pg_roles holds a role named name.
func (s *Server) RoleExists(t testing.TB, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	var ok bool
	err := s.Pool(t).QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&ok)
	if err != nil {
		t.Fatalf("pgtest: look up role %q: %v", name, err)
	}
	return ok
}

// Roles returns the names of the roles in pg_roles that begin with
// prefix, sorted.
func (s *Server) Roles(t testing.TB, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	rows, err := s.Pool(t).Query(ctx, `SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY rolname`, prefix)
	if err != nil {
		t.Fatalf("pgtest: list roles: %v", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("pgtest: list roles: %v", err)
	}
	return names
}

// ValidUntil returns a role's rolvaliduntil, and false when it has none.
func (s *Server) ValidUntil(t testing.TB, name string) (time.Time, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	var until *time.Time
	err := s.Pool(t).QueryRow(ctx, `SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1`, name).Scan(&until)
	if err != nil {
		t.Fatalf("pgtest: rolvaliduntil of %q: %v", name, err)
	}
	if until == nil {
		return time.Time{}, false
	}
	return *until, true
}

// CanLogin opens a connection over TCP as user with password and closes
// it; the error is PostgreSQL's refusal or the connection's failure.
func (s *Server) CanLogin(user, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URLFor(user, password))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// Connect opens a connection as user with password over TCP; it is closed
// at the end of the test.
func (s *Server) Connect(t testing.TB, user, password string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URLFor(user, password))
	if err != nil {
		t.Fatalf("pgtest: log in as %q: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Logs returns what the running (or last) postgres wrote to its stderr.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return ""
	}
	return s.proc.logs.String()
}

// Stop shuts the server down (fast shutdown: sessions are ended) and
// waits until it has exited. The data directory and port are kept for
// Start. Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
}

func (s *Server) stop() error {
	s.mu.Lock()
	p, pool := s.proc, s.pool
	s.proc, s.pool = nil, nil
	s.mu.Unlock()
	if pool != nil {
		pool.Close()
	}
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
		s.kill(p)
		return fmt.Errorf("pgtest: postgres did not stop within %s of a fast shutdown; killed it:\n%s", stopTimeout, p.logs.String())
	}
}

// kill ends p's process group at once and waits for the postmaster.
func (s *Server) kill(p *process) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Start starts a stopped server again on the same data directory and
// port, and waits until it answers.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	running := s.proc != nil
	s.mu.Unlock()
	if running {
		t.Fatal("pgtest: Start of a server that is running: Stop it first")
	}
	if err := s.start(t); err != nil {
		t.Fatal(err)
	}
}

// cleanup stops the server and removes its directory.
func (s *Server) cleanup(t testing.TB) {
	if err := s.stop(); err != nil {
		t.Error(err)
	}
	if err := os.RemoveAll(s.dir); err != nil {
		t.Errorf("pgtest: remove %s: %v", s.dir, err)
	}
}

// reapLeftovers kills the servers of test processes that died without
// their cleanup and removes their directories.
func reapLeftovers(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "coffer-pgtest-*"))
	if os.TempDir() != "/tmp" {
		more, _ := filepath.Glob("/tmp/coffer-pgtest-*")
		dirs = append(dirs, more...)
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || owner <= 0 || processAlive(owner) {
			continue
		}
		if pid := postmasterPID(filepath.Join(dir, "data")); pid > 0 {
			t.Logf("pgtest: killing postgres %d left by dead test process %d", pid, owner)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = os.RemoveAll(dir)
	}
}

// processAlive reports whether pid names a live process.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// postmasterPID returns the pid in dataDir's postmaster.pid when that
// process is a postgres serving dataDir, else 0.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("postgres")) || !bytes.Contains(cmdline, []byte(dataDir)) {
		return 0
	}
	return pid
}

// handedOut holds every port freePort returned in this process.
var handedOut struct {
	mu    sync.Mutex
	ports map[int]bool
}

// freePort returns a loopback TCP port that was free a moment ago and that
// no earlier call in this process returned.
func freePort(t testing.TB) int {
	t.Helper()
	for range 1000 {
		port := portLow + mrand.IntN(portHigh-portLow)
		handedOut.mu.Lock()
		taken := handedOut.ports[port]
		if !taken {
			if handedOut.ports == nil {
				handedOut.ports = make(map[int]bool)
			}
			handedOut.ports[port] = true
		}
		handedOut.mu.Unlock()
		if taken {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatalf("pgtest: no free loopback port between %d and %d", portLow, portHigh)
	return 0
}

// randomString returns n letters and digits from crypto/rand.
func randomString(n int) string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	r := make([]byte, 1)
	for i := 0; i < n; {
		rand.Read(r)
		// 62*4 = 248: bytes of 248 and above are drawn again, so every
		// character is equally likely.
		if r[0] >= 248 {
			continue
		}
		b[i] = chars[int(r[0])%len(chars)]
		i++
	}
	return string(b)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
