package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

const kvUsage = `Usage: coffer kv <command> [flags] [args]

Commands:
    put         Write a new version of a secret: PATH KEY=VALUE…
    get         Read a secret (the current version by default)
    delete      Soft-delete versions (the current one by default)
    undelete    Restore soft-deleted versions
    destroy     Remove versions' data for good
    list        List the keys under a path
    metadata    Read, configure or delete a secret with all its versions

Paths are MOUNT/rest, for example secret/payments/db. Run
"coffer kv <command> -h" for its flags.
`

const kvMetadataUsage = `Usage: coffer kv metadata <command> [flags] PATH

Commands:
    get       Show every version of a secret with its times and states
    put       Set -max-versions and -cas-required of a secret
    delete    Remove a secret with all its versions, for good
`

// putJSON is the JSON output of `coffer kv put`.
type putJSON struct {
	Version     uint64 `json:"version"`
	Index       uint64 `json:"index"`
	CreatedTime string `json:"created_time"`
}

func cmdKVPut(e *env, args []string) error {
	f := newFlags("coffer kv put", "[flags] PATH KEY=VALUE [KEY=VALUE…]", `
Write a new version of the secret at PATH with the given keys and values.
KEY=@FILE reads the value from FILE, KEY=- from stdin (at most once);
KEY=\@… stores a value that starts with a literal "@". The secret's previous
keys are not merged: the new version holds exactly the keys given.`).withClient()
	var cas optUint
	f.fs.Var(&cas, "cas", "check-and-set: write only if the current version is N (0: only if the secret does not exist)")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usageErrorf(f.name, "missing PATH: %s %s", f.name, f.synopsis)
	}
	if len(args) == 1 {
		return usageErrorf(f.name, "no data for %s: give at least one KEY=VALUE", args[0])
	}
	data, err := parsePairs(args[1:], e.stdin)
	if err != nil {
		return err
	}
	req := &pb.PutRequest{Path: args[0], Data: data}
	if cas.set {
		req.Cas = &cas.v
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Put(context.Background(), req)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	out := putJSON{Version: resp.GetVersion(), Index: resp.GetIndex(), CreatedTime: fmtTime(resp.GetCreatedTimeUnixNano())}
	if f.format == formatJSON {
		return printJSON(e.stdout, out)
	}
	printHeader(e.stdout, "Secret Path")
	fmt.Fprintln(e.stdout, args[0])
	fmt.Fprintln(e.stdout)
	printHeader(e.stdout, "Metadata")
	printKV(e.stdout, []row{
		{"created_time", out.CreatedTime},
		{"index", fmt.Sprint(out.Index)},
		{"version", fmt.Sprint(out.Version)},
	})
	return nil
}

// parsePairs parses KEY=VALUE arguments. KEY=@FILE reads FILE, KEY=- reads
// all of stdin (at most one such pair), KEY=\@x stores "@x". Errors name the
// offending argument but never echo a value.
func parsePairs(args []string, stdin io.Reader) (map[string]string, error) {
	data := make(map[string]string, len(args))
	stdinKey := ""
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		switch {
		case !ok:
			return nil, &cliError{code: 1, msg: fmt.Sprintf("invalid argument %q: want KEY=VALUE (or KEY=@FILE, KEY=-)", a)}
		case k == "":
			return nil, &cliError{code: 1, msg: "invalid argument \"=…\": the key before \"=\" is empty: want KEY=VALUE"}
		}
		if _, dup := data[k]; dup {
			return nil, &cliError{code: 1, msg: fmt.Sprintf("duplicate key %q: give each key once", k)}
		}
		switch {
		case v == "-":
			if stdinKey != "" {
				return nil, &cliError{code: 1, msg: fmt.Sprintf("%q and %q both read stdin: at most one KEY=- is allowed", stdinKey+"=-", k+"=-")}
			}
			stdinKey = k
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, &cliError{code: 1, msg: fmt.Sprintf("reading the value of %q from stdin: %v", k, err)}
			}
			v = string(b)
		case strings.HasPrefix(v, "@"):
			name := v[1:]
			if name == "" {
				return nil, &cliError{code: 1, msg: fmt.Sprintf("invalid argument %q: want KEY=@FILE with a file name", a)}
			}
			b, err := os.ReadFile(name)
			if err != nil {
				return nil, &cliError{code: 1, msg: fmt.Sprintf("reading the value of %q: %v", k, err)}
			}
			v = string(b)
		case strings.HasPrefix(v, `\@`):
			v = v[1:]
		}
		data[k] = v
	}
	return data, nil
}

