package server

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgproto3"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/internal/pgtest"
	"coffer/server/database"
	"coffer/server/lease"
)

// Attacks on the database engine and its leases, performed against a real
// PostgreSQL: each test does what an attacker would and then shows that
// nothing changed in the database.

// mgrUser and mgrPassword are the management user of the fixture's
// connection "pg" (a superuser other than postgres, so that both can be
// named as targets).
const (
	mgrUser     = "coffer_mgr"
	mgrPassword = "Mgr-password-0123456789"
)

// dbServerFixture is a databaseServer over a real state machine, a real
// barrier, a lease table with its expiry worker running, and a real
// PostgreSQL with the connection "pg" configured.
type dbServerFixture struct {
	*kvFixture
	pg     *pgtest.Server
	db     *databaseServer
	leases *lease.Table
	worker *lease.Worker
	opens  *countingSealer
	caller context.Context
}

// countingSealer is the barrier, counting the opens of each key.
type countingSealer struct {
	lease.Sealer
	mu    sync.Mutex
	opens map[string]int
}

func (c *countingSealer) OpenEntry(key string, ct []byte) ([]byte, error) {
	c.mu.Lock()
	c.opens[key]++
	c.mu.Unlock()
	return c.Sealer.OpenEntry(key, ct)
}

func (c *countingSealer) opened(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens[key]
}

