package main

import (
	"context"
	"fmt"
)

const auditUsage = `Usage: coffer audit <command> [flags] [args]

Commands:
    hash    Print a value as the audit logs write it, to search them for it

Audit files are set on each node with -audit-file (never through the API).
`

func cmdAuditHash(e *env, args []string) error {
	f := newFlags("coffer audit hash", "[flags] VALUE", `
Print VALUE as every node's audit log writes it: HMAC-SHA256 under the
cluster's audit salt ("hmac-sha256:…"). Search the logs for that string to
find the calls that carried VALUE (a token, a secret_id, a secret value),
without writing VALUE anywhere. Needs update and sudo on sys/audit-hash.`).withClient()
	args, c, err := f.clientFor(e, args, "VALUE")
	if err != nil {
		return err
	}
	defer c.Close()
	h, err := c.AuditHash(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"hash": h})
	}
	fmt.Fprintln(e.stdout, h)
	return nil
}
