// Package pgtest runs a real PostgreSQL server for a test. It is for tests
// only (it fails tests through testing.TB); no production code may import
// it.
//
//	pg := pgtest.Start(t)           // initdb, start, wait until it answers
//	pg.Exec(t, `CREATE TABLE t (x int)`)
//	pg.Stop(t)                      // fast shutdown; data dir and port kept
//	pg.Start(t)                     // the same server back
//	ok := pg.RoleExists(t, "v-app-…")
//
// Each Server is its own cluster: initdb in a fresh directory under the
// temporary directory (not t.TempDir(): a unix socket's path must fit in
// 107 bytes, and an unprivileged user must be able to reach it), listening
// on 127.0.0.1 on a port below the kernel's ephemeral range and on a unix
// socket in that directory. It is tuned for tests: fsync, full-page writes
// and synchronous commit off, 300 connections. TCP logins use scram-sha-256
// with a superuser whose password the harness generates; the unix socket
// trusts local logins.
//
// PostgreSQL refuses to run as root. When the test runs as root, initdb and
// postgres run as an unprivileged account through exec.Cmd's credentials:
// the account named by COFFER_PGTEST_USER, else the "postgres" account that
// Debian's package creates, else "nobody". The directory is chowned to it.
// Run as any other user, they run as that user.
//
// The binaries are found on PATH (initdb), else in
// /usr/lib/postgresql/*/bin (Debian's layout, the highest version). Without
// them the test is skipped with a line saying to run `make test-deps`,
// except with CI=true, where it fails: CI installs PostgreSQL.
//
// Readiness is a successful login over TCP, polled with a deadline. The
// server is stopped (SIGINT: fast shutdown, then SIGKILL after a deadline)
// and its directory removed by t.Cleanup. A server left running by a test
// process that died (its directory's owner.pid names a process that is
// gone) is killed and its directory removed by the next Start.
package pgtest
