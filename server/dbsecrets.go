package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/server/database"
	"coffer/server/lease"
)

// Keys of the database engine (sys table, every value sealed by the
// barrier: connection passwords and static passwords are in them).
const (
	// database/config/<name> → dbConfigRecord
	sysDBConfigPref = "database/config/"
	// database/roles/<name> → dbRoleRecord
	sysDBRolePref = "database/roles/"
	// database/static-roles/<name> → staticRoleRecord
	sysDBStaticPref = "database/static-roles/"
)

// Defaults of the engine, as Vault's.
const (
	defaultDBTTL           = time.Hour
	defaultDBMaxTTL        = 24 * time.Hour
	minStaticRotation      = 5 * time.Second
	dbLeaseKind            = "database"
	dbCredsPrefix          = "database/creds/"
	maxDBStatements        = 64
	maxDBStatementBytes    = 64 << 10
	defaultStaticRotation  = 24 * time.Hour
	maxDBAllowedRoles      = 256
	dbCallTimeout          = 10 * time.Second
	dbRevokeTimeout        = 10 * time.Second
	staticRotationInterval = 500 * time.Millisecond
)

// dbConfigRecord is a connection as stored.
type dbConfigRecord struct {
	PluginName             string   `json:"plugin_name"`
	ConnectionURL          string   `json:"connection_url"`
	Username               string   `json:"username"`
	Password               string   `json:"password"`
	AllowedRoles           []string `json:"allowed_roles,omitempty"`
	MaxOpen                int32    `json:"max_open,omitempty"`
	MaxIdle                int32    `json:"max_idle,omitempty"`
	MaxLifetime            int64    `json:"max_lifetime,omitempty"`
	Verify                 bool     `json:"verify"`
	PasswordPolicy         string   `json:"password_policy,omitempty"`
	RootRotationStatements []string `json:"root_rotation_statements,omitempty"`
	RootRotated            int64    `json:"root_rotated,omitempty"`
	// PendingRootPassword is a rotate-root in progress: recorded before
	// the database changes the password, cleared once it has (or once the
	// old one is found to still work). PendingRootSince is when it was
	// recorded (leader time, Unix nanoseconds).
	PendingRootPassword string `json:"pending_root_password,omitempty"`
	PendingRootSince    int64  `json:"pending_root_since,omitempty"`
}

// engineConfig is the connection as the engine takes it, with password
// as the management user's password.
func (c *dbConfigRecord) engineConfig(name, password string) *database.Config {
	return &database.Config{
		Name: name, PluginName: c.PluginName, ConnectionURL: c.ConnectionURL, Username: c.Username, Password: password,
		AllowedRoles: c.AllowedRoles, MaxOpenConnections: int(c.MaxOpen), MaxIdleConnections: int(c.MaxIdle),
		MaxConnLifetime: time.Duration(c.MaxLifetime) * time.Second, SkipVerify: !c.Verify, PasswordPolicy: c.PasswordPolicy,
		RootRotationStatements: c.RootRotationStatements,
	}
}

// allows reports whether the connection serves role (names or globs).
func (c *dbConfigRecord) allows(role string) bool {
	return c.engineConfig("", "").AllowsRole(role)
}

// dbRoleRecord is a dynamic role as stored.
type dbRoleRecord struct {
	DBName     string   `json:"db_name"`
	Creation   []string `json:"creation_statements"`
	Revocation []string `json:"revocation_statements,omitempty"`
	Renew      []string `json:"renew_statements,omitempty"`
	Rollback   []string `json:"rollback_statements,omitempty"`
	DefaultTTL int64    `json:"default_ttl,omitempty"`
	MaxTTL     int64    `json:"max_ttl,omitempty"`
	MaxLeases  int64    `json:"max_leases,omitempty"`
}

// ttls are the role's lease TTL and max TTL.
func (r *dbRoleRecord) ttls() (ttl, maxTTL time.Duration) {
	ttl, maxTTL = time.Duration(r.DefaultTTL)*time.Second, time.Duration(r.MaxTTL)*time.Second
	if maxTTL <= 0 {
		maxTTL = defaultDBMaxTTL
	}
	if ttl <= 0 {
		ttl = defaultDBTTL
	}
	return min(ttl, maxTTL), maxTTL
}

// staticRoleRecord is a static role as stored, with the user's current
// password.
type staticRoleRecord struct {
	DBName         string   `json:"db_name"`
	Username       string   `json:"username"`
	RotationPeriod int64    `json:"rotation_period"`
	Statements     []string `json:"rotation_statements,omitempty"`
	Password       string   `json:"password,omitempty"`
	LastRotation   int64    `json:"last_rotation,omitempty"`
	// Pending is a rotation in progress: recorded through Raft before the
	// database is told, so a rotation cut by a failover is completed by
	// the next leader (setting the same password again is harmless).
	Pending string `json:"pending,omitempty"`
}

// nextRotation is when the role's password is due to change.
func (s *staticRoleRecord) nextRotation() time.Time {
	return time.Unix(0, s.LastRotation).Add(time.Duration(s.RotationPeriod) * time.Second)
}

