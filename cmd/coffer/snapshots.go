package main

import (
	"errors"
	"fmt"
	"io"
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

// snapshotInspectJSON is the JSON output of `coffer operator raft
// snapshot inspect`.
type snapshotInspectJSON struct {
	File string `json:"file"`
	Size int64  `json:"size"`
	// Format is the file's format; MAC says whether it ends in a MAC
	// ("present, not checked": only a restore, with the keys, can) and
	// Checksum whether its name's SHA-256 was checked ("OK", or "none"
	// when the name carries none).
	Format             int    `json:"format"`
	MAC                string `json:"mac"`
	Checksum           string `json:"checksum"`
	NodeID             string `json:"node_id"`
	Created            string `json:"created"`
	HeaderAppliedIndex uint64 `json:"header_applied_index"`
	// Index and Term are the state's applied index and term, which a
	// restore goes by.
	Index       uint64 `json:"index"`
	Term        uint64 `json:"term"`
	StateFormat uint64 `json:"state_format"`
	// StateBytes is the state database's size within the file, in
	// PageSize pages: UsedPages hold data, FreePages nothing.
	StateBytes int64  `json:"state_bytes"`
	PageSize   int64  `json:"page_size"`
	Pages      uint64 `json:"pages"`
	UsedPages  uint64 `json:"used_pages"`
	FreePages  uint64 `json:"free_pages"`
	// StoredBytes is the bytes of every key and value the state holds.
	StoredBytes       int64                `json:"stored_bytes"`
	Secrets           int64                `json:"secrets"`
	Versions          int64                `json:"versions"`
	DestroyedVersions int64                `json:"destroyed_versions"`
	Buckets           []snapshotBucketJSON `json:"buckets"`
}

// snapshotBucketJSON is one bucket of the state in snapshotInspectJSON.
type snapshotBucketJSON struct {
	Name       string `json:"name"`
	Unexpected bool   `json:"unexpected,omitempty"`
	Keys       int64  `json:"keys"`
	Buckets    int64  `json:"buckets,omitempty"`
	KeyBytes   int64  `json:"key_bytes"`
	ValueBytes int64  `json:"value_bytes"`
	Bytes      int64  `json:"bytes"`
}

func cmdOperatorSnapshotInspect(e *env, args []string) error {
	f := newFlags("coffer operator raft snapshot inspect", "[flags] FILE", `
Check the snapshot in FILE and show what it holds, offline: no server and
no key is needed, and no secret, key or share is shown. It checks the file
as far as it can without the cluster's keys: its header, the SHA-256 in a
scheduled snapshot's name (as "snapshot list" does), that it is long
enough for its MAC, and the state as a restore does (its structure,
coffer's buckets and format). The MAC itself needs the keys: a restore
checks it. It shows the Raft index and term of the state, the file's
format, size and node, the secrets and versions, and per bucket of the
state the keys and the bytes of keys and values, whose total ("stored
bytes") against the file's size is the room indexes, page overhead and
free pages take. The state is copied to a temporary file in $TMPDIR while
it is read. Exits 1 when the file is damaged or not a snapshot.`)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args, "FILE"); err != nil {
		return err
	}
	path := args[0]
	if path == "" {
		return usageErrorf(f.name, "empty FILE: give the path of a snapshot")
	}
	rep, err := server.InspectSnapshotFile(path, "")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Path == path {
			return &cliError{code: 1, msg: fmt.Sprintf("reading the snapshot: %v", err)}
		}
		return &cliError{code: 1, msg: fmt.Sprintf("%s: %v", displayName(path), err)}
	}
	j := inspectJSON(path, rep)
	if f.format == formatJSON {
		return printJSON(e.stdout, j)
	}
	printInspect(e.stdout, j)
	return nil
}