func newDBServerFixture(t *testing.T, window time.Duration) *dbServerFixture {
	t.Helper()
	x := newKVFixture(t)
	pg := pgtest.Start(t)
	pg.Exec(t, `CREATE ROLE `+mgrUser+` LOGIN SUPERUSER PASSWORD '`+mgrPassword+`';
CREATE ROLE app_owner LOGIN PASSWORD 'Owner-password-1';
CREATE TABLE accounts (id int PRIMARY KEY, owner text);`)
	opens := &countingSealer{Sealer: x.keys, opens: map[string]int{}}
	props := x.kv.props
	tbl, err := lease.New(x.f, leaseProposer{props}, opens, lease.Options{
		Logger:  hclog.NewNullLogger(),
		Limits:  lease.Limits{IntentWindow: window},
		Backoff: lease.Backoff{Base: 100 * time.Millisecond, Max: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	db := &databaseServer{store: sealedJSON{state: x.f, keys: x.keys}, props: props, locks: &keyLocks{}, conns: &connLocks{},
		engine: database.New(nil), leases: tbl, logger: hclog.NewNullLogger(), now: time.Now}
	t.Cleanup(db.engine.CloseAll)
	tbl.RegisterRevoker(dbLeaseKind, lease.RevokerFunc(db.revokeLease))
	w := lease.NewWorker(tbl, lease.WorkerOptions{})
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(runCtx)
	}()
	t.Cleanup(func() { stop(); <-done })
	caller := context.WithValue(context.Background(), tokenCtxKey{}, &tokenRecord{DisplayName: "attacker", Policies: []string{rootPolicy}})
	f := &dbServerFixture{kvFixture: x, pg: pg, db: db, leases: tbl, worker: w, opens: opens, caller: caller}
	if _, err := db.WriteConfig(caller, &pb.DatabaseConfig{Name: "pg", ConnectionUrl: pg.URLTemplate(), Username: mgrUser,
		Password: mgrPassword, AllowedRoles: []string{"*"}}); err != nil {
		t.Fatalf("config write: %v", err)
	}
	return f
}

// role writes a dynamic role with the given creation statements.
func (f *dbServerFixture) role(t *testing.T, name string, ttl time.Duration, creation ...string) {
	t.Helper()
	if len(creation) == 0 {
		creation = []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}
	}
	if _, err := f.db.WriteRole(f.caller, &pb.DatabaseRole{Name: name, DbName: "pg", CreationStatements: creation,
		DefaultTtlSeconds: int64(ttl / time.Second), MaxTtlSeconds: int64(time.Hour / time.Second)}); err != nil {
		t.Fatalf("role write: %v", err)
	}
}

// liveLeaseUsers returns the users of every lease in the table, sorted.
func (f *dbServerFixture) liveLeaseUsers(t *testing.T) []string {
	t.Helper()
	recs, _, err := f.leases.List("database/creds/", "", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, r := range recs {
		users = append(users, r.Subject)
	}
	slices.Sort(users)
	return users
}

// waitFor polls cond until it holds, failing t after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
}

// TestForgedLeasesDropNoDatabaseUser: a peer with a node certificate
// appends OP_LEASE_PUT entries due at once whose records name the
// management user, the superuser postgres, an ordinary user and a live
// lease's user. A plaintext record is refused by the state machine; a
// record copied from a real lease, one sealed for another lease's key and
// random bytes are stored but do not open at their id, so the expiry
// worker — which does look at them — drops nobody. Every user is still
// there and still logs in.
func TestForgedLeasesDropNoDatabaseUser(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "app", time.Hour)
	f.role(t, "short", time.Second)
	real, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"})
	if err != nil {
		t.Fatalf("creds: %v", err)
	}
	realEntry, err := f.f.LeaseGet(real.GetLeaseId())
	if err != nil {
		t.Fatal(err)
	}

	const forgedID = "database/creds/app/forged"
	record := func(id, username string) []byte {
		data, _ := json.Marshal(dbLeaseData{DB: "pg", Role: "app", Username: username})
		b, _ := json.Marshal(lease.Record{ID: id, Path: "database/creds/app", Group: "database/roles/app", Kind: dbLeaseKind,
			State: lease.StateActive, Data: data, Subject: username})
		return b
	}
	forgeLease := func(id string, rec []byte) fsm.Result {
		return forge(t, f.kvFixture, &fsmpb.Command{Op: fsmpb.Op_OP_LEASE_PUT, LeaseWrites: []*fsmpb.LeaseWrite{
			{Id: id, Group: "database/roles/app", DueUnixNano: 0, Record: rec}}})
	}
	targets := []string{mgrUser, "postgres", "app_owner", real.GetUsername()}
	var stored []string
	for i, target := range targets {
		id := forgedID + string(rune('a'+i))
		if res := forgeLease(id+"-plain", record(id+"-plain", target)); !errors.Is(res.Err, fsm.ErrInvalidCommand) {
			t.Errorf("a plaintext lease record naming %q was stored (%v)", target, res.Err)
		}
		// Sealed for another lease's key, then random bytes laid out as
		// sealed, then a real lease's record copied.
		other := mustSealEntry(t, f.keys, "lease/database/creds/app/other", record("database/creds/app/other", target))
		random := append([]byte{0x80, 0, 0, 1}, make([]byte, 80)...)
		for j, rec := range [][]byte{other, random, realEntry.Record} {
			fid := id + string(rune('0'+j))
			if res := forgeLease(fid, rec); res.Err != nil {
				t.Fatalf("the state machine refused a sealed-looking record it cannot check: %v", res.Err)
			}
			stored = append(stored, fid)
		}
	}

	// The worker looks at every forged lease (it opens each at its key),
	// and a real lease due after them is revoked: it has been through
	// them.
	short, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "short"})
	if err != nil {
		t.Fatal(err)
	}
	f.worker.Wake()
	waitFor(t, 10*time.Second, "the worker to look at every forged lease and revoke the due real one", func() bool {
		for _, id := range stored {
			if f.opens.opened("lease/"+id) == 0 {
				return false
			}
		}
		_, err := f.f.LeaseGet(short.GetLeaseId())
		return errors.Is(err, fsm.ErrNotFound) && !f.pg.RoleExists(t, short.GetUsername())
	})

	for _, user := range targets {
		if !f.pg.RoleExists(t, user) {
			t.Errorf("the user %q was dropped by a forged lease", user)
		}
	}
	for user, pw := range map[string]string{mgrUser: mgrPassword, "app_owner": "Owner-password-1", real.GetUsername(): real.GetPassword()} {
		if err := f.pg.CanLogin(user, pw); err != nil {
			t.Errorf("%q no longer logs in after the forged leases: %v", user, err)
		}
	}
	// The forged leases are still there, shown as failing (the record
	// does not open), and the real one is intact.
	failed, _, err := f.leases.List("database/creds/app/forged", "", 0, true)
	if err != nil || len(failed) != len(stored) {
		t.Fatalf("forged leases listed as failed: %d of %d (%v)", len(failed), len(stored), err)
	}
	if rec, err := f.leases.Get(real.GetLeaseId()); err != nil || rec.State != lease.StateActive || rec.Subject != real.GetUsername() {
		t.Fatalf("the real lease after the forgeries: %+v, %v", rec, err)
	}
}

