package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
)

const approleUsage = `Usage: coffer approle <command> [flags] [args]

AppRole logins: a service holds a role_id and a secret_id and logs in
with "coffer login -method=approle role_id=ID secret_id=SECRET_ID".

Commands:
    role write        Create a role or replace its settings: NAME
    role read         Print a role's settings and role_id
    role list         List the roles
    role delete       Remove a role and its secret_ids
    role-id           Print a role's role_id: NAME
    secret-id         Make a secret_id for a role (shown once): NAME
    secret-id destroy Remove a secret_id: -accessor=ACCESSOR NAME

Run "coffer approle <command> -h" for its flags.
`

const approleRoleUsage = `Usage: coffer approle role <write|read|list|delete> [flags] [NAME]
`

func cmdApprole(e *env, args []string) error {
	return dispatchSub(e, "coffer approle", approleUsage, args, map[string]func(*env, []string) error{
		"role": func(e *env, args []string) error {
			return dispatchSub(e, "coffer approle role", approleRoleUsage, args, map[string]func(*env, []string) error{
				"write":  cmdApproleRoleWrite,
				"read":   cmdApproleRoleRead,
				"list":   cmdApproleRoleList,
				"delete": cmdApproleRoleDelete,
			})
		},
		"role-id": cmdApproleRoleID,
		"secret-id": func(e *env, args []string) error {
			if len(args) > 1 && args[0] == "destroy" {
				return cmdApproleSecretIDDestroy(e, args[1:])
			}
			return cmdApproleSecretID(e, args)
		},
	})
}

func cmdApproleRoleWrite(e *env, args []string) error {
	f := newFlags("coffer approle role write", "[flags] NAME", `
Create the AppRole role NAME, or replace its settings (its role_id and its
secret_ids stay). Secret_ids made from now on take -secret-id-ttl,
-secret-id-num-uses and -secret-id-bound-cidrs; logins get tokens by the
-token-* flags.`).withClient()
	var tok roleTokenFlags
	tok.add(f)
	secretTTL := f.fs.Duration("secret-id-ttl", 0, "how long a secret_id works (0: until destroyed)")
	numUses := f.fs.Int64("secret-id-num-uses", 0, "logins a secret_id makes (0: no limit)")
	var secretCIDRs listFlag
	f.fs.Var(&secretCIDRs, "secret-id-bound-cidrs", "CIDR blocks a secret_id logs in from (a,b)")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.WriteAppRole(context.Background(), &pb.AppRole{
		Name: args[0], Token: tok.pb(), SecretIdTtlSeconds: int64(*secretTTL / time.Second),
		SecretIdNumUses: *numUses, SecretIdBoundCidrs: secretCIDRs,
	})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printWritten(e, f.format, "Data written to: auth/approle/role/"+args[0], resp.GetRaftIndex())
}

// appRoleJSON is a role in `approle role read -format=json`.
type appRoleJSON struct {
	Name string `json:"name"`
	roleTokenJSON
	SecretIDTTL        int64    `json:"secret_id_ttl"`
	SecretIDNumUses    int64    `json:"secret_id_num_uses"`
	SecretIDBoundCIDRs []string `json:"secret_id_bound_cidrs"`
	RoleID             string   `json:"role_id"`
}

