package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

const tokenUsage = `Usage: coffer token <command> [flags] [args]

Commands:
    create          Create a token (a child of yours unless -orphan)
    lookup          Describe a token (yours by default)
    renew           Extend a token's time to live (yours by default)
    revoke          Revoke a token and its children
    capabilities    Print what a token may do on a path

Run "coffer token <command> -h" for its flags.
`

// tokenJSON is a token as the token commands print it with -format=json.
type tokenJSON struct {
	Token          string   `json:"token,omitempty"`
	Accessor       string   `json:"accessor"`
	Policies       []string `json:"policies"`
	TTL            int64    `json:"ttl"`
	Renewable      bool     `json:"renewable"`
	Type           string   `json:"type"`
	ExpireTime     string   `json:"expire_time"`
	CreationTime   string   `json:"creation_time"`
	CreationTTL    int64    `json:"creation_ttl"`
	ExplicitMaxTTL int64    `json:"explicit_max_ttl"`
	Period         int64    `json:"period"`
	NumUses        int64    `json:"num_uses"`
	Orphan         bool     `json:"orphan"`
	DisplayName    string   `json:"display_name"`
}

func toTokenJSON(t *pb.TokenInfo) tokenJSON {
	out := tokenJSON{
		Token: t.GetToken(), Accessor: t.GetAccessor(), Policies: t.GetPolicies(), TTL: t.GetTtlSeconds(),
		Renewable: t.GetRenewable(), Type: t.GetType(), CreationTTL: t.GetCreationTtlSeconds(),
		ExplicitMaxTTL: t.GetExplicitMaxTtlSeconds(), Period: t.GetPeriodSeconds(), NumUses: t.GetNumUses(),
		Orphan: t.GetOrphan(), DisplayName: t.GetDisplayName(),
	}
	if out.Policies == nil {
		out.Policies = []string{}
	}
	if t.GetExpireTimeUnix() != 0 {
		out.ExpireTime = time.Unix(t.GetExpireTimeUnix(), 0).UTC().Format(time.RFC3339)
	}
	if t.GetCreationTimeUnix() != 0 {
		out.CreationTime = time.Unix(t.GetCreationTimeUnix(), 0).UTC().Format(time.RFC3339)
	}
	return out
}

// printToken prints a token in the chosen format.
func printToken(e *env, format string, t *pb.TokenInfo) error {
	j := toTokenJSON(t)
	if format == formatJSON {
		return printJSON(e.stdout, j)
	}
	var rows []row
	if j.Token != "" {
		rows = append(rows, row{"token", j.Token})
	}
	ttl := "never expires"
	if j.ExpireTime != "" {
		ttl = (time.Duration(j.TTL) * time.Second).String()
	}
	rows = append(rows,
		row{"accessor", orNA(j.Accessor)},
		row{"policies", "[" + strings.Join(j.Policies, " ") + "]"},
		row{"ttl", ttl},
		row{"expire_time", orNA(j.ExpireTime)},
		row{"renewable", fmt.Sprint(j.Renewable)},
		row{"type", j.Type},
		row{"orphan", fmt.Sprint(j.Orphan)},
		row{"display_name", orNA(j.DisplayName)},
	)
	if j.Period != 0 {
		rows = append(rows, row{"period", (time.Duration(j.Period) * time.Second).String()})
	}
	if j.ExplicitMaxTTL != 0 {
		rows = append(rows, row{"explicit_max_ttl", (time.Duration(j.ExplicitMaxTTL) * time.Second).String()})
	}
	printKV(e.stdout, rows)
	return nil
}

// listFlag collects a repeatable flag (and comma-separated values).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

var _ flag.Value = (*listFlag)(nil)

func cmdTokenCreate(e *env, args []string) error {
	f := newFlags("coffer token create", "[flags]", `
Create a token. It is a child of the calling token (revoked with it) unless
-orphan; a token that is not root may only give the policies it holds.`).withClient()
	var policies listFlag
	f.fs.Var(&policies, "policy", "policy of the new token (repeatable, or a,b); default: the caller's")
	ttl := f.fs.Duration("ttl", 0, "time to live (default: 32 days, at most the parent's)")
	maxTTL := f.fs.Duration("explicit-max-ttl", 0, "the longest the token may live, renewals included")
	period := f.fs.Duration("period", 0, "a periodic token: each renewal gives it this much time")
	orphan := f.fs.Bool("orphan", false, "no parent: revoking the caller leaves this token alone (needs auth/token/create-orphan)")
	numUses := f.fs.Int64("num-uses", 0, "number of calls the token may make (0: no limit)")
	display := f.fs.String("display-name", "", "a name to recognise the token by")
	typ := f.fs.String("type", "service", "service or batch")
	noDefault := f.fs.Bool("no-default-policy", false, "leave the default policy out")
	renewable := f.fs.Bool("renewable", true, "whether the token may be renewed")
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	req := &pb.CreateTokenRequest{
		Policies: policies, TtlSeconds: int64(*ttl / time.Second), ExplicitMaxTtlSeconds: int64(*maxTTL / time.Second),
		PeriodSeconds: int64(*period / time.Second), NoParent: *orphan, NumUses: *numUses, DisplayName: *display,
		Type: *typ, NoDefaultPolicy: *noDefault, RenewableSet: f.isSet("renewable"), Renewable: *renewable,
	}
	t, err := c.CreateToken(context.Background(), req)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printToken(e, f.format, t)
}

