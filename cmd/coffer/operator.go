package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	pb "coffer/api/cofferpb"
)

const operatorUsage = `Usage: coffer operator <command> [flags] [args]

Commands:
    init         Initialize the cluster: print the unseal key shares and the root token once
    unseal       Submit one unseal key share to a node
    seal         Seal a node: drop its keys from memory
    rotate       Start a new data-key term (old terms stay readable)
    generate-root  Make a new root token from a threshold of unseal key shares
    rekey        Replace the key shares (a threshold of current holders approve)
    members      List the cluster's members as gossip sees them
    step-down    Make the leader hand leadership to another voter
    raft         Raft peers and snapshots (run "coffer operator raft -h")

Run "coffer operator <command> -h" for its flags.
`

// statusJSON is the JSON output of `coffer status`.
type statusJSON struct {
	sealStatusJSON
	NodeID        string `json:"node_id"`
	RaftState     string `json:"raft_state"`
	LeaderID      string `json:"leader_id"`
	LeaderAddress string `json:"leader_address"`
	Term          uint64 `json:"term"`
	AppliedIndex  uint64 `json:"applied_index"`
	CommitIndex   uint64 `json:"commit_index"`
	KeyTerm       uint32 `json:"key_term"`
	LastContactMs int64  `json:"last_contact_ms"`
	Version       string `json:"version"`
	Insecure      bool   `json:"insecure"`
}

func cmdStatus(e *env, args []string) error {
	f := newFlags("coffer status", "[flags]", `
Show the seal and Raft status of the node at the first endpoint.
Exit code 0: unsealed; 2: sealed or not initialized; 1: error.`).withClient()
	args, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		return callError(err, c.Endpoints()[:1], 0)
	}
	seal := st.GetSeal()
	if st.GetInsecure() {
		fmt.Fprintf(e.stderr, "Warning: node %s runs without TLS (-insecure): its traffic, tokens and key shares travel in clear\n", st.GetNodeId())
	}
	if f.format == formatJSON {
		if err := printJSON(e.stdout, statusJSON{
			sealStatusJSON: toSealStatus(seal),
			NodeID:         st.GetNodeId(),
			RaftState:      st.GetRaftState(),
			LeaderID:       st.GetLeaderId(),
			LeaderAddress:  st.GetLeaderAddress(),
			Term:           st.GetTerm(),
			AppliedIndex:   st.GetAppliedIndex(),
			CommitIndex:    st.GetCommitIndex(),
			KeyTerm:        st.GetKeyTerm(),
			LastContactMs:  st.GetLastContactMs(),
			Version:        st.GetVersion(),
			Insecure:       st.GetInsecure(),
		}); err != nil {
			return err
		}
	} else {
		rows := sealRows(seal)
		rows = append(rows,
			row{"Version", orNA(st.GetVersion())},
			row{"Node ID", st.GetNodeId()},
			row{"Raft State", st.GetRaftState()},
			row{"Leader ID", orNA(st.GetLeaderId())},
			row{"Leader Address", orNA(st.GetLeaderAddress())},
			row{"Raft Term", fmt.Sprint(st.GetTerm())},
			row{"Raft Applied Index", fmt.Sprint(st.GetAppliedIndex())},
			row{"Raft Commit Index", fmt.Sprint(st.GetCommitIndex())},
			row{"Key Term", fmt.Sprint(st.GetKeyTerm())},
		)
		if st.GetRaftState() != "leader" {
			rows = append(rows, row{"Last Leader Contact", (time.Duration(st.GetLastContactMs()) * time.Millisecond).String()})
		}
		printKV(e.stdout, rows)
	}
	if !seal.GetInitialized() || seal.GetSealed() {
		return silentExit(2)
	}
	return nil
}

// initJSON is the JSON output of `coffer operator init`.
type initJSON struct {
	UnsealKeysB64   []string `json:"unseal_keys_b64"`
	UnsealShares    uint32   `json:"unseal_shares"`
	UnsealThreshold uint32   `json:"unseal_threshold"`
	// The recovery shares of a cluster under the static seal (Vault's
	// fields), instead of unseal shares.
	RecoveryKeysB64   []string `json:"recovery_keys_b64"`
	RecoveryKeysHex   []string `json:"recovery_keys_hex"`
	RecoveryShares    uint32   `json:"recovery_keys_shares"`
	RecoveryThreshold uint32   `json:"recovery_keys_threshold"`
	RootToken         string   `json:"root_token"`
}