func cmdApproleRoleRead(e *env, args []string) error {
	f := newFlags("coffer approle role read", "[flags] NAME", `
Print the settings and the role_id of the AppRole role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.ReadAppRole(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := appRoleJSON{
		Name: r.GetName(), roleTokenJSON: toRoleTokenJSON(r.GetToken()), SecretIDTTL: r.GetSecretIdTtlSeconds(),
		SecretIDNumUses: r.GetSecretIdNumUses(), SecretIDBoundCIDRs: orEmpty(r.GetSecretIdBoundCidrs()), RoleID: r.GetRoleId(),
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	rows := append([]row{{"role_id", j.RoleID}}, j.rows()...)
	rows = append(rows,
		row{"secret_id_ttl", seconds(j.SecretIDTTL)},
		row{"secret_id_num_uses", strconv.FormatInt(j.SecretIDNumUses, 10)},
		row{"secret_id_bound_cidrs", "[" + strings.Join(j.SecretIDBoundCIDRs, " ") + "]"},
	)
	printKV(e.stdout, rows)
	return nil
}

func cmdApproleRoleList(e *env, args []string) error {
	f := newFlags("coffer approle role list", "[flags]", `
List the AppRole roles.`).withClient()
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := c.ListAppRoles(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printNames(e, f.format, names)
}

func cmdApproleRoleDelete(e *env, args []string) error {
	f := newFlags("coffer approle role delete", "[flags] NAME", `
Remove the AppRole role NAME, its role_id and its secret_ids. Tokens it
gave keep working until they expire or are revoked.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeleteAppRole(context.Background(), args[0]); err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printDeleted(e, f.format, args[0])
}

func cmdApproleRoleID(e *env, args []string) error {
	f := newFlags("coffer approle role-id", "[flags] NAME", `
Print the role_id of the AppRole role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	id, err := c.AppRoleID(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"role_id": id})
	}
	printKV(e.stdout, []row{{"role_id", id}})
	return nil
}

// secretIDJSON is `approle secret-id -format=json`.
type secretIDJSON struct {
	SecretID         string `json:"secret_id"`
	SecretIDAccessor string `json:"secret_id_accessor"`
	SecretIDTTL      int64  `json:"secret_id_ttl"`
	SecretIDNumUses  int64  `json:"secret_id_num_uses"`
}

func cmdApproleSecretID(e *env, args []string) error {
	f := newFlags("coffer approle secret-id", "[flags] NAME", `
Make a secret_id for the AppRole role NAME. It is printed once: the
cluster keeps only its hash. Its accessor names it for destroy.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.AppRoleSecretID(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := secretIDJSON{SecretID: s.GetSecretId(), SecretIDAccessor: s.GetSecretIdAccessor(), SecretIDTTL: s.GetSecretIdTtlSeconds(), SecretIDNumUses: s.GetSecretIdNumUses()}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	printKV(e.stdout, []row{
		{"secret_id", j.SecretID}, {"secret_id_accessor", j.SecretIDAccessor},
		{"secret_id_ttl", seconds(j.SecretIDTTL)}, {"secret_id_num_uses", strconv.FormatInt(j.SecretIDNumUses, 10)},
	})
	return nil
}

func cmdApproleSecretIDDestroy(e *env, args []string) error {
	f := newFlags("coffer approle secret-id destroy", "[flags] -accessor=ACCESSOR NAME", `
Remove the secret_id of the AppRole role NAME that ACCESSOR names.`).withClient()
	acc := f.fs.String("accessor", "", "the secret_id's accessor (printed with it)")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	if *acc == "" {
		return usageErrorf(f.name, "give -accessor=ACCESSOR")
	}
	if err := c.DestroyAppRoleSecretID(context.Background(), args[0], *acc); err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"destroyed": *acc})
	}
	fmt.Fprintf(e.stdout, "Success! Destroyed the secret_id of accessor %s\n", *acc)
	return nil
}

const jwtUsage = `Usage: coffer jwt <command> [flags] [args]

JWT logins (Kubernetes service-account tokens, any OIDC issuer): the keys
that verify tokens come from "coffer jwt config"; a role binds what a
token must say. Log in with "coffer login -method=jwt role=ROLE jwt=@FILE".

Commands:
    config        Set where the keys come from (no flags: print it)
    role write    Create or replace a role: NAME
    role read     Print a role
    role list     List the roles
    role delete   Remove a role

Run "coffer jwt <command> -h" for its flags.
`

const jwtRoleUsage = `Usage: coffer jwt role <write|read|list|delete> [flags] [NAME]
`

func cmdJWT(e *env, args []string) error {
	return dispatchSub(e, "coffer jwt", jwtUsage, args, map[string]func(*env, []string) error{
		"config": cmdJWTConfig,
		"role": func(e *env, args []string) error {
			return dispatchSub(e, "coffer jwt role", jwtRoleUsage, args, map[string]func(*env, []string) error{
				"write":  cmdJWTRoleWrite,
				"read":   cmdJWTRoleRead,
				"list":   cmdJWTRoleList,
				"delete": cmdJWTRoleDelete,
			})
		},
	})
}

// jwtConfigJSON is the JWT configuration in the CLI's JSON.
type jwtConfigJSON struct {
	JWKS        string   `json:"jwks_json,omitempty"`
	JWKSURL     string   `json:"jwks_url,omitempty"`
	JWKSCAPEM   string   `json:"jwks_ca_pem,omitempty"`
	PubKeys     []string `json:"pubkeys,omitempty"`
	BoundIssuer string   `json:"bound_issuer,omitempty"`
}

