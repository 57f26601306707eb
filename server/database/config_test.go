package database

import (
	"errors"
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{
		Name:          "main",
		ConnectionURL: "postgresql://{{username}}:{{password}}@db.internal:5432/app?sslmode=verify-full",
		Username:      "vaultadmin",
		Password:      "s3cret-Pass",
		AllowedRoles:  []string{"app", "report-*"},
	}
}

func TestConfigValidate(t *testing.T) {
	c := validConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "no name"},
		{"bad name", func(c *Config) { c.Name = "a/b" }, "holds"},
		{"other plugin", func(c *Config) { c.PluginName = "mysql-database-plugin" }, "not supported"},
		{"no URL", func(c *Config) { c.ConnectionURL = "" }, "connection_url is empty"},
		{"key=value", func(c *Config) { c.ConnectionURL = "host=x user={{username}}" }, "postgresql:// URL"},
		{"literal password", func(c *Config) {
			c.ConnectionURL = "postgresql://{{username}}:hunter22@db/app"
			c.Password = ""
		}, "holds a password"},
		{"password parameter", func(c *Config) { c.ConnectionURL += "&password=hunter22" }, "password parameter"},
		{"no {{password}}", func(c *Config) { c.ConnectionURL = "postgresql://{{username}}@db/app" }, "no {{password}}"},
		{"no password", func(c *Config) { c.Password = "" }, "no password is given"},
		{"no username", func(c *Config) { c.Username = "" }, "no username is given"},
		{"no host", func(c *Config) { c.ConnectionURL = "postgresql://{{username}}:{{password}}@/app" }, "no host"},
		{"negative pool", func(c *Config) { c.MaxOpenConnections = -1 }, "max_open_connections"},
		{"idle above open", func(c *Config) { c.MaxOpenConnections = 2; c.MaxIdleConnections = 3 }, "max_idle_connections"},
		{"empty allowed role", func(c *Config) { c.AllowedRoles = []string{""} }, "allowed_roles"},
		{"bad rotation statements", func(c *Config) {
			c.RootRotationStatements = Statements{`ALTER USER {{username}} PASSWORD '{{password}}'`}
		}, "root_rotation_statements"},
	} {
		c := validConfig()
		tc.change(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig with %q", tc.name, err, tc.want)
			continue
		}
		for _, secret := range []string{"s3cret-Pass", "hunter22"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the error holds a password: %v", tc.name, err)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: the error is more than one line", tc.name)
		}
	}
}

func TestConfigRedacted(t *testing.T) {
	c := validConfig()
	r := c.Redacted()
	if r.Password != "" || r.ConnectionURL != c.ConnectionURL || r.Username != c.Username {
		t.Fatalf("Redacted = %+v", r)
	}
	r.AllowedRoles[0] = "changed"
	if c.AllowedRoles[0] != "app" {
		t.Fatal("Redacted shares AllowedRoles with the original")
	}
}

func TestAllowsRole(t *testing.T) {
	c := validConfig()
	for role, want := range map[string]bool{"app": true, "report-daily": true, "report-": true, "apps": false, "report": false, "": false} {
		if got := c.AllowsRole(role); got != want {
			t.Errorf("AllowsRole(%q) = %v", role, got)
		}
	}
	c.AllowedRoles = []string{"*"}
	if !c.AllowsRole("anything") {
		t.Error(`"*" does not allow every role`)
	}
	c.AllowedRoles = nil
	if c.AllowsRole("app") {
		t.Error("no allowed roles allows a role")
	}
	c.AllowedRoles = []string{"a*b*c"}
	for role, want := range map[string]bool{"abc": true, "axxbyyc": true, "acb": false, "abcx": false} {
		if got := c.AllowsRole(role); got != want {
			t.Errorf("AllowsRole(%q) with a*b*c = %v", role, got)
		}
	}
}

func TestPoolConfigKeepsPasswordOutOfTheURL(t *testing.T) {
	c := validConfig()
	c.Password = "p@ss:w/rd?#%"
	c.Username = "user@corp"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	pc, err := c.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	if pc.ConnConfig.Password != c.Password || pc.ConnConfig.User != c.Username {
		t.Fatalf("user %q password set %v", pc.ConnConfig.User, pc.ConnConfig.Password == c.Password)
	}
	if pc.MaxConns != DefaultMaxOpenConnections || pc.ConnConfig.Host != "db.internal" || pc.ConnConfig.Database != "app" {
		t.Fatalf("pool config: max %d host %q db %q", pc.MaxConns, pc.ConnConfig.Host, pc.ConnConfig.Database)
	}
	if pc.ConnConfig.RuntimeParams["application_name"] != "coffer" {
		t.Fatalf("application_name = %q", pc.ConnConfig.RuntimeParams["application_name"])
	}
	c2 := c
	c2.Password = "other"
	if c.fingerprint() == c2.fingerprint() {
		t.Fatal("a new password keeps the pool's fingerprint")
	}
}
