package database

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PluginName is the plugin coffer implements, by Vault's name; an empty
// Config.PluginName means it, and so does "postgresql".
const PluginName = "postgresql-database-plugin"

// DefaultMaxOpenConnections is the pool size of a connection that sets
// none (Vault's default).
const DefaultMaxOpenConnections = 4

// connectTimeout bounds one attempt to connect when the connection URL
// sets no connect_timeout: pgxpool goes on connecting in the background
// after a caller gave up, and without a bound a black-holed host would
// hold that attempt for minutes.
const connectTimeout = 10 * time.Second

// Config is one database connection, as `coffer database config write`
// gives it (Vault's fields). The zero value of each optional field means
// its default.
type Config struct {
	// Name names the connection: letters, digits, '-', '_' and '.'.
	Name string
	// PluginName must be PluginName, "postgresql" or empty.
	PluginName string
	// ConnectionURL is a postgres:// or postgresql:// URL in which
	// {{username}} and {{password}} stand for Username and Password. It
	// must not hold a password of its own, so that a read can show it.
	ConnectionURL string
	// Username and Password are the management user's credentials.
	Username string
	Password string
	// AllowedRoles are the roles that may use the connection: names, globs
	// with '*', or "*" for all. Empty allows none (as Vault).
	AllowedRoles []string
	// MaxOpenConnections is the pool size; 0 means 4.
	MaxOpenConnections int
	// MaxIdleConnections is accepted for Vault's sake and checked (not
	// above MaxOpenConnections); pgxpool keeps idle connections until
	// MaxConnLifetime or 30 minutes idle.
	MaxIdleConnections int
	// MaxConnLifetime closes a connection that old; 0 means no limit.
	MaxConnLifetime time.Duration
	// SkipVerify leaves out the login check when the connection is written
	// (Vault's verify_connection=false).
	SkipVerify bool
	// PasswordPolicy names the password policy of the connection's roles;
	// "" means DefaultPasswordPolicy. The server resolves the name.
	PasswordPolicy string
	// RootRotationStatements change the management user's password;
	// empty means `ALTER USER "{{username}}" WITH PASSWORD '{{password}}';`.
	RootRotationStatements Statements
}

// Default statements, as Vault's PostgreSQL plugin runs them.
var (
	// DefaultRenewStatements move a dynamic user's expiry.
	DefaultRenewStatements = Statements{`ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';`}
	// DefaultRotationStatements set a static user's password.
	DefaultRotationStatements = Statements{`ALTER ROLE "{{name}}" WITH PASSWORD '{{password}}';`}
	// DefaultRootRotationStatements set the management user's password.
	DefaultRootRotationStatements = Statements{`ALTER USER "{{username}}" WITH PASSWORD '{{password}}';`}
)

// Validate checks the configuration; its error is one line naming the
// field, wrapping ErrInvalidConfig.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrInvalidConfig, c.Name, fmt.Sprintf(format, args...))
	}
	if c.Name == "" {
		return fmt.Errorf("%w: the connection has no name", ErrInvalidConfig)
	}
	if len(c.Name) > 128 {
		return fmt.Errorf("%w: the connection name is longer than 128 bytes", ErrInvalidConfig)
	}
	for i := 0; i < len(c.Name); i++ {
		if ch := c.Name[i]; !isAlnum(ch) && !strings.ContainsRune("-_.", rune(ch)) {
			return fmt.Errorf("%w: the connection name %q holds %q: use letters, digits, '-', '_' and '.'", ErrInvalidConfig, c.Name, ch)
		}
	}
	switch c.PluginName {
	case "", PluginName, "postgresql":
	default:
		return bad("plugin_name %q is not supported: coffer has %q", c.PluginName, PluginName)
	}
	if err := c.checkURL(); err != nil {
		return bad("%v", err)
	}
	if c.MaxOpenConnections < 0 || c.MaxOpenConnections > 1000 {
		return bad("max_open_connections %d is outside 0 (the default, %d) to 1000", c.MaxOpenConnections, DefaultMaxOpenConnections)
	}
	if c.MaxIdleConnections < 0 || c.MaxIdleConnections > c.maxOpen() {
		return bad("max_idle_connections %d is outside 0 to max_open_connections (%d)", c.MaxIdleConnections, c.maxOpen())
	}
	if c.MaxConnLifetime < 0 {
		return bad("max_connection_lifetime %s is negative", c.MaxConnLifetime)
	}
	for _, r := range c.AllowedRoles {
		if strings.TrimSpace(r) == "" {
			return bad("allowed_roles holds an empty name")
		}
	}
	if err := CheckStatements(c.RootRotationStatements); err != nil {
		return bad("root_rotation_statements: %v", err)
	}
	return nil
}

