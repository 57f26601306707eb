package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"coffer/server/acl"
)

const policyUsage = `Usage: coffer policy <command> [flags] [args]

Commands:
    write     Create or replace a policy: NAME FILE (or - for stdin)
    read      Print a policy's text
    list      List the policies
    delete    Remove a policy
    lint      Report rules that do not do what they seem to: FILE or NAME

Policies use Vault's syntax and paths (HCL or JSON), for example:

    path "secret/data/payments/*" { capabilities = ["read"] }

Run "coffer policy <command> -h" for its flags.
`

// maxPolicyFile bounds what policy write and lint read.
const maxPolicyFile = 1 << 20

// readPolicyText reads a policy from FILE, or from stdin for "-".
func readPolicyText(e *env, arg string) (string, error) {
	var r io.Reader
	if arg == "-" {
		r = e.stdin
	} else {
		f, err := os.Open(arg)
		if err != nil {
			return "", &cliError{code: 1, msg: fmt.Sprintf("cannot read the policy: %v", err)}
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxPolicyFile+1))
	if err != nil {
		return "", &cliError{code: 1, msg: fmt.Sprintf("cannot read the policy: %v", err)}
	}
	if len(b) > maxPolicyFile {
		return "", &cliError{code: 1, msg: fmt.Sprintf("the policy is larger than %d bytes", maxPolicyFile)}
	}
	return string(b), nil
}

func cmdPolicyWrite(e *env, args []string) error {
	f := newFlags("coffer policy write", "[flags] NAME FILE", `
Create or replace the policy NAME with the text of FILE (- reads stdin).
A policy that does not parse is refused with its line and column.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME", "FILE")
	if err != nil {
		return err
	}
	defer c.Close()
	text, err := readPolicyText(e, args[1])
	if err != nil {
		return err
	}
	resp, err := c.WritePolicy(context.Background(), args[0], text)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, writeJSON{Index: resp.GetRaftIndex()})
	}
	fmt.Fprintf(e.stdout, "Success! Uploaded policy: %s\n", args[0])
	return nil
}

func cmdPolicyRead(e *env, args []string) error {
	f := newFlags("coffer policy read", "[flags] NAME", `
Print the text of the policy NAME as it was written.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := c.ReadPolicy(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"name": p.GetName(), "policy": p.GetPolicy()})
	}
	fmt.Fprint(e.stdout, p.GetPolicy())
	if !strings.HasSuffix(p.GetPolicy(), "\n") {
		fmt.Fprintln(e.stdout)
	}
	return nil
}

func cmdPolicyList(e *env, args []string) error {
	f := newFlags("coffer policy list", "[flags]", `
List the names of the policies (root and default included).`).withClient()
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := c.ListPolicies(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, names)
	}
	for _, n := range names {
		fmt.Fprintln(e.stdout, n)
	}
	return nil
}

func cmdPolicyDelete(e *env, args []string) error {
	f := newFlags("coffer policy delete", "[flags] NAME", `
Remove the policy NAME. Tokens that name it keep their other policies.`).withClient()
	args, c, err := f.clientFor(e, args, "NAME")
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeletePolicy(context.Background(), args[0]); err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"deleted": args[0]})
	}
	fmt.Fprintf(e.stdout, "Success! Deleted policy: %s\n", args[0])
	return nil
}

// lintJSON is one finding of `coffer policy lint -format=json`.
type lintJSON struct {
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Path    string `json:"path"`
	Message string `json:"message"`
}

func cmdPolicyLint(e *env, args []string) error {
	f := newFlags("coffer policy lint", "[flags] FILE|NAME", `
Report what a policy does not do as it seems to: a deny that a more
specific rule overrides, rules that can never match what they name. FILE
is read when it exists (- reads stdin); otherwise NAME is read from the
cluster. Exits 2 when there are findings.`).withClient()
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "FILE|NAME"); err != nil {
		return err
	}
	name, text := args[0], ""
	if _, statErr := os.Stat(args[0]); statErr == nil || args[0] == "-" {
		if text, err = readPolicyText(e, args[0]); err != nil {
			return err
		}
		name = "file"
	} else {
		c, err := f.client(e)
		if err != nil {
			return err
		}
		defer c.Close()
		p, err := c.ReadPolicy(context.Background(), args[0])
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		text = p.GetPolicy()
	}
	pol, err := acl.Parse(name, []byte(text))
	if err != nil {
		return &cliError{code: 1, msg: err.Error()}
	}
	findings := acl.Lint(pol)
	if f.format == formatJSON {
		out := []lintJSON{}
		for _, fd := range findings {
			out = append(out, lintJSON{Line: fd.Line, Column: fd.Column, Path: fd.Pattern, Message: fd.Message})
		}
		if err := printJSON(e.stdout, out); err != nil {
			return err
		}
	} else {
		for _, fd := range findings {
			fmt.Fprintf(e.stdout, "%s:%d:%d: path %q: %s\n", args[0], fd.Line, fd.Column, fd.Pattern, fd.Message)
		}
		if len(findings) == 0 {
			fmt.Fprintln(e.stdout, "No findings.")
		}
	}
	if len(findings) > 0 {
		return silentExit(2)
	}
	return nil
}
