package database

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"coffer/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// createSelect is a role's creation statements that grant reading the
// public schema's tables.
var createSelect = Statements{
	`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
	`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`,
}

// testLogger routes the engine's log to t.Log.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "database", Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// setup starts PostgreSQL and an Engine with a connection "pg" whose
// management user is the superuser.
func setup(t *testing.T) (*pgtest.Server, *Engine, *Config) {
	t.Helper()
	pg := pgtest.Start(t)
	e := New(testLogger(t))
	t.Cleanup(e.CloseAll)
	cfg := &Config{
		Name:          "pg",
		ConnectionURL: pg.URLTemplate(),
		Username:      pg.User,
		Password:      pg.Password,
		AllowedRoles:  []string{"*"},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return pg, e, cfg
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newCreds makes a username and password as the server would.
func newCreds(t *testing.T, role string) (string, string) {
	t.Helper()
	pw, err := PasswordPolicy{}.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return GenerateUsername("token", role, time.Now()), pw
}

func TestCreatedUserCanDoWhatTheStatementsGrant(t *testing.T) {
	pg, e, cfg := setup(t)
	pg.Exec(t, `CREATE TABLE items (x int); INSERT INTO items VALUES (1), (2)`)
	ctx := ctxFor(t, 30*time.Second)

	user, pw := newCreds(t, "app")
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := e.CreateUser(ctx, cfg, createSelect, user, pw, exp); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	if err := pg.CanLogin(user, pw); err != nil {
		t.Fatalf("the created user cannot log in: %v", err)
	}
	if err := pg.CanLogin(user, pw+"x"); err == nil {
		t.Fatal("the created user logs in with a wrong password")
	}
	until, ok := pg.ValidUntil(t, user)
	if !ok || !until.Equal(exp) {
		t.Fatalf("rolvaliduntil = %v (set %v), want %v", until, ok, exp)
	}

	conn := pg.Connect(t, user, pw)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("SELECT as the created user: %d, %v", n, err)
	}
	_, err := conn.Exec(ctx, `INSERT INTO items VALUES (3)`)
	if pgErr, ok := pgError(err); !ok || pgErr.Code != "42501" {
		t.Fatalf("INSERT as a user granted only SELECT: %v, want insufficient_privilege (42501)", err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE mine (x int)`); err == nil {
		t.Fatal("the created user could create a table in public, which nothing granted")
	}
}