// dbLeaseData is what a database lease needs to renew and revoke its user
// (sealed with the lease record).
type dbLeaseData struct {
	DB         string   `json:"db"`
	Role       string   `json:"role"`
	Username   string   `json:"username"`
	Revocation []string `json:"revocation,omitempty"`
	Renew      []string `json:"renew,omitempty"`
}

// databaseServer is the Database service: the PostgreSQL engine's
// configuration as replicated state, and the leader's calls to the
// databases.
type databaseServer struct {
	pb.UnimplementedDatabaseServer
	store sealedJSON
	props proposer
	locks *keyLocks
	// conns orders the calls on a connection's database against its
	// rotate-roots: a call reads the connection and runs under a read
	// lock, a rotate-root under the write lock, so that no call logs in
	// with the password being replaced (nil: no ordering, for tests).
	conns  *connLocks
	engine *database.Engine
	leases *lease.Table
	logger hclog.Logger
	now    func() time.Time
	// rootSettleGrace is how long a pending rotate-root is left alone
	// (0: defaultRootSettleGrace).
	rootSettleGrace time.Duration
}

// defaultRootSettleGrace is how long a rotate-root's pending password is
// left to the leader that recorded it: past its call's deadline (and a
// margin for the cancel to land), that leader's ALTER USER can no longer
// change the password, and whoever finds it pending may decide.
const defaultRootSettleGrace = 2 * dbCallTimeout

// rootSettleable reports whether c's pending rotate-root may be settled
// now, and how long to wait otherwise: a former leader may still be
// running it (it lost Raft, not the database), and settling it before its
// ALTER USER lands would drop the password the database is about to have.
func (d *databaseServer) rootSettleable(c *dbConfigRecord) (bool, time.Duration) {
	grace := d.rootSettleGrace
	if grace <= 0 {
		grace = defaultRootSettleGrace
	}
	left := time.Unix(0, c.PendingRootSince).Add(grace).Sub(d.now())
	return left <= 0, left
}

// connLocks is a read/write lock per connection name.
type connLocks struct {
	mu sync.Mutex
	m  map[string]*sync.RWMutex
}

func (l *connLocks) get(name string) *sync.RWMutex {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]*sync.RWMutex)
	}
	m := l.m[name]
	if m == nil {
		m = &sync.RWMutex{}
		l.m[name] = m
	}
	return m
}

// useConn takes the connection's read lock (calls that use its database)
// and returns its release, which may be called more than once.
func (d *databaseServer) useConn(name string) func() {
	if d.conns == nil {
		return func() {}
	}
	m := d.conns.get(name)
	m.RLock()
	var once sync.Once
	return func() { once.Do(m.RUnlock) }
}

// rotatingConn takes the connection's write lock (a rotate-root) and
// returns its release.
func (d *databaseServer) rotatingConn(name string) func() {
	if d.conns == nil {
		return func() {}
	}
	m := d.conns.get(name)
	m.Lock()
	return m.Unlock
}

// config reads a connection.
func (d *databaseServer) config(name string) (*dbConfigRecord, error) {
	return dbRecord[dbConfigRecord](d, "connection", sysDBConfigPref, name, func() error {
		return withMessage(fsm.ErrNotFound, "database: no connection named %q: list them with `coffer database config list`", clipName(name))
	})
}

// dbRecord reads the sealed record prefix+name (a connection, a role or a
// static role) after checking the name; notFound is the error when there
// is none.
func dbRecord[T any](d *databaseServer, kind, prefix, name string, notFound func() error) (*T, error) {
	if err := validDBName(kind, name); err != nil {
		return nil, err
	}
	var v T
	if _, err := d.store.get(prefix+name, &v); err != nil {
		if errors.Is(err, fsm.ErrNotFound) {
			return nil, notFound()
		}
		return nil, err
	}
	return &v, nil
}

// validDBName checks a connection's or role's name (one path segment).
func validDBName(kind, name string) error {
	if err := validRoleName("database "+kind, name); err != nil {
		return err
	}
	if strings.Contains(name, "/") {
		return invalidf("database %s: the name %q has a \"/\": use one path segment", kind, clipName(name))
	}
	return nil
}

// put writes one sealed record.
func (d *databaseServer) put(ctx context.Context, key string, v any) (uint64, error) {
	e, err := d.store.entry(key, v)
	if err != nil {
		return 0, err
	}
	res, err := d.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{e}})
	if err != nil {
		return 0, err
	}
	return res.Index, nil
}

// del removes a record; one that is not there is not an error (Vault's
// deletes answer 204 either way).
func (d *databaseServer) del(ctx context.Context, key string) (*pb.DatabaseWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	index, err := deleteKeys(ctx, d.props, []string{key})
	if err != nil {
		return nil, err
	}
	return &pb.DatabaseWriteResponse{RaftIndex: index}, nil
}

// statementsOf checks statements a request gives.
func statementsOf(field string, in []string) ([]string, error) {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) > maxDBStatements {
		return nil, invalidf("%s: at most %d statements", field, maxDBStatements)
	}
	n := 0
	for _, s := range out {
		n += len(s)
	}
	if n > maxDBStatementBytes {
		return nil, invalidf("%s: the statements are longer than %d bytes", field, maxDBStatementBytes)
	}
	return out, nil
}

