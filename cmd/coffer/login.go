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

func cmdLogin(e *env, args []string) error {
	f := newFlags("coffer login", "[flags] [TOKEN | KEY=VALUE ...]", `
Log in and print the token, as "coffer token create" prints one.

    coffer login -method=approle role_id=ID secret_id=SECRET_ID
    coffer login -method=jwt role=ROLE jwt=@FILE
    coffer login -method=cert [name=ROLE]
    coffer login TOKEN

KEY=@FILE reads the value from FILE, KEY=- from stdin. A certificate login
presents the client certificate of -client-cert/-client-key (or
-certs-dir). "coffer login TOKEN" looks TOKEN up and prints it. With
-token-only only the token is printed: COFFER_TOKEN=$(coffer login ...).`).withClient()
	method := f.fs.String("method", "token", "login method: approle, jwt, cert or token")
	tokenOnly := f.fs.Bool("token-only", false, "print the token alone")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	var t *pb.TokenInfo
	if *method == "token" {
		if len(args) != 1 || strings.Contains(args[0], "=") {
			return usageErrorf(f.name, "give the token to log in with: coffer login TOKEN (or -method=approle|jwt|cert KEY=VALUE ...)")
		}
		t, err = c.LookupToken(api.WithToken(context.Background(), args[0]), &pb.LookupTokenRequest{})
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		t.Token = args[0]
	} else {
		data, err := parsePairs(args, e.stdin)
		if err != nil {
			return err
		}
		for k, v := range data {
			data[k] = strings.TrimSpace(v)
		}
		switch *method {
		case "approle", "jwt", "cert":
		default:
			return usageErrorf(f.name, "unknown -method %q: use approle, jwt, cert or token", *method)
		}
		t, err = c.Login(context.Background(), *method, data)
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
	}
	if *tokenOnly {
		fmt.Fprintln(e.stdout, t.GetToken())
		return nil
	}
	return printToken(e, f.format, t)
}

// roleTokenFlags are the token settings every role command takes.
type roleTokenFlags struct {
	policies, cidrs listFlag
	ttl, maxTTL     time.Duration
	typ             string
	noDefault       bool
}

// add registers the flags.
func (r *roleTokenFlags) add(f *cmdFlags) {
	f.fs.Var(&r.policies, "token-policies", "policies of the tokens (a,b; default is added unless -token-no-default-policy)")
	f.fs.DurationVar(&r.ttl, "token-ttl", 0, "time to live of the tokens (default: 32 days)")
	f.fs.DurationVar(&r.maxTTL, "token-max-ttl", 0, "the longest a token may live, renewals included")
	f.fs.StringVar(&r.typ, "token-type", "service", "service or batch (batch: no write, any node logs in, not renewable)")
	f.fs.Var(&r.cidrs, "token-bound-cidrs", "CIDR blocks the tokens work from (a,b)")
	f.fs.BoolVar(&r.noDefault, "token-no-default-policy", false, "leave the default policy out")
}

// pb is the settings in the API's form.
func (r *roleTokenFlags) pb() *pb.RoleToken {
	return &pb.RoleToken{
		Policies: r.policies, TtlSeconds: int64(r.ttl / time.Second), MaxTtlSeconds: int64(r.maxTTL / time.Second),
		Type: r.typ, BoundCidrs: r.cidrs, NoDefaultPolicy: r.noDefault,
	}
}

// roleTokenJSON is a role's token settings in the CLI's JSON, as Vault
// names them.
type roleTokenJSON struct {
	TokenPolicies        []string `json:"token_policies"`
	TokenTTL             int64    `json:"token_ttl"`
	TokenMaxTTL          int64    `json:"token_max_ttl"`
	TokenType            string   `json:"token_type"`
	TokenBoundCIDRs      []string `json:"token_bound_cidrs"`
	TokenNoDefaultPolicy bool     `json:"token_no_default_policy"`
}

func toRoleTokenJSON(t *pb.RoleToken) roleTokenJSON {
	return roleTokenJSON{
		TokenPolicies: orEmpty(t.GetPolicies()), TokenTTL: t.GetTtlSeconds(), TokenMaxTTL: t.GetMaxTtlSeconds(),
		TokenType: t.GetType(), TokenBoundCIDRs: orEmpty(t.GetBoundCidrs()), TokenNoDefaultPolicy: t.GetNoDefaultPolicy(),
	}
}

// rows are the settings in a table.
func (j roleTokenJSON) rows() []row {
	return []row{
		{"token_policies", "[" + strings.Join(j.TokenPolicies, " ") + "]"},
		{"token_ttl", seconds(j.TokenTTL)},
		{"token_max_ttl", seconds(j.TokenMaxTTL)},
		{"token_type", j.TokenType},
		{"token_bound_cidrs", "[" + strings.Join(j.TokenBoundCIDRs, " ") + "]"},
		{"token_no_default_policy", strconv.FormatBool(j.TokenNoDefaultPolicy)},
	}
}

func orEmpty(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

// seconds prints a duration in seconds ("0s": the default).
func seconds(s int64) string { return (time.Duration(s) * time.Second).String() }

// printNames prints a list of names.
func printNames(e *env, format string, names []string) error {
	if format == formatJSON {
		return printJSON(e.stdout, orEmpty(names))
	}
	for _, n := range names {
		fmt.Fprintln(e.stdout, n)
	}
	return nil
}

// printWritten reports a write.
func printWritten(e *env, format, what string, index uint64) error {
	if format == formatJSON {
		return printJSON(e.stdout, writeJSON{Index: index})
	}
	fmt.Fprintf(e.stdout, "Success! %s\n", what)
	return nil
}

// printDeleted reports a deletion.
func printDeleted(e *env, format, name string) error {
	if format == formatJSON {
		return printJSON(e.stdout, map[string]string{"deleted": name})
	}
	fmt.Fprintf(e.stdout, "Success! Deleted role: %s\n", name)
	return nil
}

// readFileArg reads a file a flag names, with one clear line when it
// cannot be read.
func readFileArg(flag, name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", &cliError{code: 1, msg: fmt.Sprintf("-%s: %v", flag, err)}
	}
	if len(b) > maxPolicyFile {
		return "", &cliError{code: 1, msg: fmt.Sprintf("-%s: %s is larger than %d bytes", flag, name, maxPolicyFile)}
	}
	return string(b), nil
}
