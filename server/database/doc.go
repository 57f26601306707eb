// Package database is coffer's PostgreSQL secrets engine: connections to
// PostgreSQL (one pgxpool each), the statements that create, renew and
// revoke dynamic users and set static users' passwords, root credential
// rotation, and the generation of usernames and passwords.
//
// It is a library the server calls, and knows nothing of Raft, leases or
// storage: every call takes the connection's Config as the server read it
// from replicated state, and the Engine only keeps a pool per connection
// name, rebuilt when the Config it was built from changes. So any node can
// run any call, and a new leader needs nothing loaded first. It imports
// nothing of coffer.
//
// # Statements
//
// Statements are Vault's templates ({{name}}, {{username}}, {{password}},
// {{expiration}}). Each entry runs whole as one simple query inside the
// operation's one transaction, so a failing statement leaves nothing
// behind, and ';' inside a dollar-quoted body needs no care (see
// Statements). PostgreSQL takes no bind parameters in CREATE ROLE, ALTER
// ROLE or GRANT, so values are put into the text: Render refuses any value
// outside its safe character set or that could end the quoted construct it
// stands in, then checks by lexing the result that no value changed the
// statement's structure. Queries coffer writes itself (pg_roles lookups,
// ending sessions) use bind parameters.
//
// # Errors
//
// Every error is one line that names the connection, carries PostgreSQL's
// message with its SQLSTATE when PostgreSQL refused something, says what to
// do, and never holds a password (each password the call knew is replaced
// by [redacted], in the message and in the *pgconn.PgError it carries).
// The sentinels (ErrUnreachable, ErrStatement, ErrLoginRefused, …) let the
// server choose a status with errors.Is.
//
// # Idempotency and crashes
//
// RevokeUser of a user that does not exist is success, so the server can
// revoke an intent whose user may never have been created. SetPassword and
// RotateRoot can be run again with the same password. RotateRoot's doc
// says what the caller stores before and after, so that a crash in between
// never loses the management password.
package database
