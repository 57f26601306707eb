package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

const databaseUsage = `Usage: coffer database <command> [flags] [args]

The PostgreSQL secrets engine: connections, dynamic roles (a new database
user for each "creds" call, revoked when its lease ends) and static roles
(one existing user whose password coffer rotates).

Commands:
    config write|read|list|delete   Connections: NAME
    rotate-root                     Give a connection's management user a new password only coffer knows: NAME
    role write|read|list|delete     Dynamic roles: NAME
    creds                           Create a database user for a dynamic role: ROLE
    static-role write|read|list|delete
                                    Static roles: NAME
    static-creds                    Print a static role's current password: NAME
    rotate-role                     Rotate a static role's password now: NAME

Run "coffer database <command> -h" for its flags.
`

func cmdDatabase(e *env, args []string) error {
	crud := func(group string, cmds map[string]func(*env, []string) error) func(*env, []string) error {
		return func(e *env, args []string) error {
			return dispatchSub(e, "coffer database "+group, fmt.Sprintf("Usage: coffer database %s <write|read|list|delete> [flags] [NAME]\n", group), args, cmds)
		}
	}
	return dispatchSub(e, "coffer database", databaseUsage, args, map[string]func(*env, []string) error{
		"config": crud("config", map[string]func(*env, []string) error{
			"write": cmdDatabaseConfigWrite, "read": cmdDatabaseConfigRead,
			"list": dbList("config", (*api.Client).ListDatabaseConfigs), "delete": dbDelete("config", (*api.Client).DeleteDatabaseConfig),
		}),
		"rotate-root": dbAction("rotate-root", "Give the management user of connection NAME a new password that only coffer knows.", "Root credentials rotated for database/config/", (*api.Client).RotateDatabaseRoot),
		"role": crud("role", map[string]func(*env, []string) error{
			"write": cmdDatabaseRoleWrite, "read": cmdDatabaseRoleRead,
			"list": dbList("role", (*api.Client).ListDatabaseRoles), "delete": dbDelete("role", (*api.Client).DeleteDatabaseRole),
		}),
		"creds": cmdDatabaseCreds,
		"static-role": crud("static-role", map[string]func(*env, []string) error{
			"write": cmdDatabaseStaticRoleWrite, "read": cmdDatabaseStaticRoleRead,
			"list": dbList("static-role", (*api.Client).ListDatabaseStaticRoles), "delete": dbDelete("static-role", (*api.Client).DeleteDatabaseStaticRole),
		}),
		"static-creds": cmdDatabaseStaticCreds,
		"rotate-role":  dbAction("rotate-role", "Rotate the password of static role NAME now.", "Password rotated for database/static-roles/", (*api.Client).RotateDatabaseRole),
	})
}

// statementsFlag collects SQL statements: each use adds one, and @FILE
// reads it from FILE.
type statementsFlag []string

func (s *statementsFlag) String() string { return strings.Join(*s, "; ") }

func (s *statementsFlag) Set(v string) error {
	if name, ok := strings.CutPrefix(v, "@"); ok {
		if name == "" {
			return fmt.Errorf("want @FILE with a file name")
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("reading statements: %v", err)
		}
		v = string(b)
	}
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("the statements are empty")
	}
	*s = append(*s, v)
	return nil
}

func cmdDatabaseConfigWrite(e *env, args []string) error {
	f := newFlags("coffer database config write", "[flags] NAME", `
Create or replace the PostgreSQL connection NAME. The connection URL is a
template: {{username}} and {{password}} are replaced by -username and
-password. The leader connects before saving and refuses a configuration
that does not log in (-verify-connection=false skips that). Without
-password the stored password is kept, but only when -connection-url and
-username are unchanged (after rotate-root only coffer knows it, and it is
never sent to another server).`).withClient()
	url := f.fs.String("connection-url", "", "postgresql://{{username}}:{{password}}@HOST:5432/DB?sslmode=…")
	user := f.fs.String("username", "", "the management user")
	password := f.fs.String("password", "", "its password (@FILE reads it from FILE)")
	var allowed listFlag
	f.fs.Var(&allowed, "allowed-roles", "roles that may use the connection (a,b; * for all)")
	maxOpen := f.fs.Int("max-open-connections", 0, "connections to the database at most (0: 4)")
	maxIdle := f.fs.Int("max-idle-connections", 0, "idle connections kept (0: as many as open)")
	lifetime := f.fs.Duration("max-connection-lifetime", 0, "close connections older than this (0: never)")
	verify := f.fs.Bool("verify-connection", true, "connect before saving")
	policy := f.fs.String("password-policy", "", "new passwords: length=N,lower=N,upper=N,digits=N,symbols=N")
	var rootStmts statementsFlag
	f.fs.Var(&rootStmts, "root-rotation-statements", "statements that change the management user's password (repeat, or @FILE)")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	pw := *password
	if name, ok := strings.CutPrefix(pw, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("reading -password: %v", err)}
		}
		pw = strings.TrimRight(string(b), "\r\n")
	}
	resp, err := c.WriteDatabaseConfig(context.Background(), &pb.DatabaseConfig{
		Name: args[0], PluginName: "postgresql-database-plugin", ConnectionUrl: *url, Username: *user, Password: pw,
		AllowedRoles: allowed, MaxOpenConnections: int32(*maxOpen), MaxIdleConnections: int32(*maxIdle),
		MaxConnectionLifetimeSeconds: int64(*lifetime / time.Second), VerifyConnection: verify,
		PasswordPolicy: *policy, RootRotationStatements: rootStmts,
	})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printDBWritten(e, f.format, "Data written to: database/config/"+args[0], resp)
}