func cmdJWTConfig(e *env, args []string) error {
	f := newFlags("coffer jwt config", "[flags]", `
Set where the keys that verify tokens come from: exactly one of
-jwks-file (a JSON Web Key Set, stored in the configuration), -jwks-url
(fetched over https:// by every node, kept, fetched again for a key it
does not hold; -jwks-ca-file verifies its server) and -pubkeys-file (PEM
public keys). -bound-issuer, when set, must be every token's iss. Without
flags, print the configuration.`).withClient()
	jwksFile := f.fs.String("jwks-file", "", "a JWKS document (for Kubernetes: kubectl get --raw /openid/v1/jwks)")
	jwksURL := f.fs.String("jwks-url", "", "https:// address of the issuer's JWKS")
	caFile := f.fs.String("jwks-ca-file", "", "PEM CA that verifies -jwks-url's server (default: the system's roots)")
	pubkeysFile := f.fs.String("pubkeys-file", "", "PEM public keys")
	issuer := f.fs.String("bound-issuer", "", "the iss every token must carry")
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	if !f.isSet("jwks-file") && !f.isSet("jwks-url") && !f.isSet("pubkeys-file") && !f.isSet("bound-issuer") && !f.isSet("jwks-ca-file") {
		cfg, err := c.ReadJWTConfig(context.Background())
		if err != nil {
			return callError(err, c.Endpoints(), 2)
		}
		j := jwtConfigJSON{JWKS: cfg.GetJwksJson(), JWKSURL: cfg.GetJwksUrl(), JWKSCAPEM: cfg.GetJwksCaPem(), PubKeys: cfg.GetPubkeys(), BoundIssuer: cfg.GetBoundIssuer()}
		if f.format == formatJSON {
			return printJSON(e.stdout, j)
		}
		source := "jwks_json"
		switch {
		case j.JWKSURL != "":
			source = "jwks_url " + j.JWKSURL
		case len(j.PubKeys) > 0:
			source = fmt.Sprintf("pubkeys (%d)", len(j.PubKeys))
		}
		printKV(e.stdout, []row{{"keys", source}, {"bound_issuer", orNA(j.BoundIssuer)}})
		return nil
	}
	cfg := &pb.JWTConfig{JwksUrl: *jwksURL, BoundIssuer: *issuer}
	if *jwksFile != "" {
		if cfg.JwksJson, err = readFileArg("jwks-file", *jwksFile); err != nil {
			return err
		}
	}
	if *pubkeysFile != "" {
		pem, err := readFileArg("pubkeys-file", *pubkeysFile)
		if err != nil {
			return err
		}
		cfg.Pubkeys = []string{pem}
	}
	if *caFile != "" {
		if cfg.JwksCaPem, err = readFileArg("jwks-ca-file", *caFile); err != nil {
			return err
		}
	}
	resp, err := c.WriteJWTConfig(context.Background(), cfg)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printWritten(e, f.format, "Data written to: auth/jwt/config", resp.GetRaftIndex())
}

// claimsFlag collects k=v pairs (repeatable, or k=v,k2=v2).
type claimsFlag map[string]string

func (c claimsFlag) String() string {
	var out []string
	for k, v := range c {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func (c claimsFlag) Set(s string) error {
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("want name=value, got %q", kv)
		}
		c[k] = v
	}
	return nil
}

func cmdJWTRoleWrite(e *env, args []string) error {
	f := newFlags("coffer jwt role write", "[flags] NAME", `
Create or replace the JWT role NAME: a token logs in to it when its aud
names one of -bound-audiences, its sub is -bound-subject (when set) and
every -bound-claims name=value holds; its -user-claim names the user in
the token's display name.`).withClient()
	var tok roleTokenFlags
	tok.add(f)
	var auds listFlag
	f.fs.Var(&auds, "bound-audiences", "audiences a token must name one of (required; a,b)")
	subject := f.fs.String("bound-subject", "", "the sub a token must carry")
	claims := claimsFlag{}
	f.fs.Var(claims, "bound-claims", "claims a token must carry, name=value (a=1,b=2)")
	user := f.fs.String("user-claim", "sub", "the claim that names the user")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.WriteJWTRole(context.Background(), &pb.JWTRole{
		Name: args[0], BoundAudiences: auds, BoundSubject: *subject, BoundClaims: claims, UserClaim: *user, Token: tok.pb(),
	})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printWritten(e, f.format, "Data written to: auth/jwt/role/"+args[0], resp.GetRaftIndex())
}

// jwtRoleJSON is a role in `jwt role read -format=json`.
type jwtRoleJSON struct {
	Name           string            `json:"name"`
	BoundAudiences []string          `json:"bound_audiences"`
	BoundSubject   string            `json:"bound_subject"`
	BoundClaims    map[string]string `json:"bound_claims"`
	UserClaim      string            `json:"user_claim"`
	roleTokenJSON
}