// inspectJSON turns a report into the command's output.
func inspectJSON(path string, rep *server.SnapshotFileReport) snapshotInspectJSON {
	h, st := rep.Layout.Header, rep.State
	j := snapshotInspectJSON{
		File: path, Size: rep.Size, Format: h.Format, MAC: "none", Checksum: "none",
		NodeID: h.NodeID, HeaderAppliedIndex: h.AppliedIndex,
		Index: st.AppliedIndex, Term: st.AppliedTerm, StateFormat: st.Format,
		StateBytes: st.FileBytes, PageSize: st.PageSize, Pages: st.Pages, UsedPages: st.UsedPages, FreePages: st.FreePages,
		StoredBytes: st.StoredBytes, Secrets: st.Secrets, Versions: st.Versions, DestroyedVersions: st.DestroyedVersions,
		Buckets: make([]snapshotBucketJSON, 0, len(st.Buckets)),
	}
	if h.CreatedUnix != 0 {
		j.Created = time.Unix(h.CreatedUnix, 0).UTC().Format(time.RFC3339)
	}
	if rep.Layout.MAC {
		j.MAC = "present, not checked"
	}
	if rep.Checksum {
		j.Checksum = "OK"
	}
	for _, b := range st.Buckets {
		j.Buckets = append(j.Buckets, snapshotBucketJSON{Name: b.Name, Unexpected: b.Unexpected, Keys: b.Keys, Buckets: b.Buckets,
			KeyBytes: b.KeyBytes, ValueBytes: b.ValueBytes, Bytes: b.KeyBytes + b.ValueBytes})
	}
	return j
}

// printInspect writes the table output of snapshot inspect.
func printInspect(w io.Writer, j snapshotInspectJSON) {
	mac := "none (an older format: a restore needs -force)"
	if j.MAC != "none" {
		mac = "present, not checked (it needs the cluster's keys: a restore checks it)"
	}
	sum := "none in the file's name (only a scheduled snapshot's name carries one)"
	if j.Checksum == "OK" {
		sum = "OK (the SHA-256 in the file's name)"
	}
	pct := func(part, whole int64) string {
		if whole <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f %%", 100*float64(part)/float64(whole))
	}
	stored := fmt.Sprintf("%d (keys and values)", j.StoredBytes)
	if j.StoredBytes > 0 {
		stored = fmt.Sprintf("%d (keys and values: %s of the file, which is %.2f× them)", j.StoredBytes, pct(j.StoredBytes, j.Size), float64(j.Size)/float64(j.StoredBytes))
	}
	printKV(w, []row{
		{"File", displayName(j.File)},
		{"Size", fmt.Sprintf("%d bytes", j.Size)},
		{"Format", strconv.Itoa(j.Format)},
		{"MAC", mac},
		{"Checksum", sum},
		{"Node", displayName(j.NodeID)},
		{"Created", orNA(j.Created)},
		{"Index", strconv.FormatUint(j.Index, 10)},
		{"Term", strconv.FormatUint(j.Term, 10)},
		{"State format", strconv.FormatUint(j.StateFormat, 10)},
		{"Secrets", strconv.FormatInt(j.Secrets, 10)},
		{"Versions", fmt.Sprintf("%d (%d destroyed)", j.Versions, j.DestroyedVersions)},
		{"State size", fmt.Sprintf("%d bytes: %d pages of %d bytes, %d in use, %d free", j.StateBytes, j.Pages, j.PageSize, j.UsedPages, j.FreePages)},
		{"Stored bytes", stored},
	})
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 4, ' ', 0)
	fmt.Fprintln(tw, "Bucket\tKeys\tKey bytes\tValue bytes\tBytes")
	fmt.Fprintln(tw, "------\t----\t---------\t-----------\t-----")
	var keys, keyBytes, valueBytes int64
	for _, b := range j.Buckets {
		name := b.Name
		if b.Unexpected {
			name += " (unexpected)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", displayName(name), b.Keys, b.KeyBytes, b.ValueBytes, b.Bytes)
		keys, keyBytes, valueBytes = keys+b.Keys, keyBytes+b.KeyBytes, valueBytes+b.ValueBytes
	}
	fmt.Fprintf(tw, "Total\t%d\t%d\t%d\t%d\n", keys, keyBytes, valueBytes, j.StoredBytes)
	tw.Flush()
}
