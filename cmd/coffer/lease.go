package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	pb "coffer/api/cofferpb"
)

const leaseUsage = `Usage: coffer lease <command> [flags] [args]

The leases of dynamic secrets (database users). A lease ends at its TTL
unless renewed, and never later than its max TTL; the leader then revokes
what it stands for, retrying with backoff until it succeeds.

Commands:
    lookup    Print a lease: LEASE_ID
    renew     Extend a lease: [-increment=D] LEASE_ID
    revoke    Revoke a lease now: LEASE_ID, or every lease under a prefix: -prefix PREFIX
              (-force -prefix forgets leases whose revocation can never succeed)
    list      List leases: [-prefix=P] [-failed]

Run "coffer lease <command> -h" for its flags.
`

func cmdLease(e *env, args []string) error {
	return dispatchSub(e, "coffer lease", leaseUsage, args, map[string]func(*env, []string) error{
		"lookup": cmdLeaseLookup,
		"renew":  cmdLeaseRenew,
		"revoke": cmdLeaseRevoke,
		"list":   cmdLeaseList,
	})
}

// leaseJSON is a lease in the CLI's JSON output (Vault's lookup fields,
// then coffer's own).
type leaseJSON struct {
	ID              string `json:"id"`
	IssueTime       string `json:"issue_time"`
	ExpireTime      string `json:"expire_time"`
	LastRenewalTime string `json:"last_renewal_time,omitempty"`
	Renewable       bool   `json:"renewable"`
	TTL             int64  `json:"ttl"`
	MaxExpireTime   string `json:"max_expire_time,omitempty"`
	State           string `json:"state"`
	Attempts        int32  `json:"revocation_attempts,omitempty"`
	LastError       string `json:"last_error,omitempty"`
}

func toLeaseJSON(l *pb.LeaseInfo) leaseJSON {
	return leaseJSON{
		ID: l.GetId(), IssueTime: fmtTime(l.GetIssueTimeUnixNano()), ExpireTime: fmtTime(l.GetExpireTimeUnixNano()),
		LastRenewalTime: fmtTime(l.GetLastRenewalUnixNano()), Renewable: l.GetRenewable(), TTL: l.GetTtlSeconds(),
		MaxExpireTime: fmtTime(l.GetMaxExpireTimeUnixNano()), State: l.GetState(), Attempts: l.GetAttempts(), LastError: l.GetLastError(),
	}
}

func printLease(e *env, format string, l *pb.LeaseInfo) error {
	j := toLeaseJSON(l)
	if format == formatJSON {
		return printJSON(e.stdout, j)
	}
	for _, w := range l.GetWarnings() {
		fmt.Fprintln(e.stderr, "WARNING! "+w)
	}
	rows := []row{
		{"id", j.ID}, {"issue_time", j.IssueTime}, {"expire_time", j.ExpireTime},
		{"last_renewal", orNA(j.LastRenewalTime)}, {"renewable", strconv.FormatBool(j.Renewable)},
		{"ttl", seconds(j.TTL)}, {"max_expire_time", orNA(j.MaxExpireTime)}, {"state", j.State},
	}
	if j.Attempts > 0 {
		rows = append(rows, row{"revocation_attempts", strconv.Itoa(int(j.Attempts))}, row{"last_error", j.LastError})
	}
	printKV(e.stdout, rows)
	return nil
}

