package chaos

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"coffer/internal/timeline"
)

// TestPicture checks what a scenario's picture shows: the operations at
// the time they returned, failed ones and reads answered staler than they
// asked marked; a repeated fault shown around its median run; other
// scenarios whole.
func TestPicture(t *testing.T) {
	cached := read(2, k, "a", 1, 5100, 5150)
	cached.Cached, cached.Stale = true, true // past its TTL
	hit := read(2, k, "a", 1, 5100, 5110)
	hit.Cached = true // within its TTL: not stale
	fallback := read(3, k, "a", 1, 5200, 5210)
	fallback.Stale, fallback.Fallback = true, true
	ops := []Op{
		write(1, k, "a", 1, 0, 40),
		read(2, k, "a", 1, 50, 120),
		failedWrite(1, k, "b", 4000, 5020),
		staleRead(2, k, "a", 1, 5000, 5030), // asked for: not marked
		cached,
		hit,
		fallback,
		failedLinRead(3, k, 5040, 5060),
		write(1, k, "c", 2, 9000, 9100),
		write(1, k, "d", 3, 20000, 20001),
	}
	kill := func(i, start, healed, end int) Fault {
		return Fault{Kind: "leader-kill", Name: "kill " + string(rune('0'+i)), Start: at(start), Healed: at(healed), End: at(end)}
	}
	faults := []Fault{kill(1, 1000, 1500, 2000), kill(2, 5000, 6000, 7000), kill(3, 10000, 10500, 11000)}
	figs := []Figures{{WriteUnavailableMs: 900}, {WriteUnavailableMs: 600}, {WriteUnavailableMs: 300}}

	s := Picture("docker", "leader-kill", ops, faults, figs)
	if want := at(5000 - 1500); !s.From.Equal(want) {
		t.Errorf("From %v, want the median kill's start less 1.5s, %v", s.From, want)
	}
	if want := at(7000 + 1000); !s.To.Equal(want) {
		t.Errorf("To %v, want the median kill's window end plus 1s, %v", s.To, want)
	}
	for _, w := range []string{"docker leader-kill: kill 2", "the median of 3", "600 ms"} {
		if !strings.Contains(s.Title, w) {
			t.Errorf("title %q does not say %q", s.Title, w)
		}
	}
	if len(s.Faults) != 3 || !s.Faults[1].Start.Equal(at(5000)) || !s.Faults[1].End.Equal(at(6000)) {
		t.Errorf("faults %+v: want each from its injection to its healing", s.Faults)
	}
	// In [3500, 8000): the failed write at 5020, the stale read at 5030
	// (unmarked), the failed linearizable read at 5060, the cache hit at
	// 5110 (unmarked), the stale cached read at 5150 and the fallback at
	// 5210 (both marked).
	var got timeline.Bucket
	for _, b := range s.Buckets() {
		got.Writes += b.Writes
		got.Reads += b.Reads
		got.FailedWrites += b.FailedWrites
		got.FailedReads += b.FailedReads
		got.StaleReads += b.StaleReads
	}
	if want := (timeline.Bucket{Reads: 4, FailedWrites: 1, FailedReads: 1, StaleReads: 2}); got != want {
		t.Errorf("counts in the median kill's window %+v, want %+v", got, want)
	}
	want := map[int]timeline.Bucket{
		15: {Start: 1500 * time.Millisecond, Reads: 1, FailedWrites: 1, FailedReads: 1}, // 5000-5100ms
		16: {Start: 1600 * time.Millisecond, Reads: 2, StaleReads: 1},                   // 5100-5200ms
		17: {Start: 1700 * time.Millisecond, Reads: 1, StaleReads: 1},                   // 5200-5300ms
	}
	for i, b := range s.Buckets() {
		w, ok := want[i]
		if !ok {
			w = timeline.Bucket{Start: b.Start} // empty
		}
		if b != w {
			t.Errorf("bucket %d: %+v, want %+v", i, b, w)
		}
	}

	// Of two, the lower is the median, here the first kill: the window
	// starts at the first operation, not 1.5s before the kill.
	s = Picture("docker", "leader-kill", ops, faults[:2], []Figures{{WriteUnavailableMs: 300}, {WriteUnavailableMs: 900}})
	if !s.From.Equal(at(40)) || !s.To.Equal(at(3000)) {
		t.Errorf("median of two: range [%v, %v), want [%v, %v)", s.From, s.To, at(40), at(3000))
	}

	// Kinds that differ: the whole run.
	other := []Fault{{Kind: "quorum-loss", Name: "kill two", Start: at(1000), Healed: at(3000)}, {Kind: "all-down", Name: "kill the last", Start: at(2000), Healed: at(3000)}}
	s = Picture("in-process", "quorum-loss", ops, other, figs[:2])
	if !s.From.IsZero() || !s.To.IsZero() {
		t.Errorf("whole run: range [%v, %v), want unset", s.From, s.To)
	}
	if !strings.Contains(s.Title, "whole run") || !strings.Contains(s.Title, "kill two, then kill the last") {
		t.Errorf("whole run: title %q", s.Title)
	}
	if n := len(s.Buckets()); n != 200 {
		t.Errorf("whole run: %d buckets, want 200 (40ms to 20001ms)", n)
	}
}

// TestWrapNames: a long run's fault names are split into lines that fit
// the picture, none lost, in order.
func TestWrapNames(t *testing.T) {
	var names []string
	for i := 1; i <= 6; i++ {
		names = append(names, fmt.Sprintf("graceful restart of follower coffer-chaos-%d (%d/3)", i, i))
	}
	got := wrapNames(names, titleWidth)
	lines := strings.Split(got, "\n")
	if len(lines) < 3 {
		t.Errorf("six names of 50 characters on %d lines: %q", len(lines), got)
	}
	for _, l := range lines {
		if len(l) > titleWidth {
			t.Errorf("line of %d characters, over %d: %q", len(l), titleWidth, l)
		}
	}
	if joined := strings.ReplaceAll(got, "\n", " "); joined != strings.Join(names, ", then ") {
		t.Errorf("wrapped %q, unwrapped %q, want %q", got, joined, strings.Join(names, ", then "))
	}
	if got := wrapNames([]string{"kill two", "kill the last"}, titleWidth); got != "kill two, then kill the last" {
		t.Errorf("two short names: %q", got)
	}
}

func TestPicturePath(t *testing.T) {
	t.Setenv("COFFER_CHAOS_OUT", "/x/bin/chaos-figures.json")
	if got := PicturePath("docker", "leader-kill"); got != "/x/bin/chaos-leader-kill.png" {
		t.Errorf("docker: %q", got)
	}
	if got := PicturePath("in-process", "leader-kill"); got != "/x/bin/chaos-in-process-leader-kill.png" {
		t.Errorf("in-process: %q", got)
	}
	t.Setenv("COFFER_CHAOS_OUT", "")
	if got := PicturePath("docker", "leader-kill"); got != "" {
		t.Errorf("no figures: %q, want none", got)
	}
}
