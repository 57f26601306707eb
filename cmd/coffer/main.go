// Command coffer is the single coffer binary: the server and the CLI that
// talks to it.
//
//	coffer server [-dev] [-node-id=ID] [-data-dir=DIR] [-api-addr=H:P] [-raft-addr=H:P]
//	              [-gossip-addr=H:P] [-join=H:P,…] [-bootstrap-expect=N] [-read-replica] …
//	coffer status
//	coffer operator init [-key-shares=5] [-key-threshold=3]
//	coffer operator unseal [-reset] [SHARE]
//	coffer operator seal
//	coffer operator rotate
//	coffer operator members
//	coffer operator step-down
//	coffer operator raft list-peers
//	coffer operator raft remove-peer ID
//	coffer operator raft snapshot save FILE
//	coffer operator raft snapshot restore [-force] FILE
//	coffer operator raft snapshot list -dir=DIR
//	coffer operator raft snapshot inspect FILE
//	coffer kv put [-cas=N] PATH KEY=VALUE [KEY=@FILE] [KEY=-] …
//	coffer kv get [-version=N] [-field=KEY] PATH
//	coffer kv delete [-versions=1,2] PATH
//	coffer kv undelete -versions=1,2 PATH
//	coffer kv destroy -versions=1,2 PATH
//	coffer kv list PATH
//	coffer kv metadata get PATH
//	coffer kv metadata put [-max-versions=N] [-cas-required=BOOL] PATH
//	coffer kv metadata delete PATH
//	coffer login [-method=approle|jwt|cert|token] [-token-only] [TOKEN | KEY=VALUE …]
//	coffer approle role write|read|list|delete [flags] NAME
//	coffer approle role-id NAME
//	coffer approle secret-id NAME
//	coffer approle secret-id destroy -accessor=A NAME
//	coffer jwt config [-jwks-file=F | -jwks-url=URL | -pubkeys-file=F] [-bound-issuer=I]
//	coffer jwt role write|read|list|delete [flags] NAME
//	coffer cert role write|read|list|delete [flags] NAME
//	coffer database config|role|static-role write|read|list|delete [flags] NAME
//	coffer database creds ROLE | static-creds NAME | rotate-role NAME | rotate-root NAME
//	coffer lease lookup|renew|revoke|list [flags] [LEASE_ID]
//	coffer version
//
// Flags are Go-style: one dash (two work too), and they come before the
// positional arguments, as in Vault's CLI. Every client command takes
// -address (overrides COFFER_ADDR, a comma-separated endpoint list),
// -token (overrides COFFER_TOKEN) and -format=table|json. As with
// VAULT_ADDR, a bare host:port or https:// speaks TLS (the CA from
// -ca-cert / COFFER_CACERT / -certs-dir, else the system's roots) and
// http:// plaintext, which is what -dev and -insecure nodes print.
//
// Exit codes: 0 success; 1 error; 2 from `status` when the node is sealed or
// not initialized, and from `kv get` when there is no such secret or version
// or it is deleted or destroyed. Errors are printed to stderr as one line,
// "Error: <message>".
//
// The command is thin: it parses flags and calls the api client or the
// server package; all validation that matters lives in the server.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	os.Exit(run(os.Args[1:], &env{
		stdin:   os.Stdin,
		stdout:  os.Stdout,
		stderr:  os.Stderr,
		getenv:  os.Getenv,
		process: true,
	}))
}

// env is what a command may touch of the outside world; tests substitute it.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// process means the command owns the process: a long-running command
	// may then route the process's global loggers (the standard library's,
	// gRPC's) into its own. Tests running commands in-process leave it off.
	process bool
}

const topUsage = `Usage: coffer <command> [flags] [args]

Commands:
    server      Run a coffer node (add -dev for a throw-away, unsealed node)
    agent       Run a local caching proxy in front of the cluster (run "coffer agent -h")
    status      Show the seal and Raft status of a node
    operator    Initialize, unseal, seal, rotate; cluster membership and snapshots
                (run "coffer operator -h")
    kv          Read and write versioned secrets (run "coffer kv -h")
    policy      Write, read, list, delete and lint ACL policies (Vault's syntax)
    token       Create, look up, renew and revoke tokens; their capabilities
    login       Exchange credentials (AppRole, JWT, client certificate) for a token
    approle     AppRole roles, role_ids and secret_ids (run "coffer approle -h")
    jwt         JWT login: where the keys come from, and roles (run "coffer jwt -h")
    database    PostgreSQL credentials: connections, dynamic and static roles (run "coffer database -h")
    lease       Look up, renew, revoke and list the leases of dynamic credentials
    audit       Hash a value as the audit logs write it, to search them
    cert        Create the CA, node and client certificates; certificate login roles
                (run "coffer cert -h")
    bench       Load a cluster and report throughput and latency
    healthcheck Exit 0 when a node serves (for container health checks)
    version     Print the version of this binary

Every client command takes -address (COFFER_ADDR), -token (COFFER_TOKEN) and
-format=table|json. An address host:port or https://host:port speaks TLS
(set COFFER_CACERT to the cluster's ca.crt); http://host:port speaks
plaintext, for -dev and -insecure nodes. Flags come before positional
arguments. Run "coffer <command> -h" for the flags of a command.
`

// run executes one command line and returns the process exit code.
func run(args []string, e *env) int {
	err := dispatch(e, args)
	return report(e, err)
}