// getJSON is the JSON output of `coffer kv get`.
type getJSON struct {
	Data     map[string]string `json:"data"`
	Metadata getMetaJSON       `json:"metadata"`
	ReadMeta *readMetaJSON     `json:"read_meta,omitempty"`
}

// getMetaJSON is the version's metadata in `kv get`.
type getMetaJSON struct {
	Version      uint64 `json:"version"`
	CreatedTime  string `json:"created_time"`
	Deleted      bool   `json:"deleted"`
	DeletionTime string `json:"deletion_time,omitempty"`
	Destroyed    bool   `json:"destroyed"`
}

// kvGetOpts is the parsed command line of `coffer kv get`.
type kvGetOpts struct {
	flags    *cmdFlags
	path     string
	version  uint64
	field    string
	fieldSet bool
	read     *pb.ReadOptions
}

func parseKVGet(e *env, args []string) (*kvGetOpts, error) {
	f := newFlags("coffer kv get", "[flags] PATH", `
Read the secret at PATH: the current version, or -version=N. -field=KEY
prints only that key's value and a newline. Exit code 2 when there is no
such secret or version, or it is deleted or destroyed.`).withClient()
	version := f.fs.Uint64("version", 0, "version to read (0: the current one)")
	field := f.fs.String("field", "", "print only the value of this key")
	var rf readFlags
	f.withRead(&rf)
	args, err := f.parse(e, args)
	if err != nil {
		return nil, err
	}
	if err := f.wantArgs(args, "PATH"); err != nil {
		return nil, err
	}
	read, err := rf.options()
	if err != nil {
		return nil, err
	}
	return &kvGetOpts{flags: f, path: args[0], version: *version, field: *field, fieldSet: f.isSet("field"), read: read}, nil
}

func cmdKVGet(e *env, args []string) error {
	o, err := parseKVGet(e, args)
	if err != nil {
		return err
	}
	f := o.flags
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Get(context.Background(), &pb.GetRequest{Path: o.path, Version: o.version, Read: o.read})
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if o.fieldSet {
		// A script reads the value from stdout; stderr still says when it
		// may be stale.
		warnStale(e.stderr, resp.GetReadMeta())
		v, ok := resp.GetData()[o.field]
		if !ok {
			return &cliError{code: 1, msg: fmt.Sprintf("field %q not present in secret %s (version %d)", o.field, o.path, resp.GetMetadata().GetVersion())}
		}
		if f.format == formatJSON {
			return printJSON(e.stdout, v)
		}
		fmt.Fprintln(e.stdout, v)
		return nil
	}
	md := resp.GetMetadata()
	out := getJSON{
		Data: resp.GetData(),
		Metadata: getMetaJSON{
			Version:      md.GetVersion(),
			CreatedTime:  fmtTime(md.GetCreatedTimeUnixNano()),
			Deleted:      md.GetDeletionTimeUnixNano() != 0 && md.GetDeletionTimeUnixNano() <= time.Now().UnixNano(),
			DeletionTime: fmtTime(md.GetDeletionTimeUnixNano()),
			Destroyed:    md.GetDestroyed(),
		},
		ReadMeta: toReadMeta(resp.GetReadMeta()),
	}
	if out.Data == nil {
		out.Data = map[string]string{}
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, out)
	}
	warnStale(e.stderr, resp.GetReadMeta())
	printHeader(e.stdout, "Secret Path")
	fmt.Fprintln(e.stdout, o.path)
	fmt.Fprintln(e.stdout)
	printHeader(e.stdout, "Metadata")
	printKV(e.stdout, []row{
		{"created_time", out.Metadata.CreatedTime},
		{"deletion_time", orNA(out.Metadata.DeletionTime)},
		{"destroyed", fmt.Sprint(out.Metadata.Destroyed)},
		{"version", fmt.Sprint(out.Metadata.Version)},
	})
	fmt.Fprintln(e.stdout)
	printHeader(e.stdout, "Data")
	keys := make([]string, 0, len(out.Data))
	for k := range out.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rows := make([]row, len(keys))
	for i, k := range keys {
		rows[i] = row{k, out.Data[k]}
	}
	printKV(e.stdout, rows)
	return nil
}