// TestStatementsWithSemicolonsInBodies checks that an entry holding several
// statements, one of them a DO block whose body has ';' and a quoted
// value, runs as written.
func TestStatementsWithSemicolonsInBodies(t *testing.T) {
	pg, e, cfg := setup(t)
	pg.Exec(t, `CREATE TABLE items (x int)`)
	ctx := ctxFor(t, 30*time.Second)
	stmts := Statements{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}';
DO $body$
BEGIN
  EXECUTE 'GRANT SELECT ON items TO ' || quote_ident('{{name}}');
  EXECUTE 'GRANT INSERT ON items TO ' || quote_ident('{{name}}');
END
$body$;`}
	user, pw := newCreds(t, "semi")
	if err := e.CreateUser(ctx, cfg, stmts, user, pw, time.Time{}); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	conn := pg.Connect(t, user, pw)
	if _, err := conn.Exec(ctx, `INSERT INTO items VALUES (1)`); err != nil {
		t.Fatalf("INSERT granted by the DO block: %v", err)
	}
	if _, ok := pg.ValidUntil(t, user); ok {
		t.Fatal("a user created without {{expiration}} has a rolvaliduntil")
	}
}

func TestRevokeDropsUserAndIsIdempotent(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	user, pw := newCreds(t, "rev")
	if err := e.CreateUser(ctx, cfg, createSelect, user, pw, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A session of the user is open when it is revoked.
	conn := pg.Connect(t, user, pw)
	if err := e.RevokeUser(ctx, cfg, nil, user); err != nil {
		t.Fatalf("RevokeUser: %v", err)
	}
	if pg.RoleExists(t, user) {
		t.Fatal("the revoked user is still in pg_roles")
	}
	if err := pg.CanLogin(user, pw); err == nil {
		t.Fatal("the revoked user can still log in")
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("the revoked user's open session still answers")
	}
	if err := e.RevokeUser(ctx, cfg, nil, user); err != nil {
		t.Fatalf("revoking a revoked user again: %v", err)
	}
	never := GenerateUsername("token", "never", time.Now())
	if err := e.RevokeUser(ctx, cfg, nil, never); err != nil {
		t.Fatalf("revoking a user that was never created: %v", err)
	}
}

func TestRevokeUserOwningObjects(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	stmts := Statements{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
		`GRANT CREATE, USAGE ON SCHEMA public TO "{{name}}";`,
	}
	user, pw := newCreds(t, "owner")
	if err := e.CreateUser(ctx, cfg, stmts, user, pw, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	conn := pg.Connect(t, user, pw)
	if _, err := conn.Exec(ctx, `CREATE TABLE owned_by_user (x int); CREATE SEQUENCE seq_by_user`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	if err := e.RevokeUser(ctx, cfg, nil, user); err != nil {
		t.Fatalf("revoking a user that owns a table: %v", err)
	}
	if pg.RoleExists(t, user) {
		t.Fatal("the user is still in pg_roles")
	}
	var owner string
	if err := pg.Pool(t).QueryRow(ctx, `SELECT tableowner FROM pg_tables WHERE tablename = 'owned_by_user'`).Scan(&owner); err != nil {
		t.Fatalf("the user's table is gone: %v", err)
	}
	if owner != cfg.Username {
		t.Fatalf("the table belongs to %q, want the management user %q", owner, cfg.Username)
	}
}

func TestRevokeWithCustomStatements(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	user, pw := newCreds(t, "custom")
	if err := e.CreateUser(ctx, cfg, createSelect, user, pw, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	revoke := Statements{
		`REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM "{{name}}";`,
		`CREATE TABLE IF NOT EXISTS revoked (name text); INSERT INTO revoked VALUES ('{{name}}'); DROP ROLE "{{name}}";`,
	}
	if err := e.RevokeUser(ctx, cfg, revoke, user); err != nil {
		t.Fatalf("RevokeUser with statements: %v", err)
	}
	if pg.RoleExists(t, user) {
		t.Fatal("the custom statements did not run")
	}
	var got string
	if err := pg.Pool(t).QueryRow(ctx, `SELECT name FROM revoked`).Scan(&got); err != nil || got != user {
		t.Fatalf("the custom statements saw %q, %v", got, err)
	}
	// The user is gone: the statements (whose DROP ROLE would fail now)
	// are not run again.
	if err := e.RevokeUser(ctx, cfg, revoke, user); err != nil {
		t.Fatalf("revoking again with statements: %v", err)
	}
	// A failing revocation statement is reported and leaves the user.
	user2, pw2 := newCreds(t, "custom")
	if err := e.CreateUser(ctx, cfg, createSelect, user2, pw2, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	err := e.RevokeUser(ctx, cfg, Statements{`DROP OWNED BY "{{name}}"; DROP ROLE "{{name}}"; SELECT 1/0;`}, user2)
	if !errors.Is(err, ErrStatement) || !strings.Contains(err.Error(), "division by zero") {
		t.Fatalf("a failing revocation statement: %v", err)
	}
	if !pg.RoleExists(t, user2) {
		t.Fatal("a failed revocation dropped the user: its statements did not run in one transaction")
	}
}

func TestRenewMovesValidUntil(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	user, pw := newCreds(t, "renew")
	first := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := e.CreateUser(ctx, cfg, createSelect, user, pw, first); err != nil {
		t.Fatal(err)
	}
	later := first.Add(2 * time.Hour)
	if err := e.RenewUser(ctx, cfg, nil, user, later); err != nil {
		t.Fatalf("RenewUser: %v", err)
	}
	if until, ok := pg.ValidUntil(t, user); !ok || !until.Equal(later) {
		t.Fatalf("rolvaliduntil after renew = %v, want %v", until, later)
	}
	custom := Statements{`ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'`}
	if err := e.RenewUser(ctx, cfg, custom, user, later.Add(time.Minute)); err != nil {
		t.Fatalf("RenewUser with statements: %v", err)
	}
	if until, _ := pg.ValidUntil(t, user); !until.Equal(later.Add(time.Minute)) {
		t.Fatalf("rolvaliduntil after a custom renew = %v", until)
	}
	err := e.RenewUser(ctx, cfg, nil, GenerateUsername("t", "gone", time.Now()), later)
	if !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("renewing a user that does not exist: %v, want ErrUserNotFound", err)
	}
}