// WriteConfig creates or replaces a connection; with verify_connection
// (the default) the leader logs in first.
func (d *databaseServer) WriteConfig(ctx context.Context, req *pb.DatabaseConfig) (*pb.DatabaseWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validDBName("connection", name); err != nil {
		return nil, err
	}
	if l := req.GetMaxConnectionLifetimeSeconds(); l < 0 || l > maxDurationSeconds {
		return nil, invalidf("max_connection_lifetime must be from 0 (no limit) to 100 years (%d seconds)", maxDurationSeconds)
	}
	if len(req.GetAllowedRoles()) > maxDBAllowedRoles {
		return nil, invalidf("allowed_roles: at most %d roles", maxDBAllowedRoles)
	}
	rootStmts, err := statementsOf("root_rotation_statements", req.GetRootRotationStatements())
	if err != nil {
		return nil, err
	}
	rec := dbConfigRecord{
		PluginName: req.GetPluginName(), ConnectionURL: strings.TrimSpace(req.GetConnectionUrl()), Username: req.GetUsername(),
		Password: req.GetPassword(), AllowedRoles: cleanNames(req.GetAllowedRoles()), MaxOpen: req.GetMaxOpenConnections(),
		MaxIdle: req.GetMaxIdleConnections(), MaxLifetime: req.GetMaxConnectionLifetimeSeconds(),
		Verify: req.VerifyConnection == nil || req.GetVerifyConnection(), PasswordPolicy: req.GetPasswordPolicy(),
		RootRotationStatements: rootStmts,
	}
	if rec.PluginName == "" {
		rec.PluginName = database.PluginName
	}
	defer d.locks.lock(sysDBConfigPref + name)()
	var warnings []string
	if old, err := d.config(name); err == nil && rec.Password == "" {
		// Vault keeps the password a write leaves out (after rotate-root
		// only coffer knows it) — but only for the destination it was
		// given for: a caller who may write the connection must not learn
		// it by pointing connection_url at a server of its own, which can
		// ask for it in clear text.
		if old.ConnectionURL != rec.ConnectionURL || old.Username != rec.Username {
			if strings.Contains(rec.ConnectionURL, "{{password}}") {
				return nil, invalidf("database connection %q: connection_url or username changed, so give the password again: the stored one is only ever sent where it was given for", name)
			}
		} else {
			// A rotate-root still pending stays, to be settled.
			rec.Password, rec.RootRotated = old.Password, old.RootRotated
			rec.PendingRootPassword, rec.PendingRootSince = old.PendingRootPassword, old.PendingRootSince
		}
	} else if err != nil && !errors.Is(err, fsm.ErrNotFound) {
		return nil, err
	}
	cfg := rec.engineConfig(name, rec.Password)
	if err := cfg.Validate(); err != nil {
		return nil, invalidf("%v", err)
	}
	if len(rec.AllowedRoles) == 0 {
		warnings = append(warnings, "allowed_roles is empty: no role may use this connection until you name them (or \"*\")")
	}
	if rec.Verify {
		vctx, cancel := context.WithTimeout(ctx, dbCallTimeout)
		err := d.engine.Verify(vctx, cfg)
		cancel()
		if err != nil {
			return nil, dbError(err)
		}
	}
	index, err := d.put(ctx, sysDBConfigPref+name, rec)
	if err != nil {
		return nil, err
	}
	d.engine.Close(name)
	d.logger.Info("database connection written", "connection", name)
	return &pb.DatabaseWriteResponse{RaftIndex: index, Warnings: warnings}, nil
}

// ReadConfig returns a connection without its password.
func (d *databaseServer) ReadConfig(_ context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseConfig, error) {
	c, err := d.config(req.GetName())
	if err != nil {
		return nil, err
	}
	verify := c.Verify
	return &pb.DatabaseConfig{
		Name: req.GetName(), PluginName: c.PluginName, ConnectionUrl: c.ConnectionURL, Username: c.Username,
		AllowedRoles: c.AllowedRoles, MaxOpenConnections: c.MaxOpen, MaxIdleConnections: c.MaxIdle,
		MaxConnectionLifetimeSeconds: c.MaxLifetime, VerifyConnection: &verify, PasswordPolicy: c.PasswordPolicy,
		RootRotationStatements: c.RootRotationStatements, RootRotatedUnixNano: c.RootRotated,
	}, nil
}

// ListConfigs returns the connections' names.
func (d *databaseServer) ListConfigs(context.Context, *pb.DatabaseListRequest) (*pb.DatabaseListResponse, error) {
	names, err := d.store.names(sysDBConfigPref)
	return &pb.DatabaseListResponse{Names: names}, err
}

// DeleteConfig removes a connection.
func (d *databaseServer) DeleteConfig(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	if err := validDBName("connection", req.GetName()); err != nil {
		return nil, err
	}
	defer d.locks.lock(sysDBConfigPref + req.GetName())()
	resp, err := d.del(ctx, sysDBConfigPref+req.GetName())
	if err == nil {
		d.engine.Close(req.GetName())
	}
	return resp, err
}