func cmdLeaseLookup(e *env, args []string) error {
	f := newFlags("coffer lease lookup", "[flags] LEASE_ID", `
Print the lease LEASE_ID: when it was issued, when it ends, and whether
its revocation has failed.`).withClient()
	args, c, err := f.clientFor(e, args, "LEASE_ID")
	if err != nil {
		return err
	}
	defer c.Close()
	l, err := c.LookupLease(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printLease(e, f.format, l)
}

func cmdLeaseRenew(e *env, args []string) error {
	f := newFlags("coffer lease renew", "[flags] LEASE_ID", `
Extend the lease LEASE_ID by -increment from now (default: its TTL), never
past its max TTL (a renewal that is capped says so).`).withClient()
	inc := f.fs.Duration("increment", 0, "the new TTL from now (0: the lease's TTL)")
	args, c, err := f.clientFor(e, args, "LEASE_ID")
	if err != nil {
		return err
	}
	defer c.Close()
	if *inc < 0 {
		return &cliError{code: 1, msg: "-increment must not be negative"}
	}
	l, err := c.RenewLease(context.Background(), args[0], int64(*inc/time.Second))
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	return printLease(e, f.format, l)
}

func cmdLeaseRevoke(e *env, args []string) error {
	f := newFlags("coffer lease revoke", "[flags] LEASE_ID | -prefix PREFIX", `
Revoke the lease LEASE_ID now (its database user is dropped). With
-prefix, every lease under the folder PREFIX (database/creds/app: app's
leases, not app2's) is made due and the leader revokes them all. With
-force -prefix, the leases under PREFIX are removed WITHOUT revoking
(Vault's revoke-force): only for revocations that can never succeed; their
database users stay.`).withClient()
	prefix := f.fs.Bool("prefix", false, "revoke every lease under the argument")
	force := f.fs.Bool("force", false, "with -prefix: remove the leases without revoking them")
	args, c, err := f.clientFor(e, args, "LEASE_ID")
	if err != nil {
		return err
	}
	defer c.Close()
	if *force && !*prefix {
		return &cliError{code: 1, msg: "-force works with -prefix only: give -force -prefix PREFIX"}
	}
	var resp *pb.LeaseRevokeResponse
	if *force {
		resp, err = c.RevokeLeaseForce(context.Background(), args[0])
	} else if *prefix {
		resp, err = c.RevokeLeasePrefix(context.Background(), args[0])
	} else {
		resp, err = c.RevokeLease(context.Background(), args[0])
	}
	if err != nil {
		return callError(err, c.Endpoints(), 2)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]any{"count": resp.GetCount(), "warnings": orEmpty(resp.GetWarnings())})
	}
	for _, w := range resp.GetWarnings() {
		fmt.Fprintln(e.stderr, "WARNING! "+w)
	}
	if *force {
		fmt.Fprintf(e.stdout, "Success! Forgot %d lease(s) under %s without revoking them\n", resp.GetCount(), args[0])
	} else if *prefix {
		fmt.Fprintf(e.stdout, "Success! Revoking %d lease(s) under %s\n", resp.GetCount(), args[0])
	} else {
		fmt.Fprintf(e.stdout, "Success! Revoked lease: %s\n", args[0])
	}
	return nil
}

func cmdLeaseList(e *env, args []string) error {
	f := newFlags("coffer lease list", "[flags]", `
List the leases under the folder -prefix (database/creds/app: app's
leases, not app2's), page by page. -failed lists
only leases whose revocation has failed, with the last error: coffer keeps
retrying them.`).withClient()
	prefix := f.fs.String("prefix", "", "only leases under this prefix")
	failed := f.fs.Bool("failed", false, "only leases whose revocation failed")
	_, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	var all []leaseJSON
	after := ""
	for {
		resp, err := c.ListLeases(context.Background(), &pb.LeaseListRequest{Prefix: *prefix, Failed: *failed, After: after})
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		for _, l := range resp.GetLeases() {
			j := toLeaseJSON(l)
			if f.format != formatJSON {
				if *failed {
					fmt.Fprintf(e.stdout, "%s\tattempts=%d\t%s\n", j.ID, j.Attempts, j.LastError)
				} else {
					fmt.Fprintln(e.stdout, j.ID)
				}
			}
			all = append(all, j)
			after = j.ID
		}
		if !resp.GetMore() || len(resp.GetLeases()) == 0 {
			break
		}
	}
	if f.format == formatJSON {
		if all == nil {
			all = []leaseJSON{}
		}
		return printJSON(e.stdout, all)
	}
	return nil
}