func TestCreationSyntaxErrorLeavesNothing(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	user, pw := newCreds(t, "bad")
	stmts := Statements{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}';`,
		`GRAANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`,
	}
	err := e.CreateUser(ctx, cfg, stmts, user, pw, time.Now().Add(time.Hour))
	if err == nil {
		t.Fatal("a creation statement with a syntax error succeeded")
	}
	msg := err.Error()
	for _, want := range []string{`database connection "pg"`, "creation statement failed", `syntax error at or near "GRAANT"`, "42601"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if pgErr, ok := pgError(err); !ok || pgErr.Code != "42601" {
		t.Errorf("the error carries no PgError with SQLSTATE 42601: %v", err)
	}
	if !errors.Is(err, ErrStatement) {
		t.Errorf("errors.Is(err, ErrStatement) is false: %v", err)
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("the error is more than one line: %q", msg)
	}
	if pg.RoleExists(t, user) {
		t.Fatal("the first statement's role exists after the second failed")
	}

	// PostgreSQL quotes the token it stumbled on; here that is the
	// password literal, which must not reach the error.
	err = e.CreateUser(ctx, cfg, Statements{`CREATE ROLE "{{name}}" '{{password}}';`}, user, pw, time.Time{})
	if err == nil || strings.Contains(err.Error(), pw) {
		t.Fatalf("an error at the password literal: %v (the password must not appear)", err)
	}
	if !strings.Contains(err.Error(), redacted) {
		t.Fatalf("the error %q does not show where the password was taken out", err)
	}
	if pgErr, ok := pgError(err); !ok || strings.Contains(pgErr.Message, pw) {
		t.Fatalf("the carried PgError holds the password or is missing: %#v", pgErr)
	}
}

