package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	pb "coffer/api/cofferpb"
)

// printJSON writes v as indented JSON and a newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// row is one line of a key/value table.
type row struct{ key, value string }

// printKV writes a Vault-style two-column table with a Key/Value header.
func printKV(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 4, 4, ' ', 0)
	fmt.Fprintln(tw, "Key\tValue")
	fmt.Fprintln(tw, "---\t-----")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r.key, r.value)
	}
	tw.Flush()
}

// printHeader writes a section header such as "====== Data ======" sized
// like Vault's.
func printHeader(w io.Writer, title string) {
	bar := strings.Repeat("=", max(4, len(title)/2+2))
	fmt.Fprintf(w, "%s %s %s\n", bar, title, bar)
}

// fmtTime formats a Unix-nanosecond time as RFC 3339 in UTC; zero is "".
func fmtTime(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// orNA returns s, or "n/a" when it is empty (table output).
func orNA(s string) string {
	if s == "" {
		return "n/a"
	}
	return s
}

// readMetaJSON is ReadMeta in the CLI's JSON output.
type readMetaJSON struct {
	NodeID        string `json:"node_id"`
	AppliedIndex  uint64 `json:"applied_index"`
	LeaderID      string `json:"leader_id"`
	LastContactMs int64  `json:"last_contact_ms"`
	Stale         bool   `json:"stale"`
}

func toReadMeta(m *pb.ReadMeta) *readMetaJSON {
	if m == nil {
		return nil
	}
	return &readMetaJSON{
		NodeID:        m.GetNodeId(),
		AppliedIndex:  m.GetAppliedIndex(),
		LeaderID:      m.GetLeaderId(),
		LastContactMs: m.GetLastContactMs(),
		Stale:         m.GetStale(),
	}
}

// warnStale tells a table reader on stderr that the answer may be stale.
func warnStale(w io.Writer, m *pb.ReadMeta) {
	if m == nil || !m.GetStale() {
		return
	}
	leader := m.GetLeaderId()
	if leader == "" {
		leader = "none known"
	}
	fmt.Fprintf(w, "Warning: this answer may be stale: node %s, applied index %d, leader %s, last contact %s ago\n",
		m.GetNodeId(), m.GetAppliedIndex(), leader, time.Duration(m.GetLastContactMs())*time.Millisecond)
}

// sealStatusJSON is the seal status in the CLI's JSON output.
type sealStatusJSON struct {
	Initialized bool   `json:"initialized"`
	Sealed      bool   `json:"sealed"`
	Shares      uint32 `json:"shares"`
	Threshold   uint32 `json:"threshold"`
	Progress    uint32 `json:"progress"`
	// Type, RecoverySeal and Migration are Vault's seal-status fields;
	// Message says why a sealed node stays sealed when shares would not
	// help.
	Type         string `json:"type"`
	RecoverySeal bool   `json:"recovery_seal"`
	Migration    bool   `json:"migration"`
	Message      string `json:"message,omitempty"`
}

func toSealStatus(s *pb.SealStatus) sealStatusJSON {
	typ := s.GetType()
	if typ == "" {
		typ = "shamir" // a node older than the static seal
	}
	return sealStatusJSON{
		Initialized:  s.GetInitialized(),
		Sealed:       s.GetSealed(),
		Shares:       s.GetShares(),
		Threshold:    s.GetThreshold(),
		Progress:     s.GetProgress(),
		Type:         typ,
		RecoverySeal: s.GetRecoverySeal(),
		Migration:    s.GetMigration(),
		Message:      s.GetMessage(),
	}
}

func sealRows(s *pb.SealStatus) []row {
	j := toSealStatus(s)
	shares, threshold := "Total Shares", "Threshold"
	if j.RecoverySeal {
		shares, threshold = "Total Recovery Shares", "Recovery Threshold"
	}
	rows := []row{
		{"Seal Type", j.Type},
		{"Recovery Seal", fmt.Sprint(j.RecoverySeal)},
		{"Initialized", fmt.Sprint(s.GetInitialized())},
		{"Sealed", fmt.Sprint(s.GetSealed())},
		{shares, fmt.Sprint(s.GetShares())},
		{threshold, fmt.Sprint(s.GetThreshold())},
	}
	if s.GetSealed() && s.GetInitialized() && !j.RecoverySeal || j.Migration {
		rows = append(rows, row{"Unseal Progress", fmt.Sprintf("%d/%d", s.GetProgress(), s.GetThreshold())})
	}
	if j.Migration {
		rows = append(rows, row{"Seal Migration in Progress", "true"})
	}
	if j.Message != "" {
		rows = append(rows, row{"Seal Message", j.Message})
	}
	return rows
}