// RotateRoot gives the management user a new password only coffer knows,
// in two steps through Raft: the new password is recorded as pending,
// then the database changes it, then it becomes the password. A leader
// that dies between them leaves the pending one, which the next leader
// settles (settleRoot).
func (d *databaseServer) RotateRoot(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	defer d.locks.lock(sysDBConfigPref + name)()
	defer d.rotatingConn(name)()
	c, err := d.config(name)
	if err != nil {
		return nil, err
	}
	if c.PendingRootPassword != "" {
		if ok, left := d.rootSettleable(c); !ok {
			return nil, withMessage(fsm.ErrCASMismatch, "database connection %q: a rotate-root that began %s ago may still be running on a former leader: retry in %s",
				name, d.now().Sub(time.Unix(0, c.PendingRootSince)).Round(time.Second), left.Round(time.Second))
		}
		if err := d.settleRoot(ctx, name, c); err != nil {
			return nil, err
		}
		if c, err = d.config(name); err != nil {
			return nil, err
		}
	}
	policy, err := database.ParsePasswordPolicy(c.PasswordPolicy)
	if err != nil {
		return nil, invalidf("database connection %q: %v", name, err)
	}
	pw, err := policy.Generate()
	if err != nil {
		return nil, err
	}
	c.PendingRootPassword, c.PendingRootSince = pw, d.now().UnixNano()
	if _, err := d.put(ctx, sysDBConfigPref+name, c); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, dbCallTimeout)
	err = d.engine.RotateRoot(rctx, c.engineConfig(name, c.Password), pw)
	cancel()
	if err != nil {
		// The pending password stays: settleRoot finds which one works.
		return nil, dbError(err)
	}
	c.Password, c.PendingRootPassword, c.PendingRootSince, c.RootRotated = pw, "", 0, d.now().UnixNano()
	index, err := d.put(ctx, sysDBConfigPref+name, c)
	if err != nil {
		return nil, err
	}
	d.engine.Close(name)
	d.logger.Info("database root credentials rotated", "connection", name)
	return &pb.DatabaseWriteResponse{RaftIndex: index}, nil
}

// settleRoot ends a rotate-root a leader did not finish: when the pending
// password logs in it becomes the password, otherwise the old one still
// works and the pending one is dropped. The caller holds the lock and the
// connection's write lock (rotatingConn).
func (d *databaseServer) settleRoot(ctx context.Context, name string, c *dbConfigRecord) error {
	vctx, cancel := context.WithTimeout(ctx, dbCallTimeout)
	defer cancel()
	if err := d.engine.Verify(vctx, c.engineConfig(name, c.PendingRootPassword)); err == nil {
		c.Password, c.RootRotated = c.PendingRootPassword, d.now().UnixNano()
	} else if err := d.engine.Verify(vctx, c.engineConfig(name, c.Password)); err != nil {
		return dbError(err)
	}
	c.PendingRootPassword, c.PendingRootSince = "", 0
	_, err := d.put(ctx, sysDBConfigPref+name, c)
	d.engine.Close(name)
	return err
}

// role reads a dynamic role.
func (d *databaseServer) role(name string) (*dbRoleRecord, error) {
	return dbRecord[dbRoleRecord](d, "role", sysDBRolePref, name, func() error {
		return roleNotFound("database", name, "coffer database role list")
	})
}

// WriteRole creates or replaces a dynamic role.
func (d *databaseServer) WriteRole(ctx context.Context, req *pb.DatabaseRole) (*pb.DatabaseWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validDBName("role", name); err != nil {
		return nil, err
	}
	r := dbRoleRecord{DBName: req.GetDbName(), DefaultTTL: req.GetDefaultTtlSeconds(), MaxTTL: req.GetMaxTtlSeconds(), MaxLeases: req.GetMaxLeases()}
	if r.DBName == "" {
		return nil, invalidf("database role: db_name is empty: name the connection (coffer database config list)")
	}
	var err error
	for _, s := range []struct {
		field string
		in    []string
		out   *[]string
	}{
		{"creation_statements", req.GetCreationStatements(), &r.Creation},
		{"revocation_statements", req.GetRevocationStatements(), &r.Revocation},
		{"renew_statements", req.GetRenewStatements(), &r.Renew},
		{"rollback_statements", req.GetRollbackStatements(), &r.Rollback},
	} {
		if *s.out, err = statementsOf(s.field, s.in); err != nil {
			return nil, err
		}
		// Every placeholder quoted and every string closed, now rather
		// than at the first credential or, worse, at a revocation: each
		// lease keeps the revocation statements it was issued with.
		if s.field != "rollback_statements" {
			if err := database.CheckStatements(*s.out); err != nil {
				return nil, invalidf("database role: %s: %v", s.field, err)
			}
		}
	}
	if len(r.Creation) == 0 {
		return nil, invalidf("database role: creation_statements are empty: give the statements that create the user")
	}
	if r.DefaultTTL < 0 || r.MaxTTL < 0 || r.MaxLeases < 0 {
		return nil, invalidf("database role: default_ttl, max_ttl and max_leases must not be negative")
	}
	if max(r.DefaultTTL, r.MaxTTL) > maxDurationSeconds {
		return nil, invalidf("database role: default_ttl and max_ttl must be at most 100 years (%d seconds)", maxDurationSeconds)
	}
	if r.MaxTTL > 0 && r.DefaultTTL > r.MaxTTL {
		return nil, invalidf("database role: default_ttl (%ds) is longer than max_ttl (%ds)", r.DefaultTTL, r.MaxTTL)
	}
	var warnings []string
	if c, err := d.config(r.DBName); err != nil {
		return nil, err
	} else if !c.allows(name) {
		warnings = append(warnings, fmt.Sprintf("connection %q does not list %q in allowed_roles: creds will be refused until it does", r.DBName, name))
	}
	defer d.locks.lock(sysDBRolePref + name)()
	index, err := d.put(ctx, sysDBRolePref+name, r)
	if err != nil {
		return nil, err
	}
	d.logger.Info("database role written", "role", name)
	return &pb.DatabaseWriteResponse{RaftIndex: index, Warnings: warnings}, nil
}