func cmdOperatorInit(e *env, args []string) error {
	f := newFlags("coffer operator init", "[flags]", `
Initialize a new cluster, through the node at the first endpoint. It creates
the root key and splits the unseal key into -key-shares Shamir shares, any
-key-threshold of which unseal a node. The shares and the root token are
printed once and never stored: keep them safe and apart.

On a cluster under the static seal (nodes started with -seal=static) the
nodes unseal themselves, and init prints -recovery-shares recovery shares
instead (threshold -recovery-threshold): they are needed for generate-root,
rekey and a migration back to the Shamir seal, which turns them into unseal
shares. They are as powerful as unseal shares: keep them as safe.`).withClient()
	shares := f.fs.Uint("key-shares", 5, "number of unseal key shares to create")
	threshold := f.fs.Uint("key-threshold", 3, "number of shares needed to unseal")
	recShares := f.fs.Uint("recovery-shares", 5, "under the static seal: number of recovery shares to create")
	recThreshold := f.fs.Uint("recovery-threshold", 3, "under the static seal: number of recovery shares needed")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if *shares > 255 || *threshold > 255 || *recShares > 255 || *recThreshold > 255 {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -key-shares=%d -key-threshold=%d -recovery-shares=%d -recovery-threshold=%d: each must be at most 255", *shares, *threshold, *recShares, *recThreshold)}
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Init(context.Background(), &pb.InitRequest{
		SecretShares: uint32(*shares), SecretThreshold: uint32(*threshold),
		RecoveryShares: uint32(*recShares), RecoveryThreshold: uint32(*recThreshold),
	})
	if err != nil {
		return callError(err, c.Endpoints()[:1], 0)
	}
	keys := make([]string, len(resp.GetKeys()))
	for i, k := range resp.GetKeys() {
		keys[i] = base64.StdEncoding.EncodeToString(k)
	}
	if rec := resp.GetRecoveryKeys(); len(rec) > 0 {
		return printRecoveryInit(e, f.format, rec, uint32(*recThreshold), resp.GetRootToken())
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, initJSON{
			UnsealKeysB64:   keys,
			UnsealShares:    uint32(*shares),
			UnsealThreshold: uint32(*threshold),
			RecoveryKeysB64: []string{},
			RecoveryKeysHex: []string{},
			RootToken:       resp.GetRootToken(),
		})
	}
	for i, k := range keys {
		fmt.Fprintf(e.stdout, "Unseal Key %d: %s\n", i+1, k)
	}
	fmt.Fprintf(e.stdout, "\nInitial Root Token: %s\n\n", resp.GetRootToken())
	fmt.Fprintf(e.stdout, `Coffer initialized with %d key shares and a key threshold of %d. Please
securely distribute the key shares printed above. Every node starts sealed
and must be unsealed with %d of these keys ("coffer operator unseal"),
again after every restart.

Coffer does not store the unseal keys or the root token. They are shown
this once: without at least %d keys, no node can be unsealed and the data
is lost for good.
`, *shares, *threshold, *threshold, *threshold)
	return nil
}

// printRecoveryInit prints init's answer under the static seal.
func printRecoveryInit(e *env, format string, rec [][]byte, threshold uint32, token string) error {
	b64 := make([]string, len(rec))
	hx := make([]string, len(rec))
	for i, k := range rec {
		b64[i], hx[i] = base64.StdEncoding.EncodeToString(k), hex.EncodeToString(k)
	}
	if format == formatJSON {
		return printJSON(e.stdout, initJSON{
			UnsealKeysB64:     []string{},
			RecoveryKeysB64:   b64,
			RecoveryKeysHex:   hx,
			RecoveryShares:    uint32(len(rec)),
			RecoveryThreshold: threshold,
			RootToken:         token,
		})
	}
	for i, k := range b64 {
		fmt.Fprintf(e.stdout, "Recovery Key %d: %s\n", i+1, k)
	}
	fmt.Fprintf(e.stdout, "\nInitial Root Token: %s\n\n", token)
	fmt.Fprintf(e.stdout, `Coffer initialized with %d recovery key shares and a recovery threshold of %d.
The nodes unseal themselves with the static seal key. The recovery shares
are needed for generate-root, rekey and a migration back to the Shamir seal
(where they become unseal shares): they are as powerful as unseal shares.
They are shown this once: keep them safe and apart.
`, len(rec), threshold)
	return nil
}