// TestCredsOfUnknownOutcomeLeaveNoOrphan: the creation's COMMIT reaches
// PostgreSQL but its answer does not come back before the creation's
// deadline: the transaction waits for a synchronous standby that is down,
// and the cancel the client sends when it gives up leaves it committed
// locally (PostgreSQL warns "The transaction has already committed
// locally"). The user exists though the call failed, so the intent must
// not be abandoned: the worker revokes it when it falls due, and no user
// is left that no lease names.
func TestCredsOfUnknownOutcomeLeaveNoOrphan(t *testing.T) {
	const window = 4 * time.Second // the creation's deadline: half of it
	f := newDBServerFixture(t, window)
	// Only the creation asks for a synchronous commit, so the revocation
	// does not wait for the missing standby.
	f.pg.Exec(t, `ALTER SYSTEM SET synchronous_standby_names = 'standby_that_is_down'`)
	f.pg.Exec(t, `SELECT pg_reload_conf()`)
	waitFor(t, 5*time.Second, "the configuration reloaded", func() bool {
		var v string
		err := f.pg.Pool(t).QueryRow(context.Background(), `SELECT current_setting('synchronous_standby_names')`).Scan(&v)
		return err == nil && v == "standby_that_is_down"
	})
	f.role(t, "sync", time.Hour,
		`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; SET LOCAL synchronous_commit = on;`)

	_, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "sync"})
	if err == nil {
		t.Fatal("creds answered though the commit did not come back in time")
	}
	t.Logf("creds: %v", err)
	// The user exists: the commit landed though the caller gave up on it.
	waitFor(t, 5*time.Second, "the cancelled commit to show", func() bool { return len(f.pg.Roles(t, "v-")) == 1 })
	waitFor(t, 3*window, "every user gone or named by a lease", func() bool {
		roles := f.pg.Roles(t, "v-")
		return len(roles) == 0 || slices.Equal(roles, f.liveLeaseUsers(t))
	})
	waitFor(t, 3*window, "no lease left", func() bool { return len(f.liveLeaseUsers(t)) == 0 })
	if roles := f.pg.Roles(t, "v-"); len(roles) != 0 {
		t.Fatalf("users no lease names (orphans): %v", roles)
	}
}

// hasSecret reports whether s holds any of secrets.
func hasSecret(s string, secrets ...string) bool {
	for _, sec := range secrets {
		if sec != "" && strings.Contains(s, sec) {
			return true
		}
	}
	return false
}

// TestStaticRoleCannotTakeTheManagementUser: a static role on the
// connection's own management user would rotate the password coffer logs
// in with and break every call on the connection (a Vault user's
// report). It is refused when the role is written, and a rotation is
// refused when the connection's user became the static role's since;
// the management password still logs in and creds still work.
func TestStaticRoleCannotTakeTheManagementUser(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "app", time.Hour)
	_, err := f.db.WriteStaticRole(f.caller, &pb.DatabaseStaticRole{Name: "mgr", DbName: "pg", Username: mgrUser, RotationPeriodSeconds: 3600})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "management user") {
		t.Fatalf("a static role on the management user: %v, want a refusal naming the management user", err)
	}
	if err := f.pg.CanLogin(mgrUser, mgrPassword); err != nil {
		t.Fatalf("the management password after the refused static role: %v", err)
	}

	// The other order: a static role first, then the connection is
	// rewritten to log in as that very user.
	if _, err := f.db.WriteStaticRole(f.caller, &pb.DatabaseStaticRole{Name: "owner", DbName: "pg", Username: "app_owner", RotationPeriodSeconds: 3600}); err != nil {
		t.Fatal(err)
	}
	sc, err := f.db.StaticCreds(f.caller, &pb.DatabaseNameRequest{Name: "owner"})
	if err != nil {
		t.Fatal(err)
	}
	f.pg.Exec(t, `ALTER ROLE app_owner SUPERUSER`)
	if _, err := f.db.WriteConfig(f.caller, &pb.DatabaseConfig{Name: "pg", ConnectionUrl: f.pg.URLTemplate(), Username: "app_owner",
		Password: sc.GetPassword(), AllowedRoles: []string{"*"}}); err != nil {
		t.Fatalf("config write as app_owner: %v", err)
	}
	if _, err := f.db.RotateRole(f.caller, &pb.DatabaseNameRequest{Name: "owner"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("rotating the static role that is now the management user: %v, want a refusal", err)
	}
	if err := f.pg.CanLogin("app_owner", sc.GetPassword()); err != nil {
		t.Fatalf("the management password after the refused rotation: %v", err)
	}
	if _, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"}); err != nil {
		t.Fatalf("creds after the refused rotation: %v", err)
	}
}

