package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"coffer/internal/tlsutil"
)

const certUsage = `Usage: coffer cert <command> [flags] [args]

Make and list the cluster's certificates (CockroachDB's layout): a
certificates directory holds ca.crt, node.crt and node.key, and
client.NAME.crt and client.NAME.key; the CA key lives elsewhere.

Commands:
    create-ca       Create the CA: -ca-key=FILE and DIR/ca.crt
    create-node     Create DIR/node.crt and node.key for the given hosts
    create-client   Create DIR/client.NAME.crt and .key
    list            Describe the certificates of DIR
    role            Certificate login roles: write, read, list, delete
                    (run "coffer cert role -h")

Run "coffer cert <command> -h" for its flags.
`

// certFlags are the flags every cert command shares.
type certFlags struct {
	*cmdFlags
	certsDir  string
	caKey     string
	lifetime  time.Duration
	overwrite bool
}

// newCertFlags adds -certs-dir and, for the create commands, -ca-key,
// -lifetime and -overwrite.
func newCertFlags(name, synopsis, help string, create bool) *certFlags {
	c := &certFlags{cmdFlags: newFlags(name, synopsis, help)}
	c.fs.StringVar(&c.certsDir, "certs-dir", "", "the certificates directory (required)")
	if create {
		c.fs.StringVar(&c.caKey, "ca-key", "", "the CA's private key file; keep it out of the certificates directory (required)")
		c.fs.DurationVar(&c.lifetime, "lifetime", 0, "how long the certificate is valid (default: 10 years for a CA, 5 years otherwise; never past the CA)")
		c.fs.BoolVar(&c.overwrite, "overwrite", false, "replace existing files")
	}
	return c
}

// check validates the shared flags.
func (c *certFlags) check(create bool) error {
	if c.certsDir == "" {
		return usageErrorf(c.name, "-certs-dir is required")
	}
	if create && c.caKey == "" {
		return usageErrorf(c.name, "-ca-key is required: the CA's private key file")
	}
	if create && c.caKey != "" && filepath.Clean(filepath.Dir(c.caKey)) == filepath.Clean(c.certsDir) {
		return usageErrorf(c.name, "-ca-key must not be in -certs-dir: every node gets that directory, and the CA key signs certificates")
	}
	if c.lifetime < 0 {
		return usageErrorf(c.name, "-lifetime=%s: want a positive duration such as 8760h", c.lifetime)
	}
	return nil
}

// certError turns a tlsutil error into a one-line CLI error.
func certError(err error) error {
	if err == nil {
		return nil
	}
	return &cliError{code: 1, msg: strings.TrimPrefix(err.Error(), "tlsutil: ")}
}

func cmdCertCreateCA(e *env, args []string) error {
	f := newCertFlags("coffer cert create-ca", "-certs-dir=DIR -ca-key=FILE [flags]", `
Create the cluster's CA: a new ECDSA P-256 key in -ca-key (mode 0600) and
its certificate in DIR/ca.crt. Keep the key off the nodes.`, true)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if err := f.check(true); err != nil {
		return err
	}
	if err := certError(tlsutil.CreateCA(f.certsDir, f.caKey, f.lifetime, f.overwrite)); err != nil {
		return err
	}
	return certDone(e, f, tlsutil.CAFile)
}

func cmdCertCreateNode(e *env, args []string) error {
	f := newCertFlags("coffer cert create-node", "-certs-dir=DIR -ca-key=FILE [flags] HOST...", `
Create DIR/node.crt and DIR/node.key, signed by the CA, for every HOST (a
DNS name or an IP address) by which clients and other nodes reach the node.
Nodes use it to prove themselves to each other (mutual TLS) and as the
API's server certificate.`, true)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usageErrorf(f.name, "give at least one HOST the node is reached by (e.g. coffer1 localhost 127.0.0.1)")
	}
	if err := f.check(true); err != nil {
		return err
	}
	if err := certError(tlsutil.CreateNode(f.certsDir, f.caKey, args, f.lifetime, f.overwrite)); err != nil {
		return err
	}
	return certDone(e, f, tlsutil.NodeCertFile)
}

func cmdCertCreateClient(e *env, args []string) error {
	f := newCertFlags("coffer cert create-client", "-certs-dir=DIR -ca-key=FILE [flags] NAME", `
Create DIR/client.NAME.crt and DIR/client.NAME.key, signed by the CA, with
the common name NAME (e.g. root, the operator who runs init).`, true)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "NAME"); err != nil {
		return err
	}
	if err := f.check(true); err != nil {
		return err
	}
	if err := certError(tlsutil.CreateClient(f.certsDir, f.caKey, args[0], f.lifetime, f.overwrite)); err != nil {
		return err
	}
	return certDone(e, f, tlsutil.ClientCertFile(args[0]))
}

// certDone prints the certificate just made.
func certDone(e *env, f *certFlags, file string) error {
	infos, err := tlsutil.List(f.certsDir)
	if err != nil {
		return certError(err)
	}
	for _, i := range infos {
		if i.File == file {
			return printCerts(e, f.format, []tlsutil.CertInfo{i})
		}
	}
	return nil
}

func cmdCertList(e *env, args []string) error {
	f := newCertFlags("coffer cert list", "-certs-dir=DIR", `
Describe every certificate in DIR: subject, names, usage and validity.`, false)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if err := f.check(false); err != nil {
		return err
	}
	infos, err := tlsutil.List(f.certsDir)
	if err != nil {
		return certError(err)
	}
	if len(infos) == 0 {
		if _, err := os.Stat(f.certsDir); errors.Is(err, os.ErrNotExist) {
			return &cliError{code: 1, msg: fmt.Sprintf("no directory %s: create the CA with `coffer cert create-ca -certs-dir=%s -ca-key=FILE`", f.certsDir, f.certsDir)}
		}
	}
	return printCerts(e, f.format, infos)
}

// printCerts prints certificate descriptions as a table or JSON.
func printCerts(e *env, format string, infos []tlsutil.CertInfo) error {
	if format == formatJSON {
		if infos == nil {
			infos = []tlsutil.CertInfo{}
		}
		return printJSON(e.stdout, infos)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "File\tSubject\tNames\tUsage\tExpires")
	for _, i := range infos {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", i.File, i.Subject, strings.Join(i.Names, ","), strings.Join(i.Usage, ","), i.NotAfter.UTC().Format("2006-01-02"))
	}
	return w.Flush()
}
