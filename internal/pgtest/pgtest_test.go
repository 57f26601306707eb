package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartLoginStopStart(t *testing.T) {
	begin := time.Now()
	pg := Start(t)
	t.Logf("Start took %s", time.Since(begin))

	if err := pg.CanLogin(pg.User, pg.Password); err != nil {
		t.Fatalf("superuser login: %v", err)
	}
	err := pg.CanLogin(pg.User, "wrong")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("login with a wrong password: %v, want SQLSTATE 28P01", err)
	}

	pg.Exec(t, `CREATE ROLE "pgtest-a" LOGIN PASSWORD 'pw-a'; CREATE ROLE "pgtest-b"; CREATE ROLE other`)
	if !pg.RoleExists(t, "pgtest-a") || pg.RoleExists(t, "pgtest-c") {
		t.Fatal("RoleExists does not match pg_roles")
	}
	if got := pg.Roles(t, "pgtest-"); strings.Join(got, ",") != "pgtest-a,pgtest-b" {
		t.Fatalf("Roles(pgtest-) = %v", got)
	}
	if err := pg.CanLogin("pgtest-a", "pw-a"); err != nil {
		t.Fatalf("login as a created role: %v", err)
	}

	ctx := context.Background()
	var maxConns string
	if err := pg.Pool(t).QueryRow(ctx, "SHOW max_connections").Scan(&maxConns); err != nil || maxConns != "300" {
		t.Fatalf("max_connections = %q, %v", maxConns, err)
	}
	var fsync string
	if err := pg.Pool(t).QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil || fsync != "off" {
		t.Fatalf("fsync = %q, %v", fsync, err)
	}

	port := pg.Port
	pg.Stop(t)
	if err := pg.CanLogin(pg.User, pg.Password); err == nil {
		t.Fatal("login worked with the server stopped")
	}
	pg.Stop(t) // twice is fine
	pg.Start(t)
	if pg.Port != port {
		t.Fatalf("port changed across a restart: %d → %d", port, pg.Port)
	}
	if !pg.RoleExists(t, "pgtest-a") {
		t.Fatal("a role was lost across a restart")
	}
	if err := pg.CanLogin("pgtest-a", "pw-a"); err != nil {
		t.Fatalf("login after a restart: %v", err)
	}
}

// TestRunsUnprivileged checks that, run as root, postgres runs as another
// account: PostgreSQL refuses root, and the harness must not need it.
func TestRunsUnprivileged(t *testing.T) {
	pg := Start(t)
	var pid int
	if err := pg.Pool(t).QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var uid int
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid, _ = strconv.Atoi(f[1])
		}
	}
	if uid != os.Geteuid() && os.Geteuid() != 0 {
		t.Fatalf("postgres runs as uid %d, the test as %d", uid, os.Geteuid())
	}
	if os.Geteuid() == 0 && uid == 0 {
		t.Fatal("postgres runs as root")
	}
	st, err := os.Stat(filepath.Join(pg.dataDir, "PG_VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	if owner := int(st.Sys().(*syscall.Stat_t).Uid); owner != uid {
		t.Fatalf("the data directory belongs to uid %d, postgres runs as %d", owner, uid)
	}
}

func TestDirectoryRemovedAfterTest(t *testing.T) {
	var dir, socket string
	t.Run("server", func(t *testing.T) {
		pg := Start(t)
		dir = pg.dir
		socket = filepath.Join(pg.SocketDir, ".s.PGSQL."+strconv.Itoa(pg.Port))
		if _, err := os.Stat(socket); err != nil {
			t.Fatalf("no unix socket: %v", err)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the server's directory %s is still there after its test: %v", dir, err)
	}
}

// TestLeftoverReaped starts a server as if a dead test process had left
// it behind and checks the next Start kills it and removes its directory.
func TestLeftoverReaped(t *testing.T) {
	var left *Server
	var leftProc *process
	t.Run("left", func(t *testing.T) {
		left = Start(t)
		left.mu.Lock()
		leftProc = left.proc
		left.proc = nil // the cleanup will not stop it
		left.mu.Unlock()
		// Skip removing the directory too: make cleanup a no-op.
		left.dir = filepath.Join(left.dir, "not-there")
	})
	dir := filepath.Dir(left.dir)
	// A pid that cannot be alive: larger than pid_max.
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte("2147483647"), 0o644); err != nil {
		t.Fatal(err)
	}
	Start(t)
	select {
	case <-leftProc.done:
	case <-time.After(10 * time.Second):
		left.kill(leftProc)
		t.Fatal("the leftover postgres was not killed by the next Start")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the leftover directory %s is still there: %v", dir, err)
	}
}
