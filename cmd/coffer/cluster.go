package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

const operatorRaftUsage = `Usage: coffer operator raft <command> [flags] [args]

Commands:
    list-peers     List the Raft configuration: voters, the leader, applied index and lag
    remove-peer    Remove a server from the Raft configuration: ID
    snapshot       Save, restore or list snapshots of the cluster's state (run "coffer operator raft snapshot -h")

Run "coffer operator raft <command> -h" for its flags.
`

const operatorSnapshotUsage = `Usage: coffer operator raft snapshot <command> [flags] [FILE]

Commands:
    save       Save a snapshot of the cluster's state (ciphertext only) to FILE
    restore    Replace the cluster's state with the snapshot in FILE
    list       List the scheduled snapshots in -dir=DIR and check their checksums
    inspect    Check the snapshot in FILE and show what it holds (offline, no key)
`

// snapshotTimeout bounds snapshot save and restore, which move the whole
// state and may take longer than an ordinary call.
const snapshotTimeout = 10 * time.Minute

// memberJSON is one member in the JSON output of `coffer operator members`.
type memberJSON struct {
	ID            string `json:"id"`
	APIAddress    string `json:"api_address"`
	RaftAddress   string `json:"raft_address"`
	GossipAddress string `json:"gossip_address"`
	Status        string `json:"status"`
	Sealed        bool   `json:"sealed"`
	Voter         bool   `json:"voter"`
	ReadReplica   bool   `json:"read_replica"`
	Version       string `json:"version"`
}

// toMembers converts the wire members to the JSON output, sorted by id.
func toMembers(ms []*pb.Member) []memberJSON {
	out := make([]memberJSON, 0, len(ms))
	for _, m := range ms {
		out = append(out, memberJSON{
			ID:            m.GetId(),
			APIAddress:    m.GetApiAddress(),
			RaftAddress:   m.GetRaftAddress(),
			GossipAddress: m.GetGossipAddress(),
			Status:        m.GetStatus(),
			Sealed:        m.GetSealed(),
			Voter:         m.GetVoter(),
			ReadReplica:   m.GetReadReplica(),
			Version:       m.GetVersion(),
		})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// printMembers writes the members as JSON or as a table.
func printMembers(w io.Writer, format string, ms []*pb.Member) error {
	members := toMembers(ms)
	if format == formatJSON {
		return printJSON(w, members)
	}
	rows := [][]string{{"Node", "API Address", "Gossip Address", "Status", "Sealed", "Voter"}}
	for _, m := range members {
		voter := strconv.FormatBool(m.Voter)
		if m.ReadReplica {
			voter += " (read replica)"
		}
		rows = append(rows, []string{m.ID, orNA(m.APIAddress), orNA(m.GossipAddress), orNA(m.Status), strconv.FormatBool(m.Sealed), voter})
	}
	printTable(w, rows)
	return nil
}

// peerJSON is one peer in the JSON output of `coffer operator raft
// list-peers`.
type peerJSON struct {
	ID           string `json:"id"`
	Address      string `json:"address"`
	Voter        bool   `json:"voter"`
	Leader       bool   `json:"leader"`
	AppliedIndex uint64 `json:"applied_index"`
	Lag          uint64 `json:"lag"`
	Reachable    bool   `json:"reachable"`
}

// toPeers converts the wire peers to the JSON output, in the order of the
// Raft configuration.
func toPeers(ps []*pb.Peer) []peerJSON {
	out := make([]peerJSON, 0, len(ps))
	for _, p := range ps {
		out = append(out, peerJSON{
			ID:           p.GetId(),
			Address:      p.GetAddress(),
			Voter:        p.GetVoter(),
			Leader:       p.GetLeader(),
			AppliedIndex: p.GetAppliedIndex(),
			Lag:          p.GetLag(),
			Reachable:    p.GetReachable(),
		})
	}
	return out
}

// printPeers writes the peers as JSON or as a table; a peer that did not
// answer shows "unreachable" instead of its index and lag.
func printPeers(w io.Writer, format string, ps []*pb.Peer) error {
	peers := toPeers(ps)
	if format == formatJSON {
		return printJSON(w, peers)
	}
	rows := [][]string{{"Node", "Address", "Voter", "Leader", "Applied Index", "Lag"}}
	for _, p := range peers {
		applied, lag := strconv.FormatUint(p.AppliedIndex, 10), strconv.FormatUint(p.Lag, 10)
		if !p.Reachable {
			applied, lag = "unreachable", "n/a"
		}
		rows = append(rows, []string{p.ID, p.Address, strconv.FormatBool(p.Voter), strconv.FormatBool(p.Leader), applied, lag})
	}
	printTable(w, rows)
	return nil
}

// printTable writes rows as aligned columns; the first row is the header,
// underlined with dashes.
func printTable(w io.Writer, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 4, ' ', 0)
	for i, r := range rows {
		for j, cell := range r {
			if j > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, cell)
		}
		fmt.Fprintln(tw)
		if i == 0 {
			for j, cell := range r {
				if j > 0 {
					fmt.Fprint(tw, "\t")
				}
				for range len([]rune(cell)) {
					fmt.Fprint(tw, "-")
				}
			}
			fmt.Fprintln(tw)
		}
	}
	tw.Flush()
}