// tokenTarget parses [-accessor] [-self] [TOKEN] of lookup, renew and revoke.
func tokenTarget(f *cmdFlags, args []string, accessor bool) (token, acc string, err error) {
	switch {
	case len(args) > 1:
		return "", "", usageErrorf(f.name, "too many arguments: %s %s", f.name, f.synopsis)
	case len(args) == 0 && accessor:
		return "", "", usageErrorf(f.name, "-accessor needs the ACCESSOR argument")
	case len(args) == 0:
		return "", "", nil
	case accessor:
		return "", args[0], nil
	}
	return args[0], "", nil
}

// tokenCall parses the flags and [TOKEN|ACCESSOR] of lookup and renew
// and opens the client (the caller closes it).
func tokenCall(e *env, f *cmdFlags, args []string, byAccessor *bool) (token, acc string, c *api.Client, err error) {
	if args, err = f.parse(e, args); err != nil {
		return "", "", nil, err
	}
	if token, acc, err = tokenTarget(f, args, *byAccessor); err != nil {
		return "", "", nil, err
	}
	if c, err = f.client(e); err != nil {
		return "", "", nil, err
	}
	return token, acc, c, nil
}

func cmdTokenLookup(e *env, args []string) error {
	f := newFlags("coffer token lookup", "[flags] [TOKEN|ACCESSOR]", `
Describe a token: the calling one by default, TOKEN, or with -accessor the
token of ACCESSOR (the token itself is never shown then).`).withClient()
	byAccessor := f.fs.Bool("accessor", false, "the argument is an accessor")
	token, acc, c, err := tokenCall(e, f, args, byAccessor)
	if err != nil {
		return err
	}
	defer c.Close()
	t, err := c.LookupToken(context.Background(), &pb.LookupTokenRequest{Token: token, Accessor: acc})
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printToken(e, f.format, t)
}

func cmdTokenRenew(e *env, args []string) error {
	f := newFlags("coffer token renew", "[flags] [TOKEN|ACCESSOR]", `
Extend a token's time to live, within its maximum: the calling token by
default, TOKEN, or with -accessor the token of ACCESSOR.`).withClient()
	byAccessor := f.fs.Bool("accessor", false, "the argument is an accessor")
	inc := f.fs.Duration("increment", 0, "time to add from now (default: the token's own TTL)")
	token, acc, c, err := tokenCall(e, f, args, byAccessor)
	if err != nil {
		return err
	}
	defer c.Close()
	t, err := c.RenewToken(context.Background(), &pb.RenewTokenRequest{Token: token, Accessor: acc, IncrementSeconds: int64(*inc / time.Second)})
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printToken(e, f.format, t)
}

func cmdTokenRevoke(e *env, args []string) error {
	f := newFlags("coffer token revoke", "[flags] [TOKEN|ACCESSOR]", `
Revoke a token and its children (not its orphans): TOKEN, with -accessor
the token of ACCESSOR, or with -self the calling token.`).withClient()
	byAccessor := f.fs.Bool("accessor", false, "the argument is an accessor")
	self := f.fs.Bool("self", false, "revoke the calling token")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	token, acc, err := tokenTarget(f, args, *byAccessor)
	if err != nil {
		return err
	}
	if *self != (token == "" && acc == "") {
		return usageErrorf(f.name, "name a TOKEN (or -accessor ACCESSOR), or -self, not both")
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.RevokeToken(context.Background(), &pb.RevokeTokenRequest{Token: token, Accessor: acc})
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]any{"revoked": resp.GetRevoked(), "index": resp.GetRaftIndex()})
	}
	fmt.Fprintf(e.stdout, "Success! Revoked token (%d with its children)\n", resp.GetRevoked())
	return nil
}

func cmdTokenCapabilities(e *env, args []string) error {
	f := newFlags("coffer token capabilities", "[flags] [TOKEN] PATH", `
Print the capabilities of a token (the calling one without TOKEN) on PATH,
in Vault's form: "deny" when it has none, "root" for a root token.`).withClient()
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	var token, path string
	switch len(args) {
	case 1:
		path = args[0]
	case 2:
		token, path = args[0], args[1]
	default:
		return usageErrorf(f.name, "want [TOKEN] PATH: %s %s", f.name, f.synopsis)
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Capabilities(context.Background(), token, path)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	var caps []string
	for _, p := range resp.GetPaths() {
		caps = append(caps, p.GetCapabilities()...)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]any{"path": path, "capabilities": caps})
	}
	fmt.Fprintln(e.stdout, strings.Join(caps, ", "))
	return nil
}