// TestCommitOfUnknownOutcome: a COMMIT whose answer never comes (it
// waits for a synchronous standby that is down, and the client gives up at
// its deadline) may have committed — here it did, locally — and says so
// with MayHaveCommitted; a statement PostgreSQL refused, or a deadline
// passed before the COMMIT was sent, does not.
func TestCommitOfUnknownOutcome(t *testing.T) {
	pg, e, cfg := setup(t)
	pg.Exec(t, `ALTER SYSTEM SET synchronous_standby_names = 'standby_that_is_down'`)
	pg.Exec(t, `SELECT pg_reload_conf()`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var v string
		err := pg.Pool(t).QueryRow(context.Background(), `SELECT current_setting('synchronous_standby_names')`).Scan(&v)
		if err == nil && v == "standby_that_is_down" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the configuration did not reload: %q, %v", v, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	user, pw := newCreds(t, "sync")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := e.CreateUser(ctx, cfg, Statements{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'; SET LOCAL synchronous_commit = on;`},
		user, pw, time.Time{})
	if err == nil || !MayHaveCommitted(err) {
		t.Fatalf("a commit that never answered: %v; MayHaveCommitted = %v, want true", err, MayHaveCommitted(err))
	}
	if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), cfg.Password) {
		t.Fatalf("the error holds a password: %v", err)
	}
	// The cancel the client sends as it gives up ends the wait for the
	// standby: the commit, local already, shows.
	for !pg.RoleExists(t, user) {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("the commit did not land: this test no longer shows an outcome that is unknown to the client")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}

	other, pw2 := newCreds(t, "refused")
	err = e.CreateUser(ctxFor(t, 10*time.Second), cfg, Statements{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'; SELEKT 1;`},
		other, pw2, time.Time{})
	if err == nil || MayHaveCommitted(err) {
		t.Fatalf("a statement PostgreSQL refused: %v; MayHaveCommitted = %v, want false", err, MayHaveCommitted(err))
	}
	slow, cancelSlow := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelSlow()
	err = e.CreateUser(slow, cfg, Statements{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'; SELECT pg_sleep(2);`},
		other, pw2, time.Time{})
	if err == nil || MayHaveCommitted(err) {
		t.Fatalf("a deadline before the commit: %v; MayHaveCommitted = %v, want false", err, MayHaveCommitted(err))
	}
	if pg.RoleExists(t, other) {
		t.Fatal("a creation that never committed left its user")
	}
}

func TestHostileUsernameRefused(t *testing.T) {
	pg, e, cfg := setup(t)
	pg.Exec(t, `CREATE ROLE admin`)
	ctx := ctxFor(t, 30*time.Second)
	hostile := `x"; DROP ROLE admin; --`
	_, pw := newCreds(t, "x")
	checks := map[string]error{
		"CreateUser":  e.CreateUser(ctx, cfg, createSelect, hostile, pw, time.Now().Add(time.Hour)),
		"RenewUser":   e.RenewUser(ctx, cfg, nil, hostile, time.Now().Add(time.Hour)),
		"RevokeUser":  e.RevokeUser(ctx, cfg, nil, hostile),
		"SetPassword": e.SetPassword(ctx, cfg, nil, hostile, pw),
	}
	for op, err := range checks {
		if !errors.Is(err, ErrUnsafeValue) {
			t.Errorf("%s with username %q: %v, want ErrUnsafeValue", op, hostile, err)
		}
	}
	// A hostile password is refused too, without being quoted.
	badPw := `p'; DROP ROLE admin; --`
	err := e.CreateUser(ctx, cfg, createSelect, GenerateUsername("t", "x", time.Now()), badPw, time.Time{})
	if !errors.Is(err, ErrUnsafeValue) || strings.Contains(err.Error(), badPw) {
		t.Errorf("CreateUser with a hostile password: %v", err)
	}
	if !pg.RoleExists(t, "admin") {
		t.Fatal("the hostile username dropped a role")
	}
}

func TestVerify(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	if err := e.Verify(ctx, cfg); err != nil {
		t.Fatalf("Verify of a right configuration: %v", err)
	}

	wrong := *cfg
	wrong.Password = "not-the-password-4711"
	err := e.Verify(ctx, &wrong)
	if !errors.Is(err, ErrLoginRefused) {
		t.Fatalf("Verify with a wrong password: %v, want ErrLoginRefused", err)
	}
	msg := err.Error()
	if strings.Contains(msg, wrong.Password) || strings.Contains(msg, pg.Password) {
		t.Fatalf("the error holds a password: %q", msg)
	}
	for _, want := range []string{`database connection "pg"`, "password authentication failed", "28P01"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}

	down := *cfg
	down.ConnectionURL = strings.Replace(cfg.ConnectionURL, fmt.Sprintf(":%d/", pg.Port), ":1/", 1)
	err = e.Verify(ctx, &down)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), `database connection "pg" is unreachable`) {
		t.Fatalf("Verify of a port nothing listens on: %v", err)
	}
	if strings.Contains(err.Error(), pg.Password) {
		t.Fatalf("the error holds the password: %q", err)
	}

	noDB := *cfg
	noDB.ConnectionURL = strings.Replace(cfg.ConnectionURL, "/postgres?", "/nosuchdb?", 1)
	if err := e.Verify(ctx, &noDB); !errors.Is(err, ErrLoginRefused) || !strings.Contains(err.Error(), "nosuchdb") {
		t.Fatalf("Verify of a database that does not exist: %v", err)
	}
}