// writeJSON is the JSON output of the writes that return only an index.
type writeJSON struct {
	Index uint64 `json:"index"`
}

// versionsCmd is delete, undelete or destroy.
type versionsCmd struct {
	name     string
	help     string
	required bool
	verb     string // for the success line
	call     func(*api.Client, context.Context, *pb.VersionsRequest) (*pb.WriteResponse, error)
}

func cmdKVDelete(e *env, args []string) error {
	return runVersions(e, args, versionsCmd{
		name: "delete",
		help: `
Soft-delete versions of the secret at PATH: the current version, or those
given with -versions. Their data stays until destroyed or pruned and can be
restored with "coffer kv undelete".`,
		verb: "deleted",
		call: (*api.Client).Delete,
	})
}

func cmdKVUndelete(e *env, args []string) error {
	return runVersions(e, args, versionsCmd{
		name: "undelete",
		help: `
Restore soft-deleted versions of the secret at PATH.`,
		required: true,
		verb:     "undeleted",
		call:     (*api.Client).Undelete,
	})
}

func cmdKVDestroy(e *env, args []string) error {
	return runVersions(e, args, versionsCmd{
		name: "destroy",
		help: `
Remove the data of versions of the secret at PATH for good. Their metadata
stays, marked destroyed.`,
		required: true,
		verb:     "destroyed",
		call:     (*api.Client).Destroy,
	})
}

func runVersions(e *env, args []string, vc versionsCmd) error {
	synopsis := "[flags] PATH"
	if vc.required {
		synopsis = "[flags] -versions=N[,N…] PATH"
	}
	f := newFlags("coffer kv "+vc.name, synopsis, vc.help).withClient()
	versionsHelp := "comma-separated versions, e.g. 1,2"
	if !vc.required {
		versionsHelp += " (default: the current version)"
	}
	versionsFlag := f.fs.String("versions", "", versionsHelp)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "PATH"); err != nil {
		return err
	}
	var versions []uint64
	switch {
	case f.isSet("versions"):
		if versions, err = parseVersions(*versionsFlag); err != nil {
			return err
		}
	case vc.required:
		return usageErrorf(f.name, "-versions is required: give the versions to %s, e.g. -versions=1,2", vc.name)
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := vc.call(c, context.Background(), &pb.VersionsRequest{Path: args[0], Versions: versions})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, writeJSON{Index: resp.GetIndex()})
	}
	fmt.Fprintf(e.stdout, "Success! Data %s at: %s\n", vc.verb, args[0])
	return nil
}

// listJSON is the JSON output of `coffer kv list`.
type listJSON struct {
	Keys      []string      `json:"keys"`
	NextAfter string        `json:"next_after,omitempty"`
	ReadMeta  *readMetaJSON `json:"read_meta,omitempty"`
}

