package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/tlsutil"
)

// Output formats of -format.
const (
	formatTable = "table"
	formatJSON  = "json"
)

// cmdFlags is the flag set of one command plus the flags every client
// command shares.
type cmdFlags struct {
	fs       *flag.FlagSet
	name     string // "coffer kv get"
	synopsis string // "[flags] PATH"
	help     string

	address string
	token   string
	format  string
	// TLS of a client command: -ca-cert, -client-cert, -client-key,
	// -tls-server-name and -certs-dir.
	caCert, clientCert, clientKey, serverName, certsDir string
	// noStaleFallback is -stale-fallback=false of a read command.
	noStaleFallback bool
}

// newFlags returns the flag set of command name with -format; client
// commands add -address and -token with withClient.
func newFlags(name, synopsis, help string) *cmdFlags {
	c := &cmdFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError), name: name, synopsis: synopsis, help: help}
	c.fs.SetOutput(io.Discard)
	c.fs.Usage = func() {}
	c.fs.StringVar(&c.format, "format", formatTable, "output format: table or json")
	return c
}

// withClient adds -address and -token.
func (c *cmdFlags) withClient() *cmdFlags {
	c.fs.StringVar(&c.address, "address", "", "comma-separated API endpoints: host:port or https://host:port speak TLS, http://host:port plaintext (overrides $"+api.EnvAddr+"; default "+api.DefaultAddr+")")
	c.fs.StringVar(&c.token, "token", "", "token for the call (overrides $"+api.EnvToken+")")
	c.fs.StringVar(&c.caCert, "ca-cert", "", "CA certificate that verifies the nodes, the cluster's ca.crt (default: the system's roots; overrides $"+api.EnvCACert+")")
	c.fs.StringVar(&c.clientCert, "client-cert", "", "client certificate to present (overrides $"+api.EnvClientCert+")")
	c.fs.StringVar(&c.clientKey, "client-key", "", "key of -client-cert (overrides $"+api.EnvClientKey+")")
	c.fs.StringVar(&c.serverName, "tls-server-name", "", "name the nodes' certificates must carry (default: the endpoint's host; overrides $"+api.EnvTLSServerName+")")
	c.fs.StringVar(&c.certsDir, "certs-dir", "", "certificates directory: its ca.crt, and client.root.crt/.key when present (the flags above win)")
	return c
}

// clientTLS resolves the TLS settings of a client command: flags win over
// the environment, which wins over -certs-dir's files. A bare address
// speaks TLS, as VAULT_ADDR's does (http:// is plaintext), so there is
// always a configuration: without a CA anywhere the nodes are verified
// against the system's roots, and a node with the cluster's own
// certificates fails with a line saying to set COFFER_CACERT.
func (c *cmdFlags) clientTLS(e *env) (*tls.Config, error) {
	pick := func(flag, env, dir string) string {
		switch {
		case flag != "":
			return flag
		case env != "":
			return env
		}
		return dir
	}
	var dirCA, dirCert, dirKey string
	if c.certsDir != "" {
		files := tlsutil.ClientFiles(c.certsDir, "root")
		dirCA = files.CA
		if _, err := os.Stat(files.Cert); err == nil {
			dirCert, dirKey = files.Cert, files.Key
		}
	}
	ca := pick(c.caCert, e.getenv(api.EnvCACert), dirCA)
	cert := pick(c.clientCert, e.getenv(api.EnvClientCert), dirCert)
	key := pick(c.clientKey, e.getenv(api.EnvClientKey), dirKey)
	name := pick(c.serverName, e.getenv(api.EnvTLSServerName), "")
	cfg, err := api.LoadTLS(ca, cert, key, name)
	if err != nil {
		return nil, &cliError{code: 1, msg: strings.TrimPrefix(err.Error(), "api: ")}
	}
	return cfg, nil
}

// usage writes the command's help to w.
func (c *cmdFlags) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s %s\n\n%s\n\nFlags:\n", c.name, c.synopsis, strings.TrimSpace(c.help))
	c.fs.SetOutput(w)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
}

