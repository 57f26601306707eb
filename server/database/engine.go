package database

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Engine runs statements on PostgreSQL connections. It keeps one pool per
// connection name, built from the Config the caller passes and rebuilt
// when that Config changes; it stores nothing else, so any node can use
// any Config it reads from replicated state. Safe for concurrent use.
type Engine struct {
	log hclog.Logger

	mu     sync.Mutex
	pools  map[string]*poolEntry
	closed bool
	// closing counts the retired pools not yet closed: a replaced pool is
	// closed once the calls that use it are done.
	closing sync.WaitGroup
}

type poolEntry struct {
	fp   [32]byte
	pool *pgxpool.Pool
	// users counts the calls using the pool now; a retired pool (replaced,
	// or its connection closed) is closed once none does. Both are guarded
	// by Engine.mu.
	users   int
	retired bool
}

// errEngineClosed is returned by calls after CloseAll.
var errEngineClosed = errors.New("database engine is closed")

// New returns an Engine that logs to log (nil: nowhere).
func New(log hclog.Logger) *Engine {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Engine{log: log, pools: make(map[string]*poolEntry)}
}

// use returns the pool of cfg for one call, building it when there is
// none or cfg differs from the one it was built from, and the release the
// call must make when it is done with the pool. A pool replaced or closed
// while calls use it stays open until they have released it: a call never
// finds its pool closed under it.
func (e *Engine) use(cfg *Config) (*pgxpool.Pool, func(), error) {
	fp := cfg.fingerprint()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, &Error{Connection: cfg.Name, Kind: ErrUnreachable, Err: errEngineClosed, Hint: "the node is shutting down"}
	}
	if ent, ok := e.pools[cfg.Name]; ok && ent.fp == fp {
		ent.users++
		return ent.pool, e.releaser(ent), nil
	}
	pc, err := cfg.poolConfig()
	if err != nil {
		return nil, nil, err
	}
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, nil, &Error{Connection: cfg.Name, Kind: ErrInvalidConfig, Err: redact(err, cfg.Password)}
	}
	if old, ok := e.pools[cfg.Name]; ok {
		e.retireLocked(old)
		e.log.Debug("connection pool rebuilt for a changed configuration", "connection", cfg.Name)
	}
	ent := &poolEntry{fp: fp, pool: p, users: 1}
	e.pools[cfg.Name] = ent
	return p, e.releaser(ent), nil
}

// releaser is the release of one use of ent (idempotent).
func (e *Engine) releaser(ent *poolEntry) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			ent.users--
			if ent.retired && ent.users == 0 {
				e.closeInBackground(ent.pool)
			}
		})
	}
}

// replacePool makes p the pool of cfg (a pool known to work with cfg).
func (e *Engine) replacePool(cfg *Config, p *pgxpool.Pool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		e.closing.Add(1)
		e.closeInBackground(p)
		return
	}
	if old, ok := e.pools[cfg.Name]; ok && old.pool != p {
		e.retireLocked(old)
	}
	e.pools[cfg.Name] = &poolEntry{fp: cfg.fingerprint(), pool: p}
}

// retireLocked marks ent as no longer its connection's pool: it is closed
// now when no call uses it, else by the last call's release. e.closing
// counts it until it is closed.
func (e *Engine) retireLocked(ent *poolEntry) {
	if ent.retired {
		return
	}
	ent.retired = true
	e.closing.Add(1)
	if ent.users == 0 {
		e.closeInBackground(ent.pool)
	}
}

// closeInBackground closes p and marks one retired pool closed
// (e.closing): Close waits for the connections still checked out.
func (e *Engine) closeInBackground(p *pgxpool.Pool) {
	go func() {
		defer e.closing.Done()
		p.Close()
	}()
}

// Close retires the pool of the connection name (deleted, or written
// again): calls using it finish on it, then it is closed; the next call
// builds a new one.
func (e *Engine) Close(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ent, ok := e.pools[name]; ok {
		delete(e.pools, name)
		e.retireLocked(ent)
	}
}