// TestRoleStatementsCheckedAtWrite: a dynamic role whose statements can
// never render (an unquoted {{name}}, which the generated names' '-'
// makes a minus, or a string left open) is refused when it is written.
// Accepted, it would issue credentials whose revocation fails at every
// attempt: the statements are frozen into each lease, so fixing the role
// later would not save them.
func TestRoleStatementsCheckedAtWrite(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	good := `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`
	for name, r := range map[string]*pb.DatabaseRole{
		"unquoted name in revocation": {RevocationStatements: []string{`DROP ROLE {{name}}`}},
		"open string in creation":     {CreationStatements: []string{`CREATE ROLE "{{name}}" PASSWORD '{{password}}`}},
		"unquoted password":           {CreationStatements: []string{`CREATE ROLE "{{name}}" PASSWORD {{password}}`}},
		"open name in renewal":        {RenewStatements: []string{`ALTER ROLE "{{name}} VALID UNTIL '{{expiration}}'`}},
	} {
		r.Name, r.DbName = "bad", "pg"
		if len(r.CreationStatements) == 0 {
			r.CreationStatements = []string{good}
		}
		if _, err := f.db.WriteRole(f.caller, r); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: written (%v), want a refusal", name, err)
		}
		if _, err := f.db.ReadRole(f.caller, &pb.DatabaseNameRequest{Name: "bad"}); !errors.Is(err, fsm.ErrNotFound) {
			t.Fatalf("%s: the refused role was stored (%v)", name, err)
		}
	}
	if roles := f.pg.Roles(t, "v-"); len(roles) != 0 {
		t.Fatalf("users made: %v", roles)
	}
}