// ReadRole returns a dynamic role.
func (d *databaseServer) ReadRole(_ context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseRole, error) {
	r, err := d.role(req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.DatabaseRole{
		Name: req.GetName(), DbName: r.DBName, CreationStatements: r.Creation, RevocationStatements: r.Revocation,
		RenewStatements: r.Renew, RollbackStatements: r.Rollback, DefaultTtlSeconds: r.DefaultTTL, MaxTtlSeconds: r.MaxTTL,
		MaxLeases: r.MaxLeases,
	}, nil
}

// ListRoles returns the dynamic roles' names.
func (d *databaseServer) ListRoles(context.Context, *pb.DatabaseListRequest) (*pb.DatabaseListResponse, error) {
	names, err := d.store.names(sysDBRolePref)
	return &pb.DatabaseListResponse{Names: names}, err
}

// DeleteRole removes a dynamic role; its leases run to their end.
func (d *databaseServer) DeleteRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	if err := validDBName("role", req.GetName()); err != nil {
		return nil, err
	}
	return d.del(ctx, sysDBRolePref+req.GetName())
}

// Creds creates a database user for a dynamic role. The lease is written
// first as an intent (pending, due at the end of the intent window), the
// user is created within that window, then the lease is confirmed. A
// leader that dies in between leaves a pending lease the next leader
// revokes when it falls due (DROP ROLE IF EXISTS), so no user coffer does
// not know of survives a crash.
func (d *databaseServer) Creds(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseCreds, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	r, err := d.role(name)
	if err != nil {
		return nil, err
	}
	if err := validDBName("connection", r.DBName); err != nil {
		return nil, err
	}
	release := d.useConn(r.DBName)
	defer release()
	c, err := d.config(r.DBName)
	if err != nil {
		return nil, err
	}
	if !c.allows(name) {
		return nil, withMessage(ErrPermissionDenied, "database: connection %q does not allow role %q: add it to the connection's allowed_roles", r.DBName, name)
	}
	policy, err := database.ParsePasswordPolicy(c.PasswordPolicy)
	if err != nil {
		return nil, invalidf("database connection %q: %v", r.DBName, err)
	}
	password, err := policy.Generate()
	if err != nil {
		return nil, err
	}
	now := d.now()
	username := database.GenerateUsername(callerDisplayName(ctx), name, now)
	ttl, maxTTL := r.ttls()
	data, err := json.Marshal(dbLeaseData{DB: r.DBName, Role: name, Username: username, Revocation: r.Revocation, Renew: r.Renew})
	if err != nil {
		return nil, err
	}
	pending, err := d.leases.CreatePending(ctx, &lease.Record{
		Path: dbCredsPrefix + name, Group: sysDBRolePref + name,
		Kind: dbLeaseKind, TTL: ttl, MaxTTL: maxTTL, Renewable: true, Data: data, MaxInGroup: uint64(max(r.MaxLeases, 0)),
		DisplayName: callerDisplayName(ctx), Subject: username,
	})
	if err != nil {
		return nil, err
	}
	// The user must exist well before the intent falls due: the worker
	// revokes an intent that is still pending then.
	cctx, cancel := context.WithDeadline(ctx, pending.Due.Add(-time.Until(pending.Due)/2))
	err = d.engine.CreateUser(cctx, c.engineConfig(r.DBName, c.Password), r.Creation, username, password, pending.ExpireTime)
	cancel()
	release()
	if err != nil {
		if database.MayHaveCommitted(err) {
			// The commit was sent and its answer lost: the user may exist.
			// The intent stays, and the worker revokes it when it falls due
			// (DROP ROLE IF EXISTS), so that no user outlives its lease.
			d.logger.Warn("the creation's commit was not confirmed; its intent is revoked when due", "lease", pending.ID, "error", err)
			return nil, dbError(err)
		}
		// The creation ran in one transaction that did not commit: there is
		// no user, and the intent goes. Should removing it fail, it falls
		// due and is revoked (a no-op) like any other.
		if aerr := d.leases.Abandon(context.WithoutCancel(ctx), pending.ID); aerr != nil {
			d.logger.Warn("removing the lease of a failed creation failed; it is revoked when due", "lease", pending.ID, "error", aerr)
		}
		return nil, dbError(err)
	}
	if _, err := d.leases.Confirm(ctx, pending.ID, pending.Index); err != nil {
		if errors.Is(err, lease.ErrIntentLost) {
			// The intent was taken for revocation (revoke, revoke-prefix,
			// or its window passed) and may be revoked already — before
			// the user existed, so that drop did nothing. The creator
			// undoes its creation, as the lease table asks.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dbRevokeTimeout)
			uerr := d.revokeLease(uctx, &lease.Record{ID: pending.ID, Data: data})
			cancel()
			if uerr != nil {
				d.logger.Error("a user whose lease was revoked while it was created could not be dropped: drop it by hand",
					"lease", pending.ID, "connection", r.DBName, "user", username, "error", uerr)
			}
			return nil, err
		}
		// The user exists and the lease is pending: the worker drops the
		// user when it falls due. The caller sees the failure and asks again.
		return nil, err
	}
	ttl = pending.ExpireTime.Sub(pending.IssueTime)
	rec := pending
	return &pb.DatabaseCreds{Username: username, Password: password, LeaseId: rec.ID, LeaseDurationSeconds: int64(ttl / time.Second), Renewable: true}, nil
}