// CloseAll closes every pool and waits until they are closed (the calls
// using them done); later calls fail. It is idempotent.
func (e *Engine) CloseAll() {
	e.mu.Lock()
	e.closed = true
	for name, ent := range e.pools {
		delete(e.pools, name)
		e.retireLocked(ent)
	}
	e.mu.Unlock()
	e.closing.Wait()
}

// Verify connects with cfg on a connection of its own (not the pool, so a
// configuration being written does not disturb the one in use) and pings.
// The error names the connection and carries PostgreSQL's reason.
func (e *Engine) Verify(ctx context.Context, cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	pc, err := cfg.poolConfig()
	if err != nil {
		return err
	}
	return checkLogin(ctx, cfg.Name, pc.ConnConfig, cfg.Password)
}

// checkLogin opens one connection with cc, pings and closes it.
func checkLogin(ctx context.Context, name string, cc *pgx.ConnConfig, secrets ...string) error {
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return connectError(name, err, secrets...)
	}
	defer conn.Close(context.Background())
	if err := conn.Ping(ctx); err != nil {
		return connectError(name, err, secrets...)
	}
	return nil
}

// txOp is one transaction the engine runs: its statements, what they are
// called in errors, and what to do about a failure.
type txOp struct {
	what    string   // "creation statement", …
	hint    string   // what to do when a statement fails
	secrets []string // taken out of every error
}