// TestHugeDurationsAreRefused: a role whose TTL reaches past the year
// 2262 would put the lease's due time beyond what Unix nanoseconds hold
// (it wrapped around to the past, and the lease fell due at once); a
// renewal increment past 100 years wrapped the same way. Over gRPC, as
// over HTTP, a duration past 100 years is refused, nothing is written and
// no user is made.
func TestHugeDurationsAreRefused(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	const years250 = 250 * 365 * 24 * 3600
	good := []string{`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}
	for name, r := range map[string]*pb.DatabaseRole{
		"default_ttl": {DefaultTtlSeconds: years250, MaxTtlSeconds: years250},
		"max_ttl":     {MaxTtlSeconds: years250},
	} {
		r.Name, r.DbName, r.CreationStatements = "forever", "pg", good
		if _, err := f.db.WriteRole(f.caller, r); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s of 250 years: written (%v), want a refusal", name, err)
		}
	}
	if _, err := f.db.ReadRole(f.caller, &pb.DatabaseNameRequest{Name: "forever"}); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("a refused role was stored (%v)", err)
	}
	if _, err := f.db.WriteStaticRole(f.caller, &pb.DatabaseStaticRole{Name: "st", DbName: "pg", Username: "app_owner", RotationPeriodSeconds: years250}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a rotation period of 250 years: %v, want a refusal", err)
	}
	if err := f.pg.CanLogin("app_owner", "Owner-password-1"); err != nil {
		t.Errorf("a refused static role rotated its user: %v", err)
	}
	if _, err := f.db.WriteConfig(f.caller, &pb.DatabaseConfig{Name: "pg2", ConnectionUrl: f.pg.URLTemplate(), Username: mgrUser,
		Password: mgrPassword, AllowedRoles: []string{"*"}, MaxConnectionLifetimeSeconds: years250}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a connection lifetime of 250 years: %v, want a refusal", err)
	}

	// A real lease and a renewal by 250 years: refused, the lease as it was.
	if _, err := f.db.WriteRole(f.caller, &pb.DatabaseRole{Name: "app", DbName: "pg", CreationStatements: good, DefaultTtlSeconds: 3600,
		MaxTtlSeconds: 100 * 365 * 24 * 3600}); err != nil {
		t.Fatal(err)
	}
	cr, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	before, err := f.leases.Get(cr.GetLeaseId())
	if err != nil {
		t.Fatal(err)
	}
	ls := &leaseServer{table: f.leases, renew: map[string]lease.RenewHook{dbLeaseKind: f.db.renewLease}, now: time.Now}
	if _, err := ls.Renew(f.caller, &pb.LeaseRenewRequest{LeaseId: cr.GetLeaseId(), IncrementSeconds: years250 * 2}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a renewal by 500 years: %v, want a refusal", err)
	}
	after, err := f.leases.Get(cr.GetLeaseId())
	if err != nil || after.Index != before.Index || !after.Due.Equal(before.Due) {
		t.Fatalf("the lease changed after a refused renewal: %+v → %+v (%v)", before, after, err)
	}
	if !f.pg.RoleExists(t, cr.GetUsername()) {
		t.Fatal("the lease's user is gone")
	}
}

// passwordCatcher is a server that speaks PostgreSQL's protocol far enough
// to ask a client for its password in clear text, as a hostile server can:
// it records every password it is sent.
type passwordCatcher struct {
	ln   net.Listener
	mu   sync.Mutex
	got  []string
	done chan struct{}
}

func newPasswordCatcher(t *testing.T) *passwordCatcher {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &passwordCatcher{ln: ln, done: make(chan struct{})}
	var conns sync.WaitGroup
	go func() {
		defer close(c.done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				conns.Wait()
				return
			}
			conns.Go(func() { c.serve(conn) })
		}
	}()
	t.Cleanup(func() { ln.Close(); <-c.done })
	return c
}

func (c *passwordCatcher) serve(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	be := pgproto3.NewBackend(conn, conn)
	for {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		if _, ok := msg.(*pgproto3.SSLRequest); ok {
			if _, err := conn.Write([]byte("N")); err != nil {
				return
			}
			continue
		}
		break
	}
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return
	}
	msg, err := be.Receive()
	if err != nil {
		return
	}
	if pw, ok := msg.(*pgproto3.PasswordMessage); ok {
		c.mu.Lock()
		c.got = append(c.got, pw.Password)
		c.mu.Unlock()
	}
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
	_ = be.Flush()
}

func (c *passwordCatcher) passwords() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

func (c *passwordCatcher) urlTemplate() string {
	return "postgresql://{{username}}:{{password}}@" + c.ln.Addr().String() + "/postgres?sslmode=disable"
}

// TestConfigWriteCannotSendThePasswordElsewhere: after rotate-root only
// coffer knows the management password. A caller who may write the
// connection but does not know it points connection_url at a server of
// its own and leaves the password out, counting on coffer to keep the
// stored one (as it does for a write that changes nothing else) and to
// log in there with it; that server asks for the password in clear text.
// The write is refused, with and without the login check: a stored
// password goes only where it was given for. Nothing reaches the hostile
// server, the connection is as it was and creds still work.
func TestConfigWriteCannotSendThePasswordElsewhere(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "app", time.Hour)
	if _, err := f.db.RotateRoot(f.caller, &pb.DatabaseNameRequest{Name: "pg"}); err != nil {
		t.Fatalf("rotate-root: %v", err)
	}
	var stored dbConfigRecord
	if _, err := f.db.store.get(sysDBConfigPref+"pg", &stored); err != nil {
		t.Fatal(err)
	}
	evil := newPasswordCatcher(t)
	no := false
	for name, req := range map[string]*pb.DatabaseConfig{
		"another host":                   {ConnectionUrl: evil.urlTemplate(), Username: mgrUser},
		"another host, no login check":   {ConnectionUrl: evil.urlTemplate(), Username: mgrUser, VerifyConnection: &no},
		"the same host, another user":    {ConnectionUrl: f.pg.URLTemplate(), Username: "app_owner", VerifyConnection: &no},
		"the same host, other parameter": {ConnectionUrl: f.pg.URLTemplate() + "&host=" + evil.ln.Addr().String(), Username: mgrUser, VerifyConnection: &no},
	} {
		req.Name, req.AllowedRoles = "pg", []string{"*"}
		if _, err := f.db.WriteConfig(f.caller, req); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "password") {
			t.Errorf("%s without the password: %v, want a refusal asking for the password", name, err)
		}
	}
	if got := evil.passwords(); len(got) != 0 {
		t.Fatalf("the hostile server was sent %d password(s); the stored one among them: %v", len(got), slices.Contains(got, stored.Password))
	}
	var after dbConfigRecord
	if _, err := f.db.store.get(sysDBConfigPref+"pg", &after); err != nil {
		t.Fatal(err)
	}
	if after.ConnectionURL != stored.ConnectionURL || after.Username != stored.Username || after.Password != stored.Password {
		t.Fatalf("the connection changed: %s as %s", after.ConnectionURL, after.Username)
	}
	if _, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"}); err != nil {
		t.Fatalf("creds after the refused writes: %v", err)
	}
	// A write that keeps the destination keeps the stored password, as in
	// Vault: allowed_roles changed, the password left out.
	if _, err := f.db.WriteConfig(f.caller, &pb.DatabaseConfig{Name: "pg", ConnectionUrl: f.pg.URLTemplate(), Username: mgrUser, AllowedRoles: []string{"app"}}); err != nil {
		t.Fatalf("a write that keeps the destination: %v", err)
	}
	if _, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"}); err != nil {
		t.Fatalf("creds after a write that kept the password: %v", err)
	}
}

// TestCallsDuringRotateRootAndConfigWrites: creds are issued without a
// pause while the connection is written again and its root password
// rotated, over and over. No call fails: a call holds the pool it uses
// (none finds it closed under it), and calls wait for a rotate-root, so
// none logs in with the password the rotation is replacing.
func TestCallsDuringRotateRootAndConfigWrites(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "app", time.Hour)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var issued, failed atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"}); err != nil {
					if failed.Add(1) <= 5 {
						t.Errorf("creds during rotations: %v", err)
					}
				} else {
					issued.Add(1)
				}
			}
		})
	}
	for i := range 30 {
		var err error
		if i%2 == 0 {
			_, err = f.db.RotateRoot(f.caller, &pb.DatabaseNameRequest{Name: "pg"})
		} else {
			_, err = f.db.WriteConfig(f.caller, &pb.DatabaseConfig{Name: "pg", ConnectionUrl: f.pg.URLTemplate(), Username: mgrUser, AllowedRoles: []string{"*"}})
		}
		if err != nil {
			t.Fatalf("rotation or write %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d creds issued during 15 rotations and 15 writes, %d failed", issued.Load(), failed.Load())
	if issued.Load() == 0 {
		t.Fatal("no creds were issued")
	}
	// Every user issued belongs to a lease.
	users := f.liveLeaseUsers(t)
	if roles := f.pg.Roles(t, "v-"); !slices.Equal(users, roles) {
		t.Fatalf("%d leases, %d users", len(users), len(roles))
	}
}

// TestLeasesOfADeletedConnection: a connection deleted while its leases
// live cannot revoke them: when they fall due they are listed as failed,
// with an error that names the connection and says what to do, and they
// are kept (their users still exist). Once the connection is written
// again, they are revoked and their users dropped.
func TestLeasesOfADeletedConnection(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "app", time.Second)
	cr, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.DeleteConfig(f.caller, &pb.DatabaseNameRequest{Name: "pg"}); err != nil {
		t.Fatal(err)
	}
	var last string
	waitFor(t, 10*time.Second, "the lease listed as failed", func() bool {
		recs, _, err := f.leases.List("database/creds/", "", 0, true)
		if err != nil || len(recs) != 1 {
			return false
		}
		last = recs[0].LastError
		return true
	})
	t.Logf("last error: %s", last)
	if !strings.Contains(last, `"pg"`) || !strings.Contains(last, "deleted") || !strings.Contains(last, "write it again") {
		t.Errorf("the failed lease's error %q does not say that connection \"pg\" was deleted and what to do", last)
	}
	if !f.pg.RoleExists(t, cr.GetUsername()) {
		t.Fatal("the user is gone though its connection is not there")
	}
	if _, err := f.db.WriteConfig(f.caller, &pb.DatabaseConfig{Name: "pg", ConnectionUrl: f.pg.URLTemplate(), Username: mgrUser,
		Password: mgrPassword, AllowedRoles: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	f.worker.Wake()
	waitFor(t, 15*time.Second, "the user dropped once the connection is back", func() bool {
		return !f.pg.RoleExists(t, cr.GetUsername()) && len(f.liveLeaseUsers(t)) == 0
	})
}

// TestRevokePrefixDuringCredsLeavesNoOrphan: revoke-prefix reaches an
// intent whose user is being created (its creation is slow). The worker
// drops the user at once — a no-op, the role does not exist yet — and
// removes the lease; then the creation commits and its Confirm finds the
// intent gone. The creator must undo its creation (ErrIntentLost says
// so): afterwards no user is left that no lease names.
func TestRevokePrefixDuringCredsLeavesNoOrphan(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "slow", time.Hour,
		`CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; SELECT pg_sleep(1.5);`)
	done := make(chan error, 1)
	go func() {
		_, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "slow"})
		done <- err
	}()
	waitFor(t, 5*time.Second, "the intent recorded", func() bool { return len(f.liveLeaseUsers(t)) == 1 })
	if n, err := f.leases.RevokePrefix(context.Background(), "database/creds/slow"); err != nil || n != 1 {
		t.Fatalf("revoke-prefix: %d, %v", n, err)
	}
	err := <-done
	if err == nil {
		t.Fatal("creds answered for a lease revoked while its user was created")
	}
	t.Logf("creds: %v", err)
	waitFor(t, 10*time.Second, "no lease left", func() bool { return len(f.liveLeaseUsers(t)) == 0 })
	if roles := f.pg.Roles(t, "v-"); len(roles) != 0 {
		t.Fatalf("users no lease names (orphans): %v", roles)
	}
}

// TestFailedStaticRoleWriteLeavesNothing: a static role for a user that
// does not exist (or whose rotation statements fail) is refused, as in
// Vault, and leaves nothing behind: no role that the rotation loop would
// retry for ever, and a role it was to replace is as it was — its user,
// its password and static-creds unchanged.
func TestFailedStaticRoleWriteLeavesNothing(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	if _, err := f.db.WriteStaticRole(f.caller, &pb.DatabaseStaticRole{Name: "ghost", DbName: "pg", Username: "no_such_user", RotationPeriodSeconds: 3600}); err == nil {
		t.Fatal("a static role for a user that does not exist was written")
	}
	if r, err := f.db.ReadStaticRole(f.caller, &pb.DatabaseNameRequest{Name: "ghost"}); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("the refused static role was stored: %v, %v", r, err)
	}
	if n, err := f.db.rotateDue(f.caller); n != 0 || err != nil {
		t.Fatalf("the rotation loop after a refused static role: %d rotated, %v", n, err)
	}

	if _, err := f.db.WriteStaticRole(f.caller, &pb.DatabaseStaticRole{Name: "owner", DbName: "pg", Username: "app_owner", RotationPeriodSeconds: 3600}); err != nil {
		t.Fatal(err)
	}
	before, err := f.db.StaticCreds(f.caller, &pb.DatabaseNameRequest{Name: "owner"})
	if err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]*pb.DatabaseStaticRole{
		"a user that does not exist": {Username: "no_such_user"},
		"a failing statement":        {Username: "postgres", RotationStatements: []string{`ALTER ROLE "{{name}}" WITH PASWORD '{{password}}'`}},
	} {
		req.Name, req.DbName, req.RotationPeriodSeconds = "owner", "pg", 3600
		if _, err := f.db.WriteStaticRole(f.caller, req); err == nil {
			t.Fatalf("%s: written", name)
		}
		after, err := f.db.StaticCreds(f.caller, &pb.DatabaseNameRequest{Name: "owner"})
		if err != nil || after.GetUsername() != "app_owner" || after.GetPassword() != before.GetPassword() {
			t.Fatalf("%s: the role it was to replace changed: %v, %v", name, after.GetUsername(), err)
		}
	}
	if err := f.pg.CanLogin("app_owner", before.GetPassword()); err != nil {
		t.Fatalf("the static password: %v", err)
	}
}

// TestCutRotateRootIsSettledAfterItsCall: a former leader recorded a new
// root password as pending and is still running its ALTER USER when the
// new leader's rotation loop looks (the old leader lost Raft, not the
// database; its statement waits on a lock). The new leader must not
// decide yet — the old password still works, but the pending one is about
// to — or it drops the pending password just before the database takes
// it, and the connection is lost for good. It settles once the former
// leader's call has timed out: then the pending password logs in and
// becomes the connection's.
func TestCutRotateRootIsSettledAfterItsCall(t *testing.T) {
	f := newDBServerFixture(t, 10*time.Second)
	f.role(t, "app", time.Hour)
	f.db.rootSettleGrace = 2 * time.Second
	pending, err := database.PasswordPolicy{}.Generate()
	if err != nil {
		t.Fatal(err)
	}
	// What the former leader left: the pending password, recorded now.
	var c dbConfigRecord
	if _, err := f.db.store.get(sysDBConfigPref+"pg", &c); err != nil {
		t.Fatal(err)
	}
	c.PendingRootPassword, c.PendingRootSince = pending, time.Now().UnixNano()
	if _, err := f.db.put(f.caller, sysDBConfigPref+"pg", &c); err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.rotateDue(f.caller); err != nil {
		t.Fatalf("rotation loop: %v", err)
	}
	var kept dbConfigRecord
	if _, err := f.db.store.get(sysDBConfigPref+"pg", &kept); err != nil || kept.PendingRootPassword != pending {
		t.Fatalf("the new leader settled a rotate-root that may still be running (pending kept: %v, %v)", kept.PendingRootPassword == pending, err)
	}
	if _, err := f.db.RotateRoot(f.caller, &pb.DatabaseNameRequest{Name: "pg"}); !errors.Is(err, fsm.ErrCASMismatch) {
		t.Fatalf("rotate-root while a cut one may still run: %v, want a refusal to retry later", err)
	}
	// The former leader's ALTER USER lands.
	f.pg.Exec(t, `ALTER USER `+mgrUser+` WITH PASSWORD '`+pending+`'`)
	waitFor(t, 10*time.Second, "the cut rotation settled", func() bool {
		if _, err := f.db.rotateDue(f.caller); err != nil {
			t.Fatalf("rotation loop: %v", err)
		}
		c = dbConfigRecord{} // a record decoded afresh: no field left over
		if _, err := f.db.store.get(sysDBConfigPref+"pg", &c); err != nil {
			t.Fatal(err)
		}
		return c.PendingRootPassword == ""
	})
	if c.Password != pending {
		t.Fatal("the settled password is not the one the database has")
	}
	if _, err := f.db.Creds(f.caller, &pb.DatabaseNameRequest{Name: "app"}); err != nil {
		t.Fatalf("creds after the cut rotation settled: %v", err)
	}
	if _, err := f.db.RotateRoot(f.caller, &pb.DatabaseNameRequest{Name: "pg"}); err != nil {
		t.Fatalf("rotate-root once settled: %v", err)
	}
}