// callerDisplayName is the calling token's display name ("token" when it
// has none): Vault puts it in dynamic usernames.
func callerDisplayName(ctx context.Context) string {
	if rec, ok := ctx.Value(tokenCtxKey{}).(*tokenRecord); ok && rec.DisplayName != "" {
		return rec.DisplayName
	}
	return "token"
}

// revokeLease is the database kind's revocation: the user is dropped with
// the role's revocation statements (by default what it owns goes to the
// management user). A user that does not exist is revoked already.
func (d *databaseServer) revokeLease(ctx context.Context, rec *lease.Record) error {
	var data dbLeaseData
	if err := json.Unmarshal(rec.Data, &data); err != nil {
		return fmt.Errorf("the lease's data does not decode: %v", err)
	}
	if err := validDBName("connection", data.DB); err != nil {
		return err
	}
	defer d.useConn(data.DB)()
	c, err := d.config(data.DB)
	if errors.Is(err, fsm.ErrNotFound) {
		return fmt.Errorf("the database connection %q was deleted: write it again (coffer database config write %s) so that its user %q can be dropped; retried until then", data.DB, data.DB, data.Username)
	}
	if err != nil {
		return fmt.Errorf("connection %q: %v", data.DB, err)
	}
	rctx, cancel := context.WithTimeout(ctx, dbRevokeTimeout)
	defer cancel()
	return d.engine.RevokeUser(rctx, c.engineConfig(data.DB, c.Password), data.Revocation, data.Username)
}

// renewLease is the database kind's renewal: the user's VALID UNTIL moves
// to the lease's new end.
func (d *databaseServer) renewLease(ctx context.Context, rec *lease.Record, expire time.Time) error {
	var data dbLeaseData
	if err := json.Unmarshal(rec.Data, &data); err != nil {
		return fmt.Errorf("the lease's data does not decode: %v", err)
	}
	if err := validDBName("connection", data.DB); err != nil {
		return err
	}
	defer d.useConn(data.DB)()
	c, err := d.config(data.DB)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, dbCallTimeout)
	defer cancel()
	if err := d.engine.RenewUser(rctx, c.engineConfig(data.DB, c.Password), data.Renew, data.Username, expire); err != nil {
		return dbError(err)
	}
	return nil
}

// staticRole reads a static role.
func (d *databaseServer) staticRole(name string) (*staticRoleRecord, error) {
	return dbRecord[staticRoleRecord](d, "static role", sysDBStaticPref, name, func() error {
		return roleNotFound("database static", name, "coffer database static-role list")
	})
}

// WriteStaticRole creates or replaces a static role and rotates its
// password at once (a new role) so that only coffer knows it.
func (d *databaseServer) WriteStaticRole(ctx context.Context, req *pb.DatabaseStaticRole) (*pb.DatabaseWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validDBName("static role", name); err != nil {
		return nil, err
	}
	stmts, err := statementsOf("rotation_statements", req.GetRotationStatements())
	if err != nil {
		return nil, err
	}
	if req.GetRotationPeriodSeconds() < 0 || req.GetRotationPeriodSeconds() > maxDurationSeconds {
		return nil, invalidf("database static role: rotation_period must be from 0 (the default, a day) to 100 years (%d seconds)", maxDurationSeconds)
	}
	period := time.Duration(req.GetRotationPeriodSeconds()) * time.Second
	if period == 0 {
		period = defaultStaticRotation
	}
	if period < minStaticRotation {
		return nil, invalidf("database static role: rotation_period must be at least %s", minStaticRotation)
	}
	if err := database.CheckUsername(req.GetUsername()); err != nil {
		return nil, invalidf("database static role: username: %v", err)
	}
	c, err := d.config(req.GetDbName())
	if err != nil {
		return nil, err
	}
	if !c.allows(name) {
		return nil, invalidf("database static role: connection %q does not allow role %q: add it to the connection's allowed_roles", req.GetDbName(), name)
	}
	if err := notManagementUser(req.GetDbName(), c, req.GetUsername()); err != nil {
		return nil, err
	}
	defer d.locks.lock(sysDBStaticPref + name)()
	r := &staticRoleRecord{DBName: req.GetDbName(), Username: req.GetUsername(), RotationPeriod: int64(period / time.Second), Statements: stmts}
	old, err := d.staticRole(name)
	switch {
	case err == nil && old.Username == r.Username && old.DBName == r.DBName:
		// Same user: its password and schedule stay.
		r.Password, r.LastRotation, r.Pending = old.Password, old.LastRotation, old.Pending
		index, err := d.put(ctx, sysDBStaticPref+name, r)
		if err != nil {
			return nil, err
		}
		return &pb.DatabaseWriteResponse{RaftIndex: index}, nil
	case err != nil && !errors.Is(err, fsm.ErrNotFound):
		return nil, err
	}
	index, err := d.rotateStatic(ctx, name, r)
	if err != nil {
		if errors.Is(err, errPasswordUnchanged) {
			// The database kept the user's password: the role goes back
			// to what it was (none), as in Vault, rather than staying for
			// the rotation loop to retry for ever.
			d.restoreStatic(ctx, name, old)
		}
		return nil, err
	}
	d.logger.Info("database static role written and rotated", "role", name)
	return &pb.DatabaseWriteResponse{RaftIndex: index}, nil
}