func cmdOperatorMembers(e *env, args []string) error {
	f := newFlags("coffer operator members", "[flags]", `
List the cluster's members as the gossip layer of the node that answers sees
them: each node's id, API and gossip addresses, liveness (alive, suspect,
dead or left), seal state and whether it votes in Raft. Needs the root
token.`).withClient()
	args, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Members(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printMembers(e.stdout, f.format, resp.GetMembers())
}

func cmdOperatorRaftListPeers(e *env, args []string) error {
	f := newFlags("coffer operator raft list-peers", "[flags]", `
List the servers of the Raft configuration: id, Raft address, whether it
votes, which one leads, its applied index and how far it lags behind the
commit index. A peer that does not answer is shown as unreachable. Needs
the root token.`).withClient()
	args, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.ListPeers(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	return printPeers(e.stdout, f.format, resp.GetPeers())
}

// removePeerJSON is the JSON output of `coffer operator raft remove-peer`.
type removePeerJSON struct {
	ID    string `json:"id"`
	Index uint64 `json:"index"`
}

func cmdOperatorRaftRemovePeer(e *env, args []string) error {
	f := newFlags("coffer operator raft remove-peer", "[flags] ID", `
Remove the server ID from the Raft configuration, for example a node that
is gone for good. The leader cannot remove itself: run "coffer operator
step-down" first. A removed node that still runs is kept out; once it
restarts, the leader adds it again like a new node. Needs the root token.`).withClient()
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "ID"); err != nil {
		return err
	}
	if args[0] == "" {
		return usageErrorf(f.name, "empty ID: give a peer id from \"coffer operator raft list-peers\"")
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.RemovePeer(context.Background(), args[0])
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, removePeerJSON{ID: args[0], Index: resp.GetIndex()})
	}
	fmt.Fprintf(e.stdout, "Success! Removed peer %s from the Raft configuration.\n", args[0])
	return nil
}

// stepDownJSON is the JSON output of `coffer operator step-down`.
type stepDownJSON struct {
	NewLeaderID string `json:"new_leader_id"`
}

func cmdOperatorStepDown(e *env, args []string) error {
	f := newFlags("coffer operator step-down", "[flags]", `
Make the current leader hand leadership to another voter, and print the new
leader. Any node accepts the request and passes it to the leader. Needs the
root token.`).withClient()
	args, c, err := f.clientFor(e, args)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.StepDown(context.Background())
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, stepDownJSON{NewLeaderID: resp.GetNewLeaderId()})
	}
	fmt.Fprintf(e.stdout, "Success! The new leader is %s.\n", orNA(resp.GetNewLeaderId()))
	return nil
}