// parse parses args, handles -h, validates -format, and returns the
// positional arguments. Flags must come before the positional arguments;
// a defined flag found after them is reported rather than taken as data.
func (c *cmdFlags) parse(e *env, args []string) ([]string, error) {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(e.stdout)
			return nil, errHelp
		}
		return nil, usageErrorf(c.name, "%v", err)
	}
	rest := c.fs.Args()
	for _, a := range rest {
		if isHelpArg(a) {
			c.usage(e.stdout)
			return nil, errHelp
		}
		if name, ok := flagName(a); ok && c.fs.Lookup(name) != nil {
			return nil, usageErrorf(c.name, "flag -%s must come before the arguments: %s %s", name, c.name, c.synopsis)
		}
	}
	if err := checkFormat(c.format); err != nil {
		return nil, err
	}
	return rest, nil
}

// flagName returns NAME for an argument of the form -NAME, --NAME or
// -NAME=VALUE.
func flagName(arg string) (string, bool) {
	if len(arg) < 2 || arg[0] != '-' {
		return "", false
	}
	name := strings.TrimPrefix(arg[1:], "-")
	name, _, _ = strings.Cut(name, "=")
	if name == "" {
		return "", false
	}
	return name, true
}

// checkFormat validates the value of -format.
func checkFormat(f string) error {
	switch f {
	case formatTable, formatJSON:
		return nil
	}
	return &cliError{code: 1, msg: fmt.Sprintf("invalid -format %q: want table or json", f)}
}

// isSet reports whether flag name was given on the command line.
func (c *cmdFlags) isSet(name string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// wantArgs checks the number of positional arguments.
func (c *cmdFlags) wantArgs(args []string, names ...string) error {
	if len(args) == len(names) {
		return nil
	}
	want := strings.Join(names, " ")
	switch {
	case len(names) == 0:
		return usageErrorf(c.name, "unexpected argument %q: %s takes no arguments", args[0], c.name)
	case len(args) < len(names):
		return usageErrorf(c.name, "missing %s: %s %s", names[len(args)], c.name, c.synopsis)
	default:
		return usageErrorf(c.name, "too many arguments: want %s, got %d arguments", want, len(args))
	}
}

// clientConfig builds the api configuration: flags win over the environment.
func (c *cmdFlags) clientConfig(e *env) (api.Config, error) {
	cfg := api.Config{
		Endpoints: api.SplitEndpoints(e.getenv(api.EnvAddr)),
		Token:     e.getenv(api.EnvToken),
	}
	if c.isSet("address") {
		cfg.Endpoints = api.SplitEndpoints(c.address)
		if len(cfg.Endpoints) == 0 {
			return cfg, &cliError{code: 1, msg: "-address is empty: give host:port[,host:port…] (http://host:port for a node without TLS)"}
		}
	}
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = []string{api.DefaultAddr}
	}
	if c.isSet("token") {
		cfg.Token = c.token
	}
	cfg.DisableStaleFallback = c.noStaleFallback
	tlsCfg, err := c.clientTLS(e)
	if err != nil {
		return cfg, err
	}
	cfg.TLS = tlsCfg
	return cfg, nil
}

// client opens an api client for the command.
func (c *cmdFlags) client(e *env) (*api.Client, error) {
	cfg, err := c.clientConfig(e)
	if err != nil {
		return nil, err
	}
	return c.clientWith(cfg)
}

// clientWith opens an api client with cfg.
func (c *cmdFlags) clientWith(cfg api.Config) (*api.Client, error) {
	cl, err := api.New(cfg)
	if err != nil {
		return nil, &cliError{code: 1, msg: err.Error()}
	}
	return cl, nil
}

// clientFor is the start of most client commands: it parses args, checks
// that exactly the named positional arguments are there, and opens the api
// client (the caller closes it).
func (c *cmdFlags) clientFor(e *env, args []string, names ...string) ([]string, *api.Client, error) {
	args, err := c.parse(e, args)
	if err != nil {
		return nil, nil, err
	}
	if err := c.wantArgs(args, names...); err != nil {
		return nil, nil, err
	}
	cl, err := c.client(e)
	if err != nil {
		return nil, nil, err
	}
	return args, cl, nil
}