// checkURL checks ConnectionURL against Username and Password.
func (c *Config) checkURL() error {
	raw := c.ConnectionURL
	if raw == "" {
		return fmt.Errorf("connection_url is empty: give postgresql://{{username}}:{{password}}@HOST:5432/DB")
	}
	if !strings.HasPrefix(raw, "postgres://") && !strings.HasPrefix(raw, "postgresql://") {
		return fmt.Errorf("connection_url must be a postgresql:// URL (key=value strings are not supported)")
	}
	hasUser, hasPassword := strings.Contains(raw, phUsername), strings.Contains(raw, phPassword)
	u, err := url.Parse(substituteURL(raw, "u", "p"))
	if err != nil {
		return fmt.Errorf("connection_url does not parse: %v", redactURLError(err))
	}
	if u.Host == "" {
		return fmt.Errorf("connection_url names no host")
	}
	if pw, set := u.User.Password(); set && (!hasPassword || pw != "p") {
		return fmt.Errorf("connection_url holds a password: write {{password}} in its place and give the password as password")
	}
	if u.Query().Has("password") {
		return fmt.Errorf("connection_url holds a password parameter: remove it and give the password as password")
	}
	switch {
	case hasPassword && c.Password == "":
		return fmt.Errorf("connection_url has {{password}} but no password is given")
	case !hasPassword && c.Password != "":
		return fmt.Errorf("a password is given but connection_url has no {{password}}: write postgresql://{{username}}:{{password}}@HOST/DB")
	case hasUser && c.Username == "":
		return fmt.Errorf("connection_url has {{username}} but no username is given")
	case !hasUser && c.Username != "":
		return fmt.Errorf("a username is given but connection_url has no {{username}}: write postgresql://{{username}}:{{password}}@HOST/DB")
	}
	return nil
}

// redactURLError keeps url.Parse's reason without the URL it quotes.
func redactURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// substituteURL puts username and password, escaped, into the URL
// template.
func substituteURL(tpl, username, password string) string {
	esc := func(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
	r := strings.NewReplacer(phUsername, esc(username), phPassword, esc(password))
	return r.Replace(tpl)
}

// maxOpen is the pool size.
func (c *Config) maxOpen() int {
	if c.MaxOpenConnections == 0 {
		return DefaultMaxOpenConnections
	}
	return c.MaxOpenConnections
}

// AllowsRole reports whether the role may use this connection:
// AllowedRoles holds "*", the role's name, or a glob with '*' that matches
// it.
func (c *Config) AllowsRole(role string) bool {
	for _, pattern := range c.AllowedRoles {
		if globMatch(pattern, role) {
			return true
		}
	}
	return false
}

// globMatch matches s against pattern, where '*' matches any run of
// characters (Vault's glob).
func globMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}

// Redacted returns the configuration as a read may show it: the password
// left out (the URL is the template and holds none).
func (c *Config) Redacted() Config {
	r := *c
	r.Password = ""
	r.AllowedRoles = append([]string(nil), c.AllowedRoles...)
	r.RootRotationStatements = append(Statements(nil), c.RootRotationStatements...)
	return r
}

// poolConfig builds pgxpool's configuration. The password is set on the
// parsed configuration, never written into a URL, so that no parse error
// can show it.
func (c *Config) poolConfig() (*pgxpool.Config, error) {
	const marker = "coffer-password-goes-here"
	pc, err := pgxpool.ParseConfig(substituteURL(c.ConnectionURL, c.Username, marker))
	if err != nil {
		return nil, fmt.Errorf("%w %q: connection_url: %v", ErrInvalidConfig, c.Name, redact(err, marker, c.Password))
	}
	if strings.Contains(c.ConnectionURL, phPassword) {
		pc.ConnConfig.Password = c.Password
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = connectTimeout
	}
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok {
		pc.ConnConfig.RuntimeParams["application_name"] = "coffer"
	}
	pc.MaxConns = int32(c.maxOpen())
	pc.MinConns = 0
	pc.MaxConnLifetime = c.MaxConnLifetime
	return pc, nil
}

// fingerprint identifies what a pool is built from: a changed
// configuration (or a rotated password) gets a new pool.
func (c *Config) fingerprint() [32]byte {
	h := sha256.New()
	for _, s := range []string{c.ConnectionURL, c.Username, c.Password} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var n [16]byte
	binary.BigEndian.PutUint64(n[:8], uint64(c.maxOpen()))
	binary.BigEndian.PutUint64(n[8:], uint64(c.MaxConnLifetime))
	h.Write(n[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}
