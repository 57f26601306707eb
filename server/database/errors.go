package database

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors of the engine. Every error it returns wraps one of them, so the
// server maps them to a status with errors.Is; a failure that PostgreSQL
// reported also carries its *pgconn.PgError (errors.As) with SQLSTATE.
var (
	// ErrInvalidConfig: a connection's configuration is refused (the
	// message says which field and why).
	ErrInvalidConfig = errors.New("invalid database connection configuration")
	// ErrInvalidStatements: a statement template cannot be used as written.
	ErrInvalidStatements = errors.New("invalid database statements")
	// ErrUnsafeValue: a username, password or expiration could not be put
	// into a statement without the risk of it becoming SQL.
	ErrUnsafeValue = errors.New("value not safe to put in a statement")
	// ErrUnreachable: no connection to PostgreSQL could be made or kept.
	ErrUnreachable = errors.New("database is unreachable")
	// ErrLoginRefused: PostgreSQL refused the connection's credentials.
	ErrLoginRefused = errors.New("database refused the login")
	// ErrStatement: PostgreSQL refused a statement.
	ErrStatement = errors.New("database statement failed")
	// ErrUserNotFound: the user to renew or to set a password for does not
	// exist.
	ErrUserNotFound = errors.New("database user does not exist")
	// ErrInvalidPolicy: a password policy cannot make passwords.
	ErrInvalidPolicy = errors.New("invalid password policy")
)

// Error is a failure on a database connection. Its message is one line
// that names the connection, says what failed and what to do, and never
// holds a password.
type Error struct {
	// Connection is the connection's name.
	Connection string
	// Op says what failed, e.g. "creation statement failed".
	Op string
	// Kind is one of the package's sentinel errors.
	Kind error
	// Err is the cause, with every password taken out of its text.
	Err error
	// Hint says what to do.
	Hint string
	// MaybeCommitted is set when a transaction's COMMIT was sent and no
	// answer came back (the connection was lost, or the request's deadline
	// passed): what it did may be in the database (see MayHaveCommitted).
	MaybeCommitted bool
}

// MayHaveCommitted reports whether err leaves a transaction's outcome
// unknown: its COMMIT was sent but PostgreSQL's answer never came, so
// what it did may have been committed (a cancel after a commit that waits
// for a synchronous standby leaves it committed locally). Any other error
// of the engine means nothing was committed.
func MayHaveCommitted(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.MaybeCommitted
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "database connection %q", e.Connection)
	switch {
	case errors.Is(e.Kind, ErrUnreachable):
		b.WriteString(" is unreachable")
		if e.Op != "" {
			b.WriteString(" (" + e.Op + ")")
		}
	case e.Op != "":
		b.WriteString(": " + e.Op)
	}
	if e.Err != nil {
		b.WriteString(": " + describe(e.Err))
	}
	if e.Hint != "" {
		b.WriteString("; " + e.Hint)
	}
	return oneLine(b.String())
}

// Unwrap returns the sentinel and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// describe is err's text with PostgreSQL's detail and hint, which
// PgError.Error leaves out.
func describe(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		s := pgErr.Severity + ": " + pgErr.Message + " (SQLSTATE " + pgErr.Code + ")"
		if pgErr.Detail != "" {
			s += ": " + pgErr.Detail
		}
		if pgErr.Hint != "" {
			s += " (hint: " + pgErr.Hint + ")"
		}
		return s
	}
	return err.Error()
}

func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	parts := strings.Split(s, "\n")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return strings.Join(parts, " ")
}

// redacted is the text put where a password stood.
const redacted = "[redacted]"

// redact returns err with every secret (of at least minSecretLen bytes)
// taken out of its text. A *pgconn.PgError keeps its type (a copy with
// its fields cleaned); any other error whose text held a secret becomes a
// plain error with the cleaned text.
func redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	var live []string
	for _, s := range secrets {
		if len(s) >= minSecretLen {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return err
	}
	clean := func(s string) string {
		for _, sec := range live {
			s = strings.ReplaceAll(s, sec, redacted)
		}
		return s
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		cp := *pgErr
		cp.Message, cp.Detail, cp.Hint = clean(cp.Message), clean(cp.Detail), clean(cp.Hint)
		cp.Where, cp.InternalQuery = clean(cp.Where), clean(cp.InternalQuery)
		err = &cp
	}
	text := err.Error()
	if c := clean(text); c != text {
		return errors.New(c)
	}
	return err
}

// minSecretLen is the shortest password redact looks for: a shorter one
// would be found in ordinary words of the message.
const minSecretLen = 3

// isConnectionFailure reports whether err says the connection to
// PostgreSQL failed, as opposed to PostgreSQL refusing a statement.
func isConnectionFailure(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // shutdown, crash, cannot connect now
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || pgconn.SafeToRetry(err) ||
		strings.Contains(err.Error(), "conn closed")
}

// isConflict reports whether err is PostgreSQL refusing a transaction
// because a concurrent one changed the same rows: a serialization failure,
// a deadlock, or the catalog's "tuple concurrently updated", which
// concurrent GRANTs on one table (every user of a role granted SELECT on
// it) get. The transaction was rolled back whole; running it again is
// safe.
func isConflict(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001", "40P01":
		return true
	case "XX000":
		return strings.HasPrefix(pgErr.Message, "tuple concurrently ")
	}
	return false
}

// isLoginRefused reports whether PostgreSQL refused the credentials or
// the database (invalid authorization, invalid password, no such
// database).
func isLoginRefused(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000"
}

// connectError turns a failure to get a working connection into an
// *Error: refused credentials, or unreachable.
func connectError(name string, err error, secrets ...string) error {
	if isLoginRefused(err) {
		var pgErr *pgconn.PgError
		errors.As(err, &pgErr)
		return &Error{Connection: name, Op: "PostgreSQL refused the login", Kind: ErrLoginRefused,
			Err: redact(pgErr, secrets...), Hint: "check the connection's username, password and database"}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Connection: name, Kind: ErrUnreachable, Err: redact(err, secrets...),
			Hint: "no connection was made before the request's deadline: check that PostgreSQL is running and the connection URL's host and port"}
	}
	return &Error{Connection: name, Kind: ErrUnreachable, Err: redact(err, secrets...),
		Hint: "check that PostgreSQL is running and the connection URL's host and port"}
}