func TestRotateRoot(t *testing.T) {
	pg, e, _ := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	pg.Exec(t, `CREATE ROLE mgr WITH LOGIN CREATEROLE PASSWORD 'first-password'`)
	cfg := &Config{Name: "mgr", ConnectionURL: pg.URLTemplate(), Username: "mgr", Password: "first-password", AllowedRoles: []string{"*"}}
	// The pool is in use before the rotation.
	user, pw := newCreds(t, "before")
	if err := e.CreateUser(ctx, cfg, createSelect[:1], user, pw, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	next, err := PasswordPolicy{}.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.RotateRoot(ctx, cfg, next); err != nil {
		t.Fatalf("RotateRoot: %v", err)
	}
	if err := pg.CanLogin("mgr", next); err != nil {
		t.Fatalf("the new root password does not log in: %v", err)
	}
	if err := pg.CanLogin("mgr", "first-password"); err == nil {
		t.Fatal("the old root password still logs in")
	}

	// The caller stores the new password; the engine goes on with it.
	rotated := *cfg
	rotated.Password = next
	// After a crash between the rotation and that store, whoever takes
	// over finds the password the database has with Verify: exactly one of
	// the old and the pending one logs in.
	if err := e.Verify(ctx, &rotated); err != nil {
		t.Fatalf("Verify with the pending password: %v", err)
	}
	if err := e.Verify(ctx, cfg); !errors.Is(err, ErrLoginRefused) {
		t.Fatalf("Verify with the old password: %v, want ErrLoginRefused", err)
	}
	user2, pw2 := newCreds(t, "after")
	if err := e.CreateUser(ctx, &rotated, createSelect[:1], user2, pw2, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("CreateUser after the rotation: %v", err)
	}
	// Rotating to the same password again is harmless (a retried rotation).
	if err := e.RotateRoot(ctx, &rotated, next); err != nil {
		t.Fatalf("RotateRoot to the password it has: %v", err)
	}
	// A caller that kept the old password is refused with a clear error.
	_, err = e.UserExists(ctx, cfg, user2)
	if !errors.Is(err, ErrLoginRefused) || strings.Contains(err.Error(), "first-password") {
		t.Fatalf("a call with the old root password: %v, want ErrLoginRefused without the password", err)
	}
}

func TestSetPasswordStaticUser(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	pg.Exec(t, `CREATE ROLE app_static WITH LOGIN PASSWORD 'old-password'`)
	next, err := PasswordPolicy{Length: 32, MinSymbols: 2, Symbols: "-_.~"}.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetPassword(ctx, cfg, nil, "app_static", next); err != nil {
		t.Fatalf("SetPassword: %v", err)
	}
	if err := pg.CanLogin("app_static", next); err != nil {
		t.Fatalf("the new password does not log in: %v", err)
	}
	if err := pg.CanLogin("app_static", "old-password"); err == nil {
		t.Fatal("the old password still logs in")
	}
	if err := e.SetPassword(ctx, cfg, nil, "app_static", next); err != nil {
		t.Fatalf("setting the same password twice: %v", err)
	}
	if err := pg.CanLogin("app_static", next); err != nil {
		t.Fatalf("login after setting the same password twice: %v", err)
	}
	err = e.SetPassword(ctx, cfg, nil, "no_such_user", next)
	if !errors.Is(err, ErrUserNotFound) || strings.Contains(err.Error(), next) {
		t.Fatalf("SetPassword of a user that does not exist: %v, want ErrUserNotFound without the password", err)
	}
}

func TestDatabaseDownThenBack(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 60*time.Second)
	user, pw := newCreds(t, "down")
	if err := e.CreateUser(ctx, cfg, createSelect, user, pw, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	pg.Stop(t)
	callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	begin := time.Now()
	user2, pw2 := newCreds(t, "down")
	err := e.CreateUser(callCtx, cfg, createSelect, user2, pw2, time.Now().Add(time.Hour))
	took := time.Since(begin)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("CreateUser with the database down: %v, want ErrUnreachable", err)
	}
	if !strings.HasPrefix(err.Error(), `database connection "pg" is unreachable`) || strings.Contains(err.Error(), pg.Password) {
		t.Fatalf("the error does not name the connection, or holds the password: %q", err)
	}
	if took > 3*time.Second+500*time.Millisecond {
		t.Fatalf("CreateUser took %s with a 3s deadline", took)
	}
	t.Logf("CreateUser failed after %s: %v", took, err)
	if err := e.RevokeUser(callCtx, cfg, nil, user); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("RevokeUser with the database down: %v, want ErrUnreachable", err)
	}

	// A black-holed call is bounded by its context.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	begin = time.Now()
	if err := e.RenewUser(short, cfg, nil, user, time.Now().Add(time.Hour)); err == nil {
		t.Fatal("RenewUser worked with the database down")
	}
	if took := time.Since(begin); took > time.Second {
		t.Fatalf("a call with a 200ms deadline took %s", took)
	}

	pg.Start(t)
	user3, pw3 := newCreds(t, "back")
	if err := e.CreateUser(ctx, cfg, createSelect, user3, pw3, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("CreateUser after the database came back: %v", err)
	}
	if err := pg.CanLogin(user3, pw3); err != nil {
		t.Fatal(err)
	}
	if err := e.RevokeUser(ctx, cfg, nil, user); err != nil || pg.RoleExists(t, user) {
		t.Fatalf("the revocation queued during the outage, run now: %v", err)
	}
}