func cmdOperatorUnseal(e *env, args []string) error {
	f := newFlags("coffer operator unseal", "[flags] [SHARE]", `
Submit one unseal key share (base64, as printed by "coffer operator init")
to the node at the first endpoint, and print its unseal progress. Without
SHARE (or with "-"), the share is read from the terminal without echo, or as
one line from stdin when it is not a terminal. Never pass shares on the
command line of a shared machine: they end up in the process list and shell
history. -reset discards the shares submitted so far.`).withClient()
	reset := f.fs.Bool("reset", false, "discard the shares submitted so far instead of adding one")
	migrate := f.fs.Bool("migrate", false, "submit the share for a seal migration: the node was restarted with another -seal than the cluster's (Shamir ↔ static); see docs/OPERATIONS.md")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if len(args) > 1 {
		return usageErrorf(f.name, "too many arguments: want at most one SHARE, got %d arguments", len(args))
	}
	if *reset && len(args) > 0 {
		return usageErrorf(f.name, "-reset takes no SHARE")
	}
	if *reset && *migrate {
		return usageErrorf(f.name, "-reset and -migrate exclude each other")
	}
	var key []byte
	if !*reset {
		if key, err = shareArg(e, args); err != nil {
			return err
		}
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	var st *pb.SealStatus
	if *reset {
		st, err = c.UnsealReset(context.Background())
	} else if *migrate {
		st, err = c.UnsealMigrate(context.Background(), key)
	} else {
		st, err = c.Unseal(context.Background(), key)
	}
	if err != nil {
		return callError(err, c.Endpoints()[:1], 0)
	}
	return printSealStatus(e, f.format, st)
}

func printSealStatus(e *env, format string, st *pb.SealStatus) error {
	if format == formatJSON {
		return printJSON(e.stdout, toSealStatus(st))
	}
	printKV(e.stdout, sealRows(st))
	return nil
}

// shareArg is the share a command was given: its one argument, or (none,
// or "-") a line read from stdin, hidden on a terminal; decoded.
func shareArg(e *env, args []string) ([]byte, error) {
	raw := ""
	if len(args) == 1 && args[0] != "-" {
		raw = args[0]
	} else {
		var err error
		if raw, err = readShare(e); err != nil {
			return nil, err
		}
	}
	return decodeShare(raw)
}

// readShare reads one share from the terminal without echo, or one line
// from stdin when it is not a terminal.
func readShare(e *env) (string, error) {
	if f, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(e.stderr, "Unseal Key (will be hidden): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return "", &cliError{code: 1, msg: fmt.Sprintf("reading the unseal key from the terminal: %v", err)}
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		if errors.Is(err, io.EOF) {
			return "", &cliError{code: 1, msg: "no unseal key: give SHARE as an argument or one line on stdin"}
		}
		return "", &cliError{code: 1, msg: fmt.Sprintf("reading the unseal key from stdin: %v", err)}
	}
	return line, nil
}

// decodeShare decodes a base64 share, tolerating surrounding whitespace
// and missing padding. The error never contains the share.
func decodeShare(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, &cliError{code: 1, msg: "empty unseal key: give the base64 share printed by \"coffer operator init\""}
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	}
	if err != nil || len(b) == 0 {
		return nil, &cliError{code: 1, msg: "unseal key is not valid base64: give a share exactly as printed by \"coffer operator init\""}
	}
	return b, nil
}

func cmdOperatorSeal(e *env, args []string) error {
	f := newFlags("coffer operator seal", "[flags]", `
Seal the node at the first endpoint: it drops its keys from memory and
answers only status and unseal calls until it is unsealed again. It keeps
replicating and voting, so sealing one node never costs quorum. Needs the
root token.`).withClient()
	args, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Seal(context.Background())
	if err != nil {
		return callError(err, c.Endpoints()[:1], 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, toSealStatus(st))
	}
	fmt.Fprintln(e.stdout, "Success! Coffer is sealed.")
	return nil
}

// rotateJSON is the JSON output of `coffer operator rotate`.
type rotateJSON struct {
	KeyTerm uint32 `json:"key_term"`
	Index   uint64 `json:"index"`
}

func cmdOperatorRotate(e *env, args []string) error {
	f := newFlags("coffer operator rotate", "[flags]", `
Add a new data-key term to the cluster's keyring. New writes are encrypted
with it; values written under older terms stay readable. Needs the root
token.`).withClient()
	args, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Rotate(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, rotateJSON{KeyTerm: resp.GetTerm(), Index: resp.GetIndex()})
	}
	fmt.Fprintln(e.stdout, "Success! Rotated the data key.")
	fmt.Fprintln(e.stdout)
	printKV(e.stdout, []row{{"Key Term", fmt.Sprint(resp.GetTerm())}, {"Index", fmt.Sprint(resp.GetIndex())}})
	return nil
}