// dbConfigJSON is a connection in `database config read -format=json`.
type dbConfigJSON struct {
	Name                   string   `json:"name"`
	PluginName             string   `json:"plugin_name"`
	ConnectionURL          string   `json:"connection_url"`
	Username               string   `json:"username"`
	AllowedRoles           []string `json:"allowed_roles"`
	MaxOpenConnections     int32    `json:"max_open_connections"`
	MaxIdleConnections     int32    `json:"max_idle_connections"`
	MaxConnectionLifetime  int64    `json:"max_connection_lifetime"`
	VerifyConnection       bool     `json:"verify_connection"`
	PasswordPolicy         string   `json:"password_policy"`
	RootRotationStatements []string `json:"root_credentials_rotate_statements"`
	RootRotated            string   `json:"root_rotated_time,omitempty"`
}

func cmdDatabaseConfigRead(e *env, args []string) error {
	f := newFlags("coffer database config read", "[flags] NAME", `
Print the connection NAME (never its password).`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.ReadDatabaseConfig(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := dbConfigJSON{
		Name: r.GetName(), PluginName: r.GetPluginName(), ConnectionURL: r.GetConnectionUrl(), Username: r.GetUsername(),
		AllowedRoles: orEmpty(r.GetAllowedRoles()), MaxOpenConnections: r.GetMaxOpenConnections(),
		MaxIdleConnections: r.GetMaxIdleConnections(), MaxConnectionLifetime: r.GetMaxConnectionLifetimeSeconds(),
		VerifyConnection: r.GetVerifyConnection(), PasswordPolicy: r.GetPasswordPolicy(),
		RootRotationStatements: orEmpty(r.GetRootRotationStatements()), RootRotated: fmtTime(r.GetRootRotatedUnixNano()),
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	printKV(e.stdout, []row{
		{"plugin_name", j.PluginName}, {"connection_url", j.ConnectionURL}, {"username", j.Username},
		{"allowed_roles", "[" + strings.Join(j.AllowedRoles, " ") + "]"},
		{"max_open_connections", strconv.Itoa(int(j.MaxOpenConnections))},
		{"max_idle_connections", strconv.Itoa(int(j.MaxIdleConnections))},
		{"max_connection_lifetime", seconds(j.MaxConnectionLifetime)},
		{"verify_connection", strconv.FormatBool(j.VerifyConnection)},
		{"password_policy", orNA(j.PasswordPolicy)},
		{"root_rotated_time", orNA(j.RootRotated)},
	})
	return nil
}

func cmdDatabaseRoleWrite(e *env, args []string) error {
	f := newFlags("coffer database role write", "[flags] NAME", `
Create or replace the dynamic role NAME: each "coffer database creds NAME"
runs the creation statements on connection -db to make a new user under a
lease. Statements are templates with {{name}}, {{password}} and
{{expiration}}; repeat a flag for several, or give @FILE. Revocation drops
the user by default (what it owns goes to the management user), renewal
moves its VALID UNTIL.`).withClient()
	db := f.fs.String("db", "", "the connection (database config NAME)")
	var create, revoke, renew, rollback statementsFlag
	f.fs.Var(&create, "creation-statements", "statements that create the user (required)")
	f.fs.Var(&revoke, "revocation-statements", "statements that remove it")
	f.fs.Var(&renew, "renew-statements", "statements that extend it")
	f.fs.Var(&rollback, "rollback-statements", "statements that undo a failed creation")
	ttl := f.fs.Duration("default-ttl", 0, "lease TTL (0: one hour)")
	maxTTL := f.fs.Duration("max-ttl", 0, "lease max TTL, renewals included (0: one day)")
	maxLeases := f.fs.Int64("max-leases", 0, "live leases of the role at most (0: no cap of its own)")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.WriteDatabaseRole(context.Background(), &pb.DatabaseRole{
		Name: args[0], DbName: *db, CreationStatements: create, RevocationStatements: revoke, RenewStatements: renew,
		RollbackStatements: rollback, DefaultTtlSeconds: int64(*ttl / time.Second), MaxTtlSeconds: int64(*maxTTL / time.Second),
		MaxLeases: *maxLeases,
	})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printDBWritten(e, f.format, "Data written to: database/roles/"+args[0], resp)
}

// dbRoleJSON is a dynamic role in `database role read -format=json`.
type dbRoleJSON struct {
	Name                 string   `json:"name"`
	DBName               string   `json:"db_name"`
	CreationStatements   []string `json:"creation_statements"`
	RevocationStatements []string `json:"revocation_statements"`
	RenewStatements      []string `json:"renew_statements"`
	RollbackStatements   []string `json:"rollback_statements"`
	DefaultTTL           int64    `json:"default_ttl"`
	MaxTTL               int64    `json:"max_ttl"`
	MaxLeases            int64    `json:"max_leases"`
}

func cmdDatabaseRoleRead(e *env, args []string) error {
	f := newFlags("coffer database role read", "[flags] NAME", `
Print the dynamic role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.ReadDatabaseRole(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := dbRoleJSON{
		Name: r.GetName(), DBName: r.GetDbName(), CreationStatements: orEmpty(r.GetCreationStatements()),
		RevocationStatements: orEmpty(r.GetRevocationStatements()), RenewStatements: orEmpty(r.GetRenewStatements()),
		RollbackStatements: orEmpty(r.GetRollbackStatements()), DefaultTTL: r.GetDefaultTtlSeconds(), MaxTTL: r.GetMaxTtlSeconds(),
		MaxLeases: r.GetMaxLeases(),
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	printKV(e.stdout, []row{
		{"db_name", j.DBName},
		{"creation_statements", strings.Join(j.CreationStatements, " ")},
		{"revocation_statements", strings.Join(j.RevocationStatements, " ")},
		{"renew_statements", strings.Join(j.RenewStatements, " ")},
		{"rollback_statements", strings.Join(j.RollbackStatements, " ")},
		{"default_ttl", seconds(j.DefaultTTL)}, {"max_ttl", seconds(j.MaxTTL)},
		{"max_leases", strconv.FormatInt(j.MaxLeases, 10)},
	})
	return nil
}

// credsJSON is `database creds -format=json`: Vault's envelope fields.
type credsJSON struct {
	LeaseID       string            `json:"lease_id"`
	LeaseDuration int64             `json:"lease_duration"`
	Renewable     bool              `json:"renewable"`
	Data          map[string]string `json:"data"`
}

func cmdDatabaseCreds(e *env, args []string) error {
	f := newFlags("coffer database creds", "[flags] ROLE", `
Create a database user for the dynamic role ROLE and print its username,
password and lease. The user is dropped when the lease ends (renew it with
"coffer lease renew LEASE_ID", end it with "coffer lease revoke LEASE_ID").`).withClient()
	args, c, err := f.clientFor(e, args, "ROLE")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.DatabaseCreds(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, credsJSON{LeaseID: r.GetLeaseId(), LeaseDuration: r.GetLeaseDurationSeconds(), Renewable: r.GetRenewable(),
			Data: map[string]string{"username": r.GetUsername(), "password": r.GetPassword()}})
	}
	printKV(e.stdout, []row{
		{"lease_id", r.GetLeaseId()}, {"lease_duration", seconds(r.GetLeaseDurationSeconds())},
		{"lease_renewable", strconv.FormatBool(r.GetRenewable())},
		{"password", r.GetPassword()}, {"username", r.GetUsername()},
	})
	return nil
}

func cmdDatabaseStaticRoleWrite(e *env, args []string) error {
	f := newFlags("coffer database static-role write", "[flags] NAME", `
Create or replace the static role NAME: coffer takes over the password of
the existing database user -username, rotating it at once and then every
-rotation-period. "coffer database static-creds NAME" prints the current
one.`).withClient()
	db := f.fs.String("db", "", "the connection (database config NAME)")
	user := f.fs.String("username", "", "the existing database user")
	period := f.fs.Duration("rotation-period", 24*time.Hour, "rotate the password this often (at least 5s)")
	var stmts statementsFlag
	f.fs.Var(&stmts, "rotation-statements", "statements that set the password ({{name}}, {{password}})")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.WriteDatabaseStaticRole(context.Background(), &pb.DatabaseStaticRole{
		Name: args[0], DbName: *db, Username: *user, RotationPeriodSeconds: int64(*period / time.Second), RotationStatements: stmts,
	})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printDBWritten(e, f.format, "Data written to: database/static-roles/"+args[0], resp)
}

// staticRoleJSON is a static role in `database static-role read -format=json`.
type staticRoleJSON struct {
	Name               string   `json:"name"`
	DBName             string   `json:"db_name"`
	Username           string   `json:"username"`
	RotationPeriod     int64    `json:"rotation_period"`
	RotationStatements []string `json:"rotation_statements"`
	LastVaultRotation  string   `json:"last_vault_rotation"`
	TTL                int64    `json:"ttl"`
}

func cmdDatabaseStaticRoleRead(e *env, args []string) error {
	f := newFlags("coffer database static-role read", "[flags] NAME", `
Print the static role NAME (not its password: see static-creds).`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.ReadDatabaseStaticRole(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := staticRoleJSON{
		Name: r.GetName(), DBName: r.GetDbName(), Username: r.GetUsername(), RotationPeriod: r.GetRotationPeriodSeconds(),
		RotationStatements: orEmpty(r.GetRotationStatements()), LastVaultRotation: fmtTime(r.GetLastVaultRotationUnixNano()), TTL: r.GetTtlSeconds(),
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	printKV(e.stdout, []row{
		{"db_name", j.DBName}, {"username", j.Username}, {"rotation_period", seconds(j.RotationPeriod)},
		{"rotation_statements", strings.Join(j.RotationStatements, " ")},
		{"last_vault_rotation", orNA(j.LastVaultRotation)}, {"ttl", seconds(j.TTL)},
	})
	return nil
}

// staticCredsJSON is `database static-creds -format=json`, Vault's fields.
type staticCredsJSON struct {
	Username          string `json:"username"`
	Password          string `json:"password"`
	LastVaultRotation string `json:"last_vault_rotation"`
	TTL               int64  `json:"ttl"`
	RotationPeriod    int64  `json:"rotation_period"`
}

func cmdDatabaseStaticCreds(e *env, args []string) error {
	f := newFlags("coffer database static-creds", "[flags] NAME", `
Print the username and current password of the static role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.DatabaseStaticCreds(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := staticCredsJSON{Username: r.GetUsername(), Password: r.GetPassword(), LastVaultRotation: fmtTime(r.GetLastVaultRotationUnixNano()),
		TTL: r.GetTtlSeconds(), RotationPeriod: r.GetRotationPeriodSeconds()}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	printKV(e.stdout, []row{
		{"last_vault_rotation", j.LastVaultRotation}, {"password", j.Password},
		{"rotation_period", seconds(j.RotationPeriod)}, {"ttl", seconds(j.TTL)}, {"username", j.Username},
	})
	return nil
}

// dbList is `database <group> list`.
func dbList(group string, list func(*api.Client, context.Context) ([]string, error)) func(*env, []string) error {
	return func(e *env, args []string) error {
		f := newFlags("coffer database "+group+" list", "[flags]", "\nList the names.").withClient()
		_, c, err := f.clientFor(e, args)
		if err != nil {
			return err
		}
		defer c.Close()
		names, err := list(c, context.Background())
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		return printNames(e, f.format, names)
	}
}

// dbDelete is `database <group> delete NAME`.
func dbDelete(group string, del func(*api.Client, context.Context, string) (*pb.DatabaseWriteResponse, error)) func(*env, []string) error {
	return func(e *env, args []string) error {
		f := newFlags("coffer database "+group+" delete", "[flags] NAME", "\nRemove NAME (nothing happens when it does not exist).").withClient()
		args, c, err := f.clientFor(e, args, "NAME")
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := del(c, context.Background(), args[0]); err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		return printDeleted(e, f.format, args[0])
	}
}

// dbAction is a database command on one name that writes (rotate-root,
// rotate-role).
func dbAction(cmd, help, done string, call func(*api.Client, context.Context, string) (*pb.DatabaseWriteResponse, error)) func(*env, []string) error {
	return func(e *env, args []string) error {
		f := newFlags("coffer database "+cmd, "[flags] NAME", "\n"+help).withClient()
		args, c, err := f.clientFor(e, args, "NAME")
		if err != nil {
			return err
		}
		defer c.Close()
		resp, err := call(c, context.Background(), args[0])
		if err != nil {
			return callError(err, c.Endpoints(), 2)
		}
		return printDBWritten(e, f.format, done+args[0], resp)
	}
}

// printDBWritten reports a database write and its warnings.
func printDBWritten(e *env, format, what string, resp *pb.DatabaseWriteResponse) error {
	if format != formatJSON {
		for _, w := range resp.GetWarnings() {
			fmt.Fprintln(e.stderr, "WARNING! "+w)
		}
	}
	return printWritten(e, format, what, resp.GetRaftIndex())
}