func TestConcurrentCreateUser(t *testing.T) {
	pg, e, cfg := setup(t)
	pg.Exec(t, `CREATE TABLE items (x int)`)
	cfg.MaxOpenConnections = 4
	ctx := ctxFor(t, 120*time.Second)
	const users, workers = 200, 32

	names := make([]string, users)
	passwords := make([]string, users)
	for i := range names {
		names[i], passwords[i] = newCreds(t, "conc")
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, users)
	begin := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= users {
					return
				}
				if err := e.CreateUser(ctx, cfg, createSelect, names[i], passwords[i], time.Now().Add(time.Hour)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(begin)
	close(errs)
	for err := range errs {
		t.Errorf("CreateUser: %v", err)
	}
	t.Logf("%d users created by %d goroutines over %d connections in %s: %.0f users/s",
		users, workers, cfg.MaxOpenConnections, took.Round(time.Millisecond), float64(users)/took.Seconds())

	got := pg.Roles(t, "v-token-conc-")
	if len(got) != users {
		t.Fatalf("pg_roles holds %d of the %d users", len(got), users)
	}
	var conns int
	if err := pg.Pool(t).QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'coffer'`).Scan(&conns); err != nil {
		t.Fatal(err)
	}
	if conns > cfg.MaxOpenConnections {
		t.Fatalf("the engine holds %d connections, more than max_open_connections %d", conns, cfg.MaxOpenConnections)
	}
	for i := 0; i < users; i += 37 {
		if err := pg.CanLogin(names[i], passwords[i]); err != nil {
			t.Errorf("user %d cannot log in: %v", i, err)
		}
	}

	// Revocations, for the figure.
	begin = time.Now()
	next.Store(0)
	revErrs := make(chan error, users)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= users {
					return
				}
				if err := e.RevokeUser(ctx, cfg, nil, names[i]); err != nil {
					revErrs <- err
				}
			}
		}()
	}
	wg.Wait()
	took = time.Since(begin)
	close(revErrs)
	for err := range revErrs {
		t.Errorf("RevokeUser: %v", err)
	}
	t.Logf("%d users revoked in %s: %.0f revocations/s", users, took.Round(time.Millisecond), float64(users)/took.Seconds())
	if left := pg.Roles(t, "v-token-conc-"); len(left) != 0 {
		t.Fatalf("%d users left after revoking all", len(left))
	}
}

func TestPoolFollowsConfig(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	p1, release, err := e.use(cfg)
	if err != nil {
		t.Fatal(err)
	}
	release()
	release() // twice is once
	if p2, release, _ := e.use(cfg); p2 != p1 {
		t.Fatal("the same configuration got a new pool")
	} else {
		release()
	}
	changed := *cfg
	changed.MaxOpenConnections = 7
	p3, release, err := e.use(&changed)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if p3 == p1 || p3.Config().MaxConns != 7 {
		t.Fatalf("a changed configuration kept its pool (max conns %d)", p3.Config().MaxConns)
	}
	if ok, err := e.UserExists(ctx, &changed, pg.User); err != nil || !ok {
		t.Fatalf("UserExists(superuser) = %v, %v", ok, err)
	}
	e.Close("pg")
	e.Close("pg") // twice is fine
	if ok, err := e.UserExists(ctx, &changed, pg.User); err != nil || !ok {
		t.Fatalf("a call after Close makes a new pool: %v, %v", ok, err)
	}
	e.CloseAll()
	if _, err := e.UserExists(ctx, cfg, pg.User); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("a call after CloseAll: %v", err)
	}
	e.CloseAll()
}

// TestCallsOutliveAPoolTheyHold: calls in flight while the connection's
// pool is closed (a connection deleted or written again) or rebuilt (its
// configuration changed) finish on the pool they hold; none fails with a
// closed pool. Once they are done, no old pool keeps a connection.
func TestCallsOutliveAPoolTheyHold(t *testing.T) {
	pg, e, cfg := setup(t)
	ctx := ctxFor(t, 60*time.Second)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls atomic.Int64
	errs := make(chan error, 1000)
	for w := range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				user, pw := newCreds(t, fmt.Sprintf("p%d", w))
				err := e.CreateUser(ctx, cfg, createSelect, user, pw, time.Now().Add(time.Hour))
				if err == nil {
					err = e.RevokeUser(ctx, cfg, nil, user)
				}
				calls.Add(1)
				if err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range 40 {
		if i%2 == 0 {
			e.Close("pg")
		} else {
			changed := *cfg
			changed.MaxOpenConnections = 5 + i%3
			if _, err := e.UserExists(ctx, &changed, pg.User); err != nil {
				t.Error(err)
			}
		}
		for n := calls.Load(); calls.Load() < n+3; {
			runtime.Gosched() // let calls run on the new pool
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			t.Errorf("a call failed while its pool was replaced: %v", err)
		}
	}
	t.Logf("%d calls, %d failed", calls.Load(), n)
	e.CloseAll()
	var conns int
	if err := pg.Pool(t).QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'coffer'`).Scan(&conns); err != nil {
		t.Fatal(err)
	}
	if conns != 0 {
		t.Fatalf("%d connections left after CloseAll", conns)
	}
}