func cmdJWTRoleRead(e *env, args []string) error {
	f := newFlags("coffer jwt role read", "[flags] NAME", `
Print the JWT role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.ReadJWTRole(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := jwtRoleJSON{Name: r.GetName(), BoundAudiences: orEmpty(r.GetBoundAudiences()), BoundSubject: r.GetBoundSubject(),
		BoundClaims: r.GetBoundClaims(), UserClaim: r.GetUserClaim(), roleTokenJSON: toRoleTokenJSON(r.GetToken())}
	if j.BoundClaims == nil {
		j.BoundClaims = map[string]string{}
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	rows := []row{
		{"bound_audiences", "[" + strings.Join(j.BoundAudiences, " ") + "]"},
		{"bound_subject", orNA(j.BoundSubject)},
		{"bound_claims", "[" + claimsFlag(j.BoundClaims).String() + "]"},
		{"user_claim", j.UserClaim},
	}
	printKV(e.stdout, append(rows, j.rows()...))
	return nil
}

func cmdJWTRoleList(e *env, args []string) error {
	f := newFlags("coffer jwt role list", "[flags]", `
List the JWT roles.`).withClient()
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := c.ListJWTRoles(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printNames(e, f.format, names)
}

func cmdJWTRoleDelete(e *env, args []string) error {
	f := newFlags("coffer jwt role delete", "[flags] NAME", `
Remove the JWT role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeleteJWTRole(context.Background(), args[0]); err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printDeleted(e, f.format, args[0])
}

const certRoleUsage = `Usage: coffer cert role <write|read|list|delete> [flags] [NAME]

Certificate logins: a client certificate of the cluster's CA logs in to a
role whose allowed names it matches, with
"coffer login -method=cert [name=ROLE]".
`

func cmdCertRole(e *env, args []string) error {
	return dispatchSub(e, "coffer cert role", certRoleUsage, args, map[string]func(*env, []string) error{
		"write":  cmdCertRoleWrite,
		"read":   cmdCertRoleRead,
		"list":   cmdCertRoleList,
		"delete": cmdCertRoleDelete,
	})
}

func cmdCertRoleWrite(e *env, args []string) error {
	f := newFlags("coffer cert role write", "[flags] NAME", `
Create or replace the certificate role NAME: a client certificate of the
cluster's CA logs in to it when its common name matches one of
-allowed-common-names and (when given) one of its DNS names one of
-allowed-dns-sans. Names are exact or globs with * ("web-*").`).withClient()
	var tok roleTokenFlags
	tok.add(f)
	var cns, sans listFlag
	f.fs.Var(&cns, "allowed-common-names", "common names that log in (a,b; * globs)")
	f.fs.Var(&sans, "allowed-dns-sans", "DNS names that log in (a,b; * globs)")
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.WriteCertRole(context.Background(), &pb.CertRole{Name: args[0], AllowedCommonNames: cns, AllowedDnsSans: sans, Token: tok.pb()})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printWritten(e, f.format, "Data written to: auth/cert/certs/"+args[0], resp.GetRaftIndex())
}

// certRoleJSON is a role in `cert role read -format=json`.
type certRoleJSON struct {
	Name               string   `json:"name"`
	AllowedCommonNames []string `json:"allowed_common_names"`
	AllowedDNSSANs     []string `json:"allowed_dns_sans"`
	roleTokenJSON
}

func cmdCertRoleRead(e *env, args []string) error {
	f := newFlags("coffer cert role read", "[flags] NAME", `
Print the certificate role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.ReadCertRole(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	j := certRoleJSON{Name: r.GetName(), AllowedCommonNames: orEmpty(r.GetAllowedCommonNames()), AllowedDNSSANs: orEmpty(r.GetAllowedDnsSans()), roleTokenJSON: toRoleTokenJSON(r.GetToken())}
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	rows := []row{
		{"allowed_common_names", "[" + strings.Join(j.AllowedCommonNames, " ") + "]"},
		{"allowed_dns_sans", "[" + strings.Join(j.AllowedDNSSANs, " ") + "]"},
	}
	printKV(e.stdout, append(rows, j.rows()...))
	return nil
}

func cmdCertRoleList(e *env, args []string) error {
	f := newFlags("coffer cert role list", "[flags]", `
List the certificate roles.`).withClient()
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := c.ListCertRoles(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printNames(e, f.format, names)
}

func cmdCertRoleDelete(e *env, args []string) error {
	f := newFlags("coffer cert role delete", "[flags] NAME", `
Remove the certificate role NAME.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeleteCertRole(context.Background(), args[0]); err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printDeleted(e, f.format, args[0])
}