// rotateStatic gives the role's user a new password in two steps through
// Raft (pending, then the database, then current). With a pending
// rotation already recorded it completes that one instead. The caller
// holds the role's lock.
func (d *databaseServer) rotateStatic(ctx context.Context, name string, r *staticRoleRecord) (uint64, error) {
	if err := validDBName("connection", r.DBName); err != nil {
		return 0, err
	}
	release := d.useConn(r.DBName)
	defer release()
	c, err := d.config(r.DBName)
	if err != nil {
		return 0, err
	}
	if err := notManagementUser(r.DBName, c, r.Username); err != nil {
		return 0, err
	}
	if r.Pending == "" {
		policy, err := database.ParsePasswordPolicy(c.PasswordPolicy)
		if err != nil {
			return 0, invalidf("database connection %q: %v", r.DBName, err)
		}
		if r.Pending, err = policy.Generate(); err != nil {
			return 0, err
		}
		if _, err := d.put(ctx, sysDBStaticPref+name, r); err != nil {
			return 0, err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, dbCallTimeout)
	err = d.engine.SetPassword(sctx, c.engineConfig(r.DBName, c.Password), r.Statements, r.Username, r.Pending)
	cancel()
	if err != nil {
		// The pending password stays and is set again by the next attempt:
		// setting a password twice is harmless, and static-creds never
		// answers while a rotation is pending.
		if !database.MayHaveCommitted(err) {
			return 0, &unchangedError{err: dbError(err)}
		}
		return 0, dbError(err)
	}
	r.Password, r.Pending, r.LastRotation = r.Pending, "", d.now().UnixNano()
	return d.put(ctx, sysDBStaticPref+name, r)
}

// errPasswordUnchanged marks a static rotation that certainly left the
// user's password as it was in the database (the statements failed, or
// never ran).
var errPasswordUnchanged = errors.New("the password was not changed")

// unchangedError is a rotation's error that also matches
// errPasswordUnchanged.
type unchangedError struct{ err error }

func (e *unchangedError) Error() string   { return e.err.Error() }
func (e *unchangedError) Unwrap() []error { return []error{e.err, errPasswordUnchanged} }

// restoreStatic puts back the static role a failed write replaced (nil:
// removes the one it created). The caller holds the role's lock.
func (d *databaseServer) restoreStatic(ctx context.Context, name string, old *staticRoleRecord) {
	ctx = context.WithoutCancel(ctx)
	var err error
	if old == nil {
		_, err = deleteKeys(ctx, d.props, []string{sysDBStaticPref + name})
	} else {
		_, err = d.put(ctx, sysDBStaticPref+name, old)
	}
	if err != nil {
		d.logger.Warn("a static role whose first rotation failed could not be put back", "role", name, "error", err)
	}
}

// notManagementUser refuses a static role on the user the connection
// logs in as: rotating it would change the password coffer manages the
// database with, and break every call on the connection.
func notManagementUser(conn string, c *dbConfigRecord, username string) error {
	if c.Username != "" && username == c.Username {
		return invalidf("database static role: %q is the management user of connection %q, which coffer logs in with: rotate its password with `coffer database rotate-root %s`, or give the static role another user", username, conn, conn)
	}
	return nil
}

// ReadStaticRole returns a static role without its password.
func (d *databaseServer) ReadStaticRole(_ context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseStaticRole, error) {
	r, err := d.staticRole(req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.DatabaseStaticRole{
		Name: req.GetName(), DbName: r.DBName, Username: r.Username, RotationPeriodSeconds: r.RotationPeriod,
		RotationStatements: r.Statements, LastVaultRotationUnixNano: r.LastRotation, TtlSeconds: d.staticTTL(r),
	}, nil
}

// staticTTL is the time until the role's next rotation, in seconds.
func (d *databaseServer) staticTTL(r *staticRoleRecord) int64 {
	return max(0, int64(r.nextRotation().Sub(d.now())/time.Second))
}

// ListStaticRoles returns the static roles' names.
func (d *databaseServer) ListStaticRoles(context.Context, *pb.DatabaseListRequest) (*pb.DatabaseListResponse, error) {
	names, err := d.store.names(sysDBStaticPref)
	return &pb.DatabaseListResponse{Names: names}, err
}

// DeleteStaticRole removes a static role; the user and its password stay.
func (d *databaseServer) DeleteStaticRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	if err := validDBName("static role", req.GetName()); err != nil {
		return nil, err
	}
	defer d.locks.lock(sysDBStaticPref + req.GetName())()
	return d.del(ctx, sysDBStaticPref+req.GetName())
}

// StaticCreds returns the password the database has: the leader completes
// a rotation still pending (one a failover cut) before it answers.
func (d *databaseServer) StaticCreds(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseStaticCreds, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validDBName("static role", name); err != nil {
		return nil, err
	}
	defer d.locks.lock(sysDBStaticPref + name)()
	r, err := d.staticRole(name)
	if err != nil {
		return nil, err
	}
	if r.Pending != "" {
		if _, err := d.rotateStatic(ctx, name, r); err != nil {
			return nil, err
		}
	}
	return &pb.DatabaseStaticCreds{
		Username: r.Username, Password: r.Password, LastVaultRotationUnixNano: r.LastRotation,
		TtlSeconds: d.staticTTL(r), RotationPeriodSeconds: r.RotationPeriod,
	}, nil
}

// RotateRole rotates a static role's password now.
func (d *databaseServer) RotateRole(ctx context.Context, req *pb.DatabaseNameRequest) (*pb.DatabaseWriteResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	name := req.GetName()
	if err := validDBName("static role", name); err != nil {
		return nil, err
	}
	defer d.locks.lock(sysDBStaticPref + name)()
	r, err := d.staticRole(name)
	if err != nil {
		return nil, err
	}
	if r.Pending != "" {
		// Complete the cut rotation first, then make a new one.
		if _, err := d.rotateStatic(ctx, name, r); err != nil {
			return nil, err
		}
	}
	index, err := d.rotateStatic(ctx, name, r)
	if err != nil {
		return nil, err
	}
	d.logger.Info("database static role rotated", "role", name)
	return &pb.DatabaseWriteResponse{RaftIndex: index}, nil
}

// rotateDue is the leader's duty for static roles and root rotations: it
// rotates every static role whose period has passed, completes rotations
// a former leader cut, and settles rotate-roots left pending. It returns
// how many roles it rotated.
func (d *databaseServer) rotateDue(ctx context.Context) (int, error) {
	names, err := d.store.names(sysDBStaticPref)
	if err != nil {
		return 0, err
	}
	n := 0
	var firstErr error
	for _, name := range names {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		err := func() error {
			defer d.locks.lock(sysDBStaticPref + name)()
			r, err := d.staticRole(name)
			if err != nil {
				return err
			}
			if r.Pending == "" && d.now().Before(r.nextRotation()) {
				return nil
			}
			if _, err := d.rotateStatic(ctx, name, r); err != nil {
				return fmt.Errorf("static role %q: %w", name, err)
			}
			n++
			return nil
		}()
		if err != nil && !errors.Is(err, fsm.ErrNotFound) && firstErr == nil {
			firstErr = err
		}
	}
	conns, err := d.store.names(sysDBConfigPref)
	if err != nil {
		return n, err
	}
	for _, name := range conns {
		err := func() error {
			defer d.locks.lock(sysDBConfigPref + name)()
			c, err := d.config(name)
			if err != nil || c.PendingRootPassword == "" {
				return err
			}
			if ok, _ := d.rootSettleable(c); !ok {
				return nil // its leader may still be at it
			}
			defer d.rotatingConn(name)()
			if c, err = d.config(name); err != nil || c.PendingRootPassword == "" {
				return err
			}
			return d.settleRoot(ctx, name, c)
		}()
		if err != nil && !errors.Is(err, fsm.ErrNotFound) && firstErr == nil {
			firstErr = fmt.Errorf("connection %q: %w", name, err)
		}
	}
	return n, firstErr
}

// rotationLoop runs rotateDue every staticRotationInterval while ctx
// lasts (the leadership): static roles rotate on time, and rotations a
// former leader cut are completed.
func (d *databaseServer) rotationLoop(ctx context.Context, stop <-chan struct{}) {
	tick := time.NewTicker(staticRotationInterval)
	defer tick.Stop()
	var lastErr string
	var lastLog time.Time
	for {
		if n, err := d.rotateDue(ctx); err != nil && ctx.Err() == nil {
			// A database that stays down is said once every half minute,
			// not twice a second.
			if msg := err.Error(); msg != lastErr || time.Since(lastLog) > 30*time.Second {
				lastErr, lastLog = msg, time.Now()
				d.logger.Warn("rotating database passwords failed; retrying", "error", err)
			}
		} else if n > 0 {
			d.logger.Info("rotated static database roles", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-tick.C:
		}
	}
}