// pgError returns err's PostgreSQL error, if it carries one.
func pgError(err error) (*pgconn.PgError, bool) {
	var pgErr *pgconn.PgError
	ok := errors.As(err, &pgErr)
	return pgErr, ok
}

// TestNonSuperuserManagement runs the whole life of a user with a
// management user that only has CREATEROLE (as operators are told to
// configure it), not the superuser the other tests use.
func TestNonSuperuserManagement(t *testing.T) {
	pg, e, _ := setup(t)
	ctx := ctxFor(t, 30*time.Second)
	pg.Exec(t, `CREATE ROLE mgr WITH LOGIN CREATEROLE PASSWORD 'mgr-password';
		GRANT CREATE, USAGE ON SCHEMA public TO mgr WITH GRANT OPTION;
		CREATE TABLE items (x int); GRANT SELECT ON items TO mgr WITH GRANT OPTION`)
	cfg := &Config{Name: "mgr", ConnectionURL: pg.URLTemplate(), Username: "mgr", Password: "mgr-password", AllowedRoles: []string{"*"}}
	stmts := Statements{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
		`GRANT SELECT ON items TO "{{name}}"; GRANT CREATE, USAGE ON SCHEMA public TO "{{name}}";`,
	}
	user, pw := newCreds(t, "mgr")
	if err := e.CreateUser(ctx, cfg, stmts, user, pw, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	if err := e.RenewUser(ctx, cfg, nil, user, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatalf("RenewUser: %v", err)
	}
	conn := pg.Connect(t, user, pw)
	if _, err := conn.Exec(ctx, `CREATE TABLE made_by_user (x int)`); err != nil {
		t.Fatal(err)
	}
	if err := e.RevokeUser(ctx, cfg, nil, user); err != nil {
		t.Fatalf("RevokeUser by a CREATEROLE management user: %v", err)
	}
	if pg.RoleExists(t, user) {
		t.Fatal("the user is still in pg_roles")
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("the revoked user's open session still answers")
	}
	var owner string
	if err := pg.Pool(t).QueryRow(ctx, `SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_user'`).Scan(&owner); err != nil || owner != "mgr" {
		t.Fatalf("the user's table belongs to %q (%v), want mgr", owner, err)
	}
	var members int
	if err := pg.Pool(t).QueryRow(ctx, `SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'mgr'`).Scan(&members); err != nil || members != 0 {
		t.Fatalf("mgr is left a member of %d roles (%v)", members, err)
	}
}
