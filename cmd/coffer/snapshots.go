package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"

	"coffer/server"
	"coffer/server/snapshotfile"
)

// snapshotFlags are the `coffer server` flags of scheduled snapshots.
type snapshotFlags struct {
	interval time.Duration
	dir      string
	retain   int
}

// addSnapshotFlags defines the scheduled-snapshot flags on f.
func addSnapshotFlags(f *cmdFlags) *snapshotFlags {
	s := &snapshotFlags{}
	f.fs.DurationVar(&s.interval, "snapshot-interval", 0, "take a snapshot file of the cluster's state (ciphertext, checksummed) this often, on whichever node leads; give every voter the same flags; 0: none")
	f.fs.StringVar(&s.dir, "snapshot-dir", "", "directory of the scheduled snapshots (created 0700 at start; \"coffer operator raft snapshot list -dir\" lists them)")
	f.fs.IntVar(&s.retain, "snapshot-retain", 0, fmt.Sprintf("scheduled snapshots the directory keeps, the newest; 0 means the default (%d)", server.DefaultSnapshotRetain))
	return s
}

// apply copies the flags given on the command line into cfg (they win
// over the config file's snapshot_interval, snapshot_dir and
// snapshot_retain) and checks them.
func (s *snapshotFlags) apply(f *cmdFlags, cfg *server.Config) error {
	if f.isSet("snapshot-interval") {
		cfg.Snapshots.Interval = s.interval
	}
	if f.isSet("snapshot-dir") {
		cfg.Snapshots.Dir = s.dir
	}
	if f.isSet("snapshot-retain") {
		cfg.Snapshots.Retain = s.retain
	}
	if err := cfg.Snapshots.Validate(); err != nil {
		return &cliError{code: 1, msg: err.Error()}
	}
	return nil
}

// fileSnapshots is what the config file says about scheduled snapshots.
type fileSnapshots struct {
	Interval *string `json:"snapshot_interval"`
	Dir      *string `json:"snapshot_dir"`
	Retain   *int    `json:"snapshot_retain"`
}

// apply fills cfg from the file's keys; the interval is a Go duration
// ("1h", "30m").
func (fs fileSnapshots) apply(path string, cfg *server.Config) error {
	if fs.Interval != nil {
		d, err := time.ParseDuration(*fs.Interval)
		if err != nil {
			return &cliError{code: 1, msg: fmt.Sprintf("-config %s: snapshot_interval %q is not a duration: write e.g. \"1h\" or \"30m\"", path, *fs.Interval)}
		}
		cfg.Snapshots.Interval = d
	}
	if fs.Dir != nil {
		cfg.Snapshots.Dir = *fs.Dir
	}
	if fs.Retain != nil {
		cfg.Snapshots.Retain = *fs.Retain
	}
	return nil
}

// snapshotListJSON is one file in the JSON output of `coffer operator
// raft snapshot list`.
type snapshotListJSON struct {
	File         string `json:"file"`
	Time         string `json:"time,omitempty"`
	AppliedIndex uint64 `json:"applied_index,omitempty"`
	NodeID       string `json:"node_id,omitempty"`
	Size         int64  `json:"size"`
	SHA256       string `json:"sha256,omitempty"`
	// Checksum is "OK" or "BAD"; Error says why a file is BAD.
	Checksum string `json:"checksum"`
	Error    string `json:"error,omitempty"`
}

func cmdOperatorSnapshotList(e *env, args []string) error {
	f := newFlags("coffer operator raft snapshot list", "-dir=DIR [flags]", `
List the scheduled snapshots in DIR (a node's -snapshot-dir), newest first:
when each was taken, its applied index, size, the node that wrote it, and
whether its bytes still hash to the SHA-256 in its name (OK or BAD). It
reads the files only: no server and no key is needed (a restore checks
the snapshot's MAC with the cluster's keys). Other files in DIR are not
listed. Exits 1 when a file is BAD.

Restore one with "coffer operator raft snapshot restore FILE".`)
	dir := f.fs.String("dir", "", "the snapshot directory (a node's -snapshot-dir)")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if *dir == "" {
		return usageErrorf(f.name, "no directory: give -dir=DIR, a node's -snapshot-dir")
	}
	entries, err := snapshotfile.List(*dir)
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("reading -dir: %v", err)}
	}
	out := make([]snapshotListJSON, 0, len(entries))
	bad := 0
	for _, en := range entries {
		j := snapshotListJSON{File: en.Name, Size: en.Size, Checksum: "OK"}
		if en.NameErr == nil {
			j.Time = en.Time.UTC().Format(time.RFC3339Nano)
			j.AppliedIndex, j.NodeID, j.SHA256 = en.AppliedIndex, en.NodeID, en.SHA256
		}
		if _, err := snapshotfile.Verify(en); err != nil {
			j.Checksum, j.Error = "BAD", err.Error()
			var pe *os.PathError
			if errors.As(err, &pe) {
				j.Error = pe.Err.Error()
			}
			bad++
		}
		out = append(out, j)
	}
	if f.format == formatJSON {
		if err := printJSON(e.stdout, out); err != nil {
			return err
		}
	} else if len(out) == 0 {
		fmt.Fprintf(e.stdout, "No scheduled snapshots in %s.\n", *dir)
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tAPPLIED INDEX\tSIZE\tCHECKSUM\tNODE\tFILE")
		for _, j := range out {
			if j.Time == "" {
				fmt.Fprintf(tw, "-\t-\t%d\t%s\t-\t%s\n", j.Size, j.Checksum, displayName(j.File))
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", j.Time, j.AppliedIndex, j.Size, j.Checksum, j.NodeID, j.File)
		}
		tw.Flush()
		for _, j := range out {
			if j.Error != "" {
				fmt.Fprintf(e.stdout, "BAD %s: %s\n", displayName(j.File), j.Error)
			}
		}
	}
	if bad > 0 {
		return &cliError{code: 1, msg: fmt.Sprintf("%d of %d snapshot files in %s are BAD: do not restore them", bad, len(out), *dir)}
	}
	return nil
}

// displayName is a file name as the text listing shows it: quoted when it
// holds anything but printable characters (a name with terminal control
// sequences, from anyone who can write the directory, would otherwise
// rewrite what the operator sees). Names of snapshots never need it.
func displayName(name string) string {
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return strconv.Quote(name)
		}
	}
	return name
}