// report prints err (if any) as one line and returns the exit code it stands for.
func report(e *env, err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	var se silentExit
	if errors.As(err, &se) {
		return int(se)
	}
	fmt.Fprintf(e.stderr, "Error: %s\n", oneLine(err.Error()))
	var ce *cliError
	if errors.As(err, &ce) && ce.code != 0 {
		return ce.code
	}
	return 1
}

func dispatch(e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, topUsage)
		return silentExit(1)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "server":
		return cmdServer(e, rest)
	case "status":
		return cmdStatus(e, rest)
	case "agent":
		return cmdAgent(e, rest)
	case "healthcheck":
		return cmdHealthcheck(e, rest)
	case "cert":
		return dispatchSub(e, "coffer cert", certUsage, rest, map[string]func(*env, []string) error{
			"create-ca":     cmdCertCreateCA,
			"create-node":   cmdCertCreateNode,
			"create-client": cmdCertCreateClient,
			"list":          cmdCertList,
			"role":          cmdCertRole,
		})
	case "bench":
		return cmdBench(e, rest)
	case "operator":
		return dispatchSub(e, "coffer operator", operatorUsage, rest, map[string]func(*env, []string) error{
			"init":          cmdOperatorInit,
			"unseal":        cmdOperatorUnseal,
			"seal":          cmdOperatorSeal,
			"rotate":        cmdOperatorRotate,
			"generate-root": cmdOperatorGenerateRoot,
			"rekey":         cmdOperatorRekey,
			"members":       cmdOperatorMembers,
			"step-down":     cmdOperatorStepDown,
			"raft": func(e *env, args []string) error {
				return dispatchSub(e, "coffer operator raft", operatorRaftUsage, args, map[string]func(*env, []string) error{
					"list-peers":  cmdOperatorRaftListPeers,
					"remove-peer": cmdOperatorRaftRemovePeer,
					"snapshot": func(e *env, args []string) error {
						return dispatchSub(e, "coffer operator raft snapshot", operatorSnapshotUsage, args, map[string]func(*env, []string) error{
							"save":    cmdOperatorSnapshotSave,
							"restore": cmdOperatorSnapshotRestore,
							"list":    cmdOperatorSnapshotList,
							"inspect": cmdOperatorSnapshotInspect,
						})
					},
				})
			},
		})
	case "kv":
		return dispatchSub(e, "coffer kv", kvUsage, rest, map[string]func(*env, []string) error{
			"put":      cmdKVPut,
			"get":      cmdKVGet,
			"delete":   cmdKVDelete,
			"undelete": cmdKVUndelete,
			"destroy":  cmdKVDestroy,
			"list":     cmdKVList,
			"metadata": func(e *env, args []string) error {
				return dispatchSub(e, "coffer kv metadata", kvMetadataUsage, args, map[string]func(*env, []string) error{
					"get":    cmdKVMetadataGet,
					"put":    cmdKVMetadataPut,
					"delete": cmdKVMetadataDelete,
				})
			},
		})
	case "policy":
		return dispatchSub(e, "coffer policy", policyUsage, rest, map[string]func(*env, []string) error{
			"write":  cmdPolicyWrite,
			"read":   cmdPolicyRead,
			"list":   cmdPolicyList,
			"delete": cmdPolicyDelete,
			"lint":   cmdPolicyLint,
		})
	case "audit":
		return dispatchSub(e, "coffer audit", auditUsage, rest, map[string]func(*env, []string) error{
			"hash": cmdAuditHash,
		})
	case "token":
		return dispatchSub(e, "coffer token", tokenUsage, rest, map[string]func(*env, []string) error{
			"create":       cmdTokenCreate,
			"lookup":       cmdTokenLookup,
			"renew":        cmdTokenRenew,
			"revoke":       cmdTokenRevoke,
			"capabilities": cmdTokenCapabilities,
		})
	case "login":
		return cmdLogin(e, rest)
	case "approle":
		return cmdApprole(e, rest)
	case "jwt":
		return cmdJWT(e, rest)
	case "database":
		return cmdDatabase(e, rest)
	case "lease":
		return cmdLease(e, rest)
	case "version", "-version", "--version":
		return cmdVersion(e, rest)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(e.stdout, topUsage)
		return errHelp
	default:
		return usageErrorf("coffer", "unknown command %q", cmd)
	}
}

// dispatchSub runs the sub-command args[0] of the command group name.
func dispatchSub(e *env, name, usage string, args []string, cmds map[string]func(*env, []string) error) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return silentExit(1)
	}
	if isHelpArg(args[0]) || args[0] == "help" {
		fmt.Fprint(e.stdout, usage)
		return errHelp
	}
	f, ok := cmds[args[0]]
	if !ok {
		return usageErrorf(name, "unknown command %q", name+" "+args[0])
	}
	return f(e, args[1:])
}

func isHelpArg(a string) bool {
	return a == "-h" || a == "-help" || a == "--help" || a == "--h"
}

// errHelp means usage was printed on request: exit 0.
var errHelp = errors.New("help requested")

// silentExit ends the process with its code and prints nothing more.
type silentExit int

func (s silentExit) Error() string { return fmt.Sprintf("exit status %d", int(s)) }

// cliError is an error with the exit code it should produce.
type cliError struct {
	code int
	msg  string
}

func (c *cliError) Error() string { return c.msg }

// usageErrorf reports bad command-line usage of cmd, with a hint to its help.
func usageErrorf(cmd, format string, args ...any) error {
	return &cliError{code: 1, msg: fmt.Sprintf(format, args...) + fmt.Sprintf(` (run "%s -h" for usage)`, cmd)}
}

// oneLine folds a message onto one line.
func oneLine(s string) string {
	return strings.TrimSpace(strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s))
}