// callError turns an error from the api client into the one-line CLI
// error: the status message, and when no node could be reached the
// endpoints tried and a hint. tried lists the endpoints the call may have
// used. notFoundCode is the exit code when the secret or version does not
// exist (0 means 1). Decisions come from the error's reason and code, never
// from its text.
func callError(err error, tried []string, notFoundCode int) error {
	st := status.Convert(err)
	msg := st.Message()
	if msg == "" {
		msg = st.Code().String()
	}
	code := 1
	var transport *api.TransportError
	switch {
	case errors.As(err, &transport):
		// Names the cause and what to do already.
		msg = transport.Error()
	case api.IsNotFound(err) && notFoundCode != 0:
		code = notFoundCode
	case api.IsUnreachable(err):
		msg = fmt.Sprintf("cannot reach %s: %s: is the server running? check %s / -address", strings.Join(tried, ", "), msg, api.EnvAddr)
	case st.Code() == codes.DeadlineExceeded:
		msg = fmt.Sprintf("no answer from %s in time: %s", strings.Join(tried, ", "), msg)
	}
	return &cliError{code: code, msg: msg}
}

// readFlags are the consistency flags of every read.
type readFlags struct {
	consistency  string
	maxStaleness time.Duration
	minIndex     uint64
}

// withRead adds -consistency, -max-staleness and -min-index.
func (c *cmdFlags) withRead(r *readFlags) {
	c.fs.StringVar(&r.consistency, "consistency", "default", "read consistency: stale, default or linearizable")
	c.fs.DurationVar(&r.maxStaleness, "max-staleness", 0, "with -consistency=stale: refuse an answer older than this (e.g. 5s); 0 means no bound")
	c.fs.Uint64Var(&r.minIndex, "min-index", 0, "wait until the node has applied this Raft index (the index a write returned)")
	c.fs.BoolFunc("stale-fallback", "with -consistency=default: when no node can answer consistently, answer from a stale read, marked stale (default true; false fails instead). A linearizable read never falls back", func(v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		c.noStaleFallback = !b
		return nil
	})
}

// options converts the read flags to the wire form.
func (r *readFlags) options() (*pb.ReadOptions, error) {
	o := &pb.ReadOptions{MinIndex: r.minIndex}
	switch r.consistency {
	case "default", "":
		o.Consistency = pb.Consistency_CONSISTENCY_DEFAULT
	case "stale":
		o.Consistency = pb.Consistency_CONSISTENCY_STALE
	case "linearizable":
		o.Consistency = pb.Consistency_CONSISTENCY_LINEARIZABLE
	default:
		return nil, &cliError{code: 1, msg: fmt.Sprintf("invalid -consistency %q: want stale, default or linearizable", r.consistency)}
	}
	if r.maxStaleness < 0 {
		return nil, &cliError{code: 1, msg: fmt.Sprintf("invalid -max-staleness %s: want a positive duration such as 5s", r.maxStaleness)}
	}
	if r.maxStaleness > 0 {
		o.MaxStalenessMs = max(r.maxStaleness.Milliseconds(), 1)
	}
	return o, nil
}

// parseVersions parses the value of -versions: comma-separated positive
// integers.
func parseVersions(s string) ([]uint64, error) {
	bad := &cliError{code: 1, msg: fmt.Sprintf("invalid -versions %q: want comma-separated positive integers", s)}
	if strings.TrimSpace(s) == "" {
		return nil, bad
	}
	var out []uint64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil || v == 0 {
			return nil, bad
		}
		out = append(out, v)
	}
	return out, nil
}

// optUint is a uint64 flag that remembers whether it was set.
type optUint struct {
	v   uint64
	set bool
}

func (o *optUint) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.v, 10)
}

func (o *optUint) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return errors.New("want a non-negative integer")
	}
	o.v, o.set = v, true
	return nil
}