func cmdKVList(e *env, args []string) error {
	f := newFlags("coffer kv list", "[flags] PATH", `
List the keys directly under PATH; sub-folders end with "/". Every key is
listed, a page of 1,000 at a time; -limit=N lists one page of at most N keys
(at most 10,000), and -after=KEY the page after KEY (the next_after a page
printed).`).withClient()
	var rf readFlags
	f.withRead(&rf)
	limit := f.fs.Uint("limit", 0, "list one page of at most this many keys (0: every key, page by page)")
	after := f.fs.String("after", "", "list the keys after this one (a page's next_after)")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "PATH"); err != nil {
		return err
	}
	read, err := rf.options()
	if err != nil {
		return err
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	if *limit > 10000 {
		return usageErrorf(f.name, "-limit=%d: at most 10000 keys a page", *limit)
	}
	keys := []string{}
	req := &pb.ListRequest{Path: args[0], Read: read, Limit: uint32(*limit), After: *after}
	var resp *pb.ListResponse
	for {
		resp, err = c.List(context.Background(), req)
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		keys = append(keys, resp.GetKeys()...)
		if *limit > 0 || resp.GetNextAfter() == "" {
			break
		}
		req.After = resp.GetNextAfter()
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, listJSON{Keys: keys, NextAfter: resp.GetNextAfter(), ReadMeta: toReadMeta(resp.GetReadMeta())})
	}
	warnStale(e.stderr, resp.GetReadMeta())
	if next := resp.GetNextAfter(); next != "" && *limit > 0 {
		defer fmt.Fprintf(e.stderr, "More keys follow: run with -after=%s\n", next)
	}
	if len(keys) == 0 {
		fmt.Fprintf(e.stderr, "No keys under %s\n", args[0])
		return nil
	}
	fmt.Fprintln(e.stdout, "Keys")
	fmt.Fprintln(e.stdout, "----")
	for _, k := range keys {
		fmt.Fprintln(e.stdout, k)
	}
	return nil
}

// metadataJSON is the JSON output of `coffer kv metadata get`.
type metadataJSON struct {
	CurrentVersion uint64            `json:"current_version"`
	OldestVersion  uint64            `json:"oldest_version"`
	MaxVersions    uint32            `json:"max_versions"`
	CasRequired    bool              `json:"cas_required"`
	CreatedTime    string            `json:"created_time"`
	UpdatedTime    string            `json:"updated_time"`
	CustomMetadata map[string]string `json:"custom_metadata"`
	// DeleteVersionAfter is a Go duration ("0s": never).
	DeleteVersionAfter string            `json:"delete_version_after"`
	Versions           []metaVersionJSON `json:"versions"`
	ReadMeta           *readMetaJSON     `json:"read_meta,omitempty"`
}

// metaVersionJSON is one version in `kv metadata get`.
type metaVersionJSON struct {
	Version      uint64 `json:"version"`
	CreatedTime  string `json:"created_time"`
	DeletionTime string `json:"deletion_time"`
	Destroyed    bool   `json:"destroyed"`
}

func cmdKVMetadataGet(e *env, args []string) error {
	f := newFlags("coffer kv metadata get", "[flags] PATH", `
Show the secret at PATH with every version's times and states.`).withClient()
	var rf readFlags
	f.withRead(&rf)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "PATH"); err != nil {
		return err
	}
	read, err := rf.options()
	if err != nil {
		return err
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.ReadMetadata(context.Background(), &pb.ReadMetadataRequest{Path: args[0], Read: read})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	out := metadataJSON{
		CurrentVersion:     resp.GetCurrentVersion(),
		OldestVersion:      resp.GetOldestVersion(),
		MaxVersions:        resp.GetMaxVersions(),
		CasRequired:        resp.GetCasRequired(),
		CreatedTime:        fmtTime(resp.GetCreatedTimeUnixNano()),
		UpdatedTime:        fmtTime(resp.GetUpdatedTimeUnixNano()),
		CustomMetadata:     resp.GetCustomMetadata(),
		DeleteVersionAfter: time.Duration(resp.GetDeleteVersionAfterNanos()).String(),
		Versions:           []metaVersionJSON{},
		ReadMeta:           toReadMeta(resp.GetReadMeta()),
	}
	for _, v := range resp.GetVersions() {
		out.Versions = append(out.Versions, metaVersionJSON{
			Version:      v.GetVersion(),
			CreatedTime:  fmtTime(v.GetCreatedTimeUnixNano()),
			DeletionTime: fmtTime(v.GetDeletionTimeUnixNano()),
			Destroyed:    v.GetDestroyed(),
		})
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, out)
	}
	warnStale(e.stderr, resp.GetReadMeta())
	printHeader(e.stdout, "Metadata Path")
	fmt.Fprintln(e.stdout, args[0])
	fmt.Fprintln(e.stdout)
	printHeader(e.stdout, "Metadata")
	printKV(e.stdout, []row{
		{"cas_required", fmt.Sprint(out.CasRequired)},
		{"created_time", out.CreatedTime},
		{"current_version", fmt.Sprint(out.CurrentVersion)},
		{"custom_metadata", customText(out.CustomMetadata)},
		{"delete_version_after", out.DeleteVersionAfter},
		{"max_versions", fmt.Sprint(out.MaxVersions)},
		{"oldest_version", fmt.Sprint(out.OldestVersion)},
		{"updated_time", out.UpdatedTime},
	})
	for _, v := range out.Versions {
		fmt.Fprintln(e.stdout)
		printHeader(e.stdout, fmt.Sprintf("Version %d", v.Version))
		printKV(e.stdout, []row{
			{"created_time", v.CreatedTime},
			{"deletion_time", orNA(v.DeletionTime)},
			{"destroyed", fmt.Sprint(v.Destroyed)},
		})
	}
	return nil
}