// snapshotJSON is the JSON output of `coffer operator raft snapshot save`
// and `restore`.
type snapshotJSON struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

func cmdOperatorSnapshotSave(e *env, args []string) error {
	f := newFlags("coffer operator raft snapshot save", "[flags] FILE", `
Save a snapshot of the cluster's state to FILE, from the first node that
answers. The snapshot holds ciphertext only, but it is the whole cluster:
keep it as safe as the data itself. It is written to FILE.tmp (mode 0600)
and renamed to FILE once complete, so FILE is never a partial snapshot.
Needs the root token.`).withClient()
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "FILE"); err != nil {
		return err
	}
	path := args[0]
	if path == "" {
		return usageErrorf(f.name, "empty FILE: give the path to save the snapshot to")
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()

	tmp := path + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("creating the snapshot file: %v", err)}
	}
	keep := false
	defer func() {
		if !keep {
			out.Close()
			os.Remove(tmp)
		}
	}()
	// A FILE.tmp left by an earlier run keeps its mode through O_TRUNC.
	if err := out.Chmod(0o600); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("restricting the snapshot file to its owner: %v", err)}
	}
	cw := &countingWriter{w: out}
	if err := c.SnapshotSave(ctx, cw); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return &cliError{code: 1, msg: "interrupted: no snapshot saved"}
		}
		var fe *os.PathError
		if errors.As(err, &fe) {
			return &cliError{code: 1, msg: fmt.Sprintf("writing the snapshot: %v", err)}
		}
		return callError(err, c.Endpoints(), 0)
	}
	if cw.n == 0 {
		return &cliError{code: 1, msg: "the server sent an empty snapshot: nothing saved"}
	}
	if err := out.Sync(); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("writing the snapshot: %v", err)}
	}
	if err := out.Close(); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("writing the snapshot: %v", err)}
	}
	if err := os.Rename(tmp, path); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("moving the snapshot into place: %v", err)}
	}
	keep = true
	if f.format == formatJSON {
		return printJSON(e.stdout, snapshotJSON{Path: path, Size: cw.n})
	}
	fmt.Fprintf(e.stdout, "Success! Saved a snapshot of %d bytes to %s.\n", cw.n, path)
	return nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func cmdOperatorSnapshotRestore(e *env, args []string) error {
	f := newFlags("coffer operator raft snapshot restore", "[flags] FILE", `
Replace the whole cluster's state with the snapshot in FILE (saved by
"coffer operator raft snapshot save"). Writes made since the snapshot are
lost. Only the leader accepts a restore: list every node in -address or
COFFER_ADDR and the command finds it. A snapshot made under other keys
(another cluster, or before a re-init) is refused unless -force is given;
after a forced restore the nodes can only be unsealed with the shares of
the cluster the snapshot came from. Needs the root token.`).withClient()
	force := f.fs.Bool("force", false, "restore a snapshot made under other keys")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "FILE"); err != nil {
		return err
	}
	path := args[0]
	fi, err := os.Stat(path)
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("reading the snapshot: %v", err)}
	}
	if !fi.Mode().IsRegular() {
		return &cliError{code: 1, msg: fmt.Sprintf("reading the snapshot: %s is not a regular file", path)}
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	open := func() (io.ReadCloser, error) { return os.Open(path) }
	if err := c.SnapshotRestore(ctx, open, *force); err != nil {
		var fe *os.PathError
		if errors.As(err, &fe) {
			return &cliError{code: 1, msg: strings.TrimPrefix(err.Error(), "api: ")}
		}
		if api.IsNoLeader(err) {
			return &cliError{code: 1, msg: fmt.Sprintf("%s (only the leader restores: list every node in -address or %s)", status.Convert(err).Message(), api.EnvAddr)}
		}
		return callError(err, c.Endpoints(), 0)
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, snapshotJSON{Path: path, Size: fi.Size()})
	}
	fmt.Fprintf(e.stdout, "Success! Restored the cluster's state from %s.\n", path)
	return nil
}