// inTx runs fn in one transaction on cfg's pool. A failure to begin (no
// connection, or one that died) is tried once more on a fresh connection:
// nothing has run yet. A failure of fn rolls everything back.
func (e *Engine) inTx(ctx context.Context, cfg *Config, op txOp, fn func(pgx.Tx) error) error {
	secrets := append([]string{cfg.Password}, op.secrets...)
	p, release, err := e.use(cfg)
	if err != nil {
		return err
	}
	defer release()
	for conflicts := 0; ; conflicts++ {
		err := e.runTx(ctx, cfg, p, op, fn, secrets)
		if err == nil || !isConflict(err) || conflicts == maxConflictRetries {
			return err
		}
		// Rolled back whole: run it again after a short jittered wait.
		window := min(conflictBackoffMax, time.Millisecond<<min(conflicts, 5))
		wait := time.Duration(1+randIndex(int(window/time.Microsecond))) * time.Microsecond
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// Retries of a transaction that collided with a concurrent one.
const (
	maxConflictRetries = 50
	conflictBackoffMax = 20 * time.Millisecond
)

// runTx is one attempt of inTx. The error is an *Error, or a conflict
// (isConflict) wrapped in one.
func (e *Engine) runTx(ctx context.Context, cfg *Config, p *pgxpool.Pool, op txOp, fn func(pgx.Tx) error, secrets []string) error {
	var tx pgx.Tx
	var err error
	for attempt := 0; ; attempt++ {
		tx, err = p.Begin(ctx)
		if err == nil {
			break
		}
		if attempt == 1 || !isConnectionFailure(err) || ctx.Err() != nil {
			return connectError(cfg.Name, err, secrets...)
		}
	}
	defer tx.Rollback(context.Background())
	if err := fn(tx); err != nil {
		var engErr *Error
		if errors.As(err, &engErr) {
			return engErr
		}
		return statementError(cfg.Name, op, err, secrets)
	}
	if err := tx.Commit(ctx); err != nil {
		serr := statementError(cfg.Name, txOp{what: "commit", hint: op.hint}, err, secrets)
		// PostgreSQL's own refusal (or pgx's report that the commit rolled
		// back) means nothing was committed; anything else leaves the
		// outcome unknown.
		var pgErr *pgconn.PgError
		if engErr := (*Error)(nil); !errors.As(err, &pgErr) && !errors.Is(err, pgx.ErrTxCommitRollback) && errors.As(serr, &engErr) {
			engErr.MaybeCommitted = true
		}
		return serr
	}
	return nil
}

// statementError describes a failed statement; a connection lost on the
// way is reported as unreachable.
func statementError(name string, op txOp, err error, secrets []string) error {
	if isConnectionFailure(err) {
		return &Error{Connection: name, Op: "during the " + op.what, Kind: ErrUnreachable, Err: redact(err, secrets...),
			Hint: "the connection was lost: check that PostgreSQL is running, then try again"}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &Error{Connection: name, Op: op.what + " did not finish", Kind: ErrStatement, Err: redact(err, secrets...),
			Hint: "the request's deadline passed: look for locks held on the database"}
	}
	return &Error{Connection: name, Op: op.what + " failed", Kind: ErrStatement, Err: redact(err, secrets...), Hint: op.hint}
}

// execAll runs each rendered statement entry as one simple query.
func execAll(ctx context.Context, tx pgx.Tx, rendered []string) error {
	for _, s := range rendered {
		if _, err := tx.Exec(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// CreateUser creates a dynamic user: it runs stmts (the role's creation
// statements; there is no default) in one transaction, with {{name}} and
// {{username}} as username, {{password}} as password and {{expiration}}
// as expiration (ExpirationFormat, "infinity" for the zero time). A
// failing statement leaves nothing behind. A user of that name that
// exists already makes CREATE ROLE fail: the caller generates a new name.
func (e *Engine) CreateUser(ctx context.Context, cfg *Config, stmts Statements, username, password string, expiration time.Time) error {
	if len(stmts) == 0 {
		return fmt.Errorf("%w: the role has no creation statements: give creation_statements", ErrInvalidStatements)
	}
	rendered, err := renderAll(stmts, Values{Name: username, Password: password, Expiration: formatExpiration(expiration)})
	if err != nil {
		return err
	}
	op := txOp{what: "creation statement", hint: "fix the role's creation statements or the management user's privileges", secrets: []string{password}}
	return e.inTx(ctx, cfg, op, func(tx pgx.Tx) error { return execAll(ctx, tx, rendered) })
}

// RenewUser moves a dynamic user's expiry to expiration with stmts (empty:
// DefaultRenewStatements). A user that does not exist gives
// ErrUserNotFound.
func (e *Engine) RenewUser(ctx context.Context, cfg *Config, stmts Statements, username string, expiration time.Time) error {
	if len(stmts) == 0 {
		stmts = DefaultRenewStatements
	}
	rendered, err := renderAll(stmts, Values{Name: username, Expiration: formatExpiration(expiration)})
	if err != nil {
		return err
	}
	op := txOp{what: "renew statement", hint: "fix the role's renew statements or the management user's privileges"}
	return e.userMustExist(ctx, cfg, username, e.inTx(ctx, cfg, op, func(tx pgx.Tx) error { return execAll(ctx, tx, rendered) }))
}

// SetPassword sets a static user's password with stmts (empty:
// DefaultRotationStatements). Setting the password it has is no error, so
// a rotation cut short can be run again. A user that does not exist gives
// ErrUserNotFound.
func (e *Engine) SetPassword(ctx context.Context, cfg *Config, stmts Statements, username, password string) error {
	if len(stmts) == 0 {
		stmts = DefaultRotationStatements
	}
	rendered, err := renderAll(stmts, Values{Name: username, Password: password})
	if err != nil {
		return err
	}
	op := txOp{what: "rotation statement", hint: "fix the static role's rotation statements or the management user's privileges", secrets: []string{password}}
	return e.userMustExist(ctx, cfg, username, e.inTx(ctx, cfg, op, func(tx pgx.Tx) error { return execAll(ctx, tx, rendered) }))
}

// userMustExist turns a statement failure into ErrUserNotFound when the
// user is not in pg_roles.
func (e *Engine) userMustExist(ctx context.Context, cfg *Config, username string, err error) error {
	if err == nil || !errors.Is(err, ErrStatement) {
		return err
	}
	exists, lookErr := e.UserExists(ctx, cfg, username)
	if lookErr == nil && !exists {
		return &Error{Connection: cfg.Name, Op: fmt.Sprintf("user %q does not exist", username), Kind: ErrUserNotFound,
			Hint: "it was dropped outside coffer, or the username is wrong"}
	}
	return err
}

// UserExists reports whether pg_roles holds username (a parameterised
// query).
func (e *Engine) UserExists(ctx context.Context, cfg *Config, username string) (bool, error) {
	p, release, err := e.use(cfg)
	if err != nil {
		return false, err
	}
	defer release()
	var exists bool
	query := func() error {
		return p.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, username).Scan(&exists)
	}
	err = query()
	if err != nil && isConnectionFailure(err) && ctx.Err() == nil {
		err = query() // a pooled connection that died: once more on a fresh one
	}
	switch {
	case err == nil:
		return exists, nil
	case isConnectionFailure(err) || isLoginRefused(err) || ctx.Err() != nil:
		return false, connectError(cfg.Name, err, cfg.Password)
	default:
		return false, statementError(cfg.Name, txOp{what: "user lookup"}, err, []string{cfg.Password})
	}
}

// RevokeUser drops a dynamic user. It is idempotent: a user that does not
// exist (already dropped, or whose creation never happened) is success.
//
// With no stmts it does what Vault's PostgreSQL plugin means by
// revocation, in one transaction: it makes the management user a member
// of the user's role when it is not one (a CREATEROLE user that is not a
// superuser may not otherwise touch what the role owns), ends the user's
// open sessions and waits for them to exit (best effort: that needs the
// privilege to signal them), then REASSIGN OWNED BY the user TO the
// management user, DROP OWNED BY the user (which also revokes every
// privilege granted to it in this database) and DROP ROLE. Privileges in
// other databases of the server are not seen from this one and make DROP
// ROLE fail with PostgreSQL's message; give revocation statements for
// such roles.
//
// With stmts, they run in one transaction in place of the above, once the
// user is known to exist.
func (e *Engine) RevokeUser(ctx context.Context, cfg *Config, stmts Statements, username string) error {
	if err := CheckUsername(username); err != nil {
		return err
	}
	var rendered []string
	if len(stmts) > 0 {
		var err error
		if rendered, err = renderAll(stmts, Values{Name: username}); err != nil {
			return err
		}
	}
	exists, err := e.UserExists(ctx, cfg, username)
	if err != nil || !exists {
		return err
	}
	op := txOp{what: "revocation statement", hint: "fix the role's revocation statements or the management user's privileges"}
	err = e.inTx(ctx, cfg, op, func(tx pgx.Tx) error {
		if len(stmts) > 0 {
			return execAll(ctx, tx, rendered)
		}
		return e.dropUser(ctx, cfg, tx, username)
	})
	if err != nil && errors.Is(err, ErrStatement) {
		// Another revocation may have dropped the user meanwhile.
		if exists, lookErr := e.UserExists(ctx, cfg, username); lookErr == nil && !exists {
			return nil
		}
	}
	return err
}

// dropUser is RevokeUser's default, in tx.
func (e *Engine) dropUser(ctx context.Context, cfg *Config, tx pgx.Tx, username string) error {
	ident := quoteIdent(username)
	var member bool
	var sessions int
	err := tx.QueryRow(ctx, `SELECT pg_has_role($1::name, 'USAGE'), (SELECT count(*) `+userSessions+`)`, username).Scan(&member, &sessions)
	if err != nil {
		return err
	}
	if !member {
		if _, err := tx.Exec(ctx, "GRANT "+ident+" TO CURRENT_USER"); err != nil {
			return err
		}
	}
	if sessions > 0 {
		e.endSessions(ctx, cfg, tx, username)
	}
	for _, s := range []string{
		"REASSIGN OWNED BY " + ident + " TO CURRENT_USER",
		"DROP OWNED BY " + ident,
		"DROP ROLE IF EXISTS " + ident,
	} {
		if _, err := tx.Exec(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// endSessions terminates username's open sessions and waits (up to
// sessionEndWait) until they are gone, so that revoking a credential also
// cuts the connections made with it. It runs in a savepoint of tx: without
// the privilege to signal the sessions (superuser, membership in the role,
// or pg_signal_backend) it does nothing, and the role is dropped all the
// same; its sessions then last until they close.
func (e *Engine) endSessions(ctx context.Context, cfg *Config, tx pgx.Tx, username string) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return
	}
	// pg_terminate_backend(pid, timeout) waits for the backend to exit
	// (PostgreSQL 14 and later); before 14 only the one-argument form
	// exists, which signals and returns.
	_, err = sp.Exec(ctx, `SELECT pg_terminate_backend(pid, $2) `+userSessions, username, sessionEndWait.Milliseconds())
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "42883" {
		_ = sp.Rollback(ctx)
		if sp, err = tx.Begin(ctx); err != nil {
			return
		}
		_, err = sp.Exec(ctx, `SELECT pg_terminate_backend(pid) `+userSessions, username)
	}
	if err != nil {
		e.log.Debug("could not end a revoked user's sessions", "connection", cfg.Name, "user", username, "error", redact(err, cfg.Password))
		_ = sp.Rollback(ctx)
		return
	}
	_ = sp.Commit(ctx)
}

// userSessions selects the sessions of the user $1 but the caller's.
const userSessions = `FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`

// sessionEndWait bounds how long a revocation waits for the revoked
// user's sessions to exit.
const sessionEndWait = 2 * time.Second

// quoteIdent quotes a name for SQL. Names reaching it passed
// CheckUsername, which allows no quote; doubling them anyway costs
// nothing.
func quoteIdent(s string) string {
	return pgx.Identifier{s}.Sanitize()
}

// RotateRoot sets the management user's password to newPassword with
// cfg's RootRotationStatements (empty: DefaultRootRotationStatements),
// checks that a new connection logs in with it, and makes the engine's
// pool for cfg.Name use it. The caller generates newPassword (with the
// connection's password policy) and stores it. Until the caller passes
// the Config with the new password, calls with the old one build a pool
// that cannot log in and fail with ErrLoginRefused: the caller holds its
// other calls on this connection during a rotation.
//
// Crash safety: the password changes in PostgreSQL before the caller can
// store it, so the caller records newPassword as pending (replicated)
// before calling RotateRoot, and makes it the connection's password once
// RotateRoot returns nil. Whatever happens in between — an error, a
// crash, a lost leadership — exactly one of the old and the pending
// password works; whoever takes over finds which with Verify on a copy of
// the Config holding each, keeps that one and drops the other (or runs
// RotateRoot again: setting a password twice is harmless). On an error
// from RotateRoot the same holds: the error does not say which one the
// database has.
func (e *Engine) RotateRoot(ctx context.Context, cfg *Config, newPassword string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Username == "" || cfg.Password == "" {
		return fmt.Errorf("%w %q: rotate-root needs username and password, with {{username}} and {{password}} in connection_url", ErrInvalidConfig, cfg.Name)
	}
	stmts := cfg.RootRotationStatements
	if len(stmts) == 0 {
		stmts = DefaultRootRotationStatements
	}
	rendered, err := renderAll(stmts, Values{Name: cfg.Username, Password: newPassword})
	if err != nil {
		return err
	}
	op := txOp{what: "root rotation statement", hint: "fix root_rotation_statements or the management user's privileges", secrets: []string{newPassword}}
	if err := e.inTx(ctx, cfg, op, func(tx pgx.Tx) error { return execAll(ctx, tx, rendered) }); err != nil {
		return err
	}
	next := *cfg
	next.Password = newPassword
	pc, err := next.poolConfig()
	if err != nil {
		return err
	}
	if err := checkLogin(ctx, cfg.Name, pc.ConnConfig.Copy(), cfg.Password, newPassword); err != nil {
		kind, cause := ErrStatement, err
		var engErr *Error
		if errors.As(err, &engErr) {
			kind, cause = engErr.Kind, engErr.Err
		}
		return &Error{Connection: cfg.Name, Op: "the new root password was set but a login with it failed", Kind: kind, Err: cause,
			Hint: "keep both the old and the new password until one of them logs in"}
	}
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return &Error{Connection: cfg.Name, Kind: ErrInvalidConfig, Err: redact(err, cfg.Password, newPassword)}
	}
	e.replacePool(&next, p)
	e.log.Info("root credentials rotated", "connection", cfg.Name)
	return nil
}