// customText shows custom metadata as Vault's CLI does: map[k:v ...].
func customText(m map[string]string) string {
	if len(m) == 0 {
		return "<nil>"
	}
	return fmt.Sprint(m)
}

// pairsFlag collects repeated key=value flags; a value may hold any
// character, "=" and "," included.
type pairsFlag map[string]string

func (p pairsFlag) String() string {
	out := make([]string, 0, len(p))
	for k, v := range p {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func (p pairsFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	p[k] = v
	return nil
}

func cmdKVMetadataPut(e *env, args []string) error {
	f := newFlags("coffer kv metadata put", "[flags] PATH", `
Configure the secret at PATH: -max-versions (how many versions are kept;
0: the default), -cas-required (every write must give -cas),
-delete-version-after (a new version counts as deleted this long after it
is written; 0s: never) and -custom-metadata key=value (repeat it; the pairs
given replace all the secret's custom metadata). A setting not given keeps
its current value.`).withClient()
	maxVersions := f.fs.Uint("max-versions", 0, "number of versions to keep (0: the default)")
	casRequired := f.fs.Bool("cas-required", false, "require -cas on every write to this secret")
	dva := f.fs.Duration("delete-version-after", 0, "delete each new version this long after it is written (0s: never)")
	custom := pairsFlag{}
	f.fs.Var(custom, "custom-metadata", "a key=value of custom metadata (repeatable; replaces all)")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "PATH"); err != nil {
		return err
	}
	if *maxVersions > 1<<32-1 {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -max-versions %d: too large", *maxVersions)}
	}
	if *dva < 0 {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -delete-version-after %s: give 0s (never) or a positive duration such as 720h", *dva)}
	}
	req := &pb.WriteMetadataRequest{
		Path: args[0], MaxVersions: uint32(*maxVersions), CasRequired: *casRequired,
		DeleteVersionAfterNanos: int64(*dva), CustomMetadata: custom, OnlyFields: true,
	}
	for flag, field := range map[string]string{"max-versions": "max_versions", "cas-required": "cas_required", "delete-version-after": "delete_version_after", "custom-metadata": "custom_metadata"} {
		if f.isSet(flag) {
			req.Fields = append(req.Fields, field)
		}
	}
	sort.Strings(req.Fields)
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.WriteMetadata(context.Background(), req)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, writeJSON{Index: resp.GetIndex()})
	}
	fmt.Fprintf(e.stdout, "Success! Metadata written at: %s\n", args[0])
	return nil
}

func cmdKVMetadataDelete(e *env, args []string) error {
	f := newFlags("coffer kv metadata delete", "[flags] PATH", `
Remove the secret at PATH with all its versions and metadata, for good.`).withClient()
	args, c, err := f.clientFor(e, args, "PATH")
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.DeleteMetadata(context.Background(), &pb.DeleteMetadataRequest{Path: args[0]})
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, writeJSON{Index: resp.GetIndex()})
	}
	fmt.Fprintf(e.stdout, "Success! Data and metadata deleted at: %s\n", args[0])
	return nil
}
