package chaos

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"coffer/internal/timeline"
)

// The margins around the fault a picture of a repeated fault shows.
const (
	pictureBefore = 1500 * time.Millisecond
	pictureAfter  = time.Second
)

// Picture returns the timeline of a scenario run: every operation of the
// history at the time it returned, failed ones and reads answered staler
// than they asked marked (a stale fallback, a cached answer past its TTL;
// not the reads that asked for a stale answer, nor fresh cache hits), and
// the faults from when
// the driver injected them to when it removed them (Fault.Start and
// Healed). figs are the faults' figures, in the order of faults.
//
// A scenario that repeats one kind of fault (the leader killed ten times)
// is shown around one representative fault, the median by write
// unavailability, from pictureBefore its start to pictureAfter the end of
// its window, and the title says which; any other scenario is shown
// whole.
func Picture(driver, scenario string, ops []Op, faults []Fault, figs []Figures) timeline.Series {
	s := timeline.Series{Title: driver + " " + scenario + ", whole run"}
	for _, op := range ops {
		e := timeline.Event{At: op.End, Kind: timeline.Write}
		if op.Kind == OpRead {
			e.Kind = timeline.Read
		}
		switch {
		case !op.OK():
			e.Outcome = timeline.Failed
		case op.Kind == OpRead && (op.Fallback || op.Stale && op.Consistency != ConsistencyStale):
			e.Outcome = timeline.Stale
		}
		s.Events = append(s.Events, e)
	}
	var names []string
	for _, f := range faults {
		s.Faults = append(s.Faults, timeline.Fault{Label: f.Name, Start: f.Start, End: f.Healed})
		names = append(names, f.Name)
	}
	i := representative(faults, figs)
	if i < 0 {
		if len(names) > 0 {
			s.Title += "\n" + wrapNames(names, titleWidth)
		}
		return s
	}
	f := faults[i]
	s.From, s.To = f.Start.Add(-pictureBefore), f.End.Add(pictureAfter)
	// Not before the first operation, nor after the last.
	if len(s.Events) > 0 {
		first, last := s.Events[0].At, s.Events[0].At
		for _, e := range s.Events {
			first, last = minTime(first, e.At), maxTime(last, e.At)
		}
		if s.From.Before(first) {
			s.From = first
		}
		if last := last.Add(time.Nanosecond); s.To.After(last) {
			s.To = last
		}
	}
	s.Title = fmt.Sprintf("%s %s: %s\nthe median of %d by write unavailability (%.0f ms)", driver, scenario, f.Name, len(faults), figs[i].WriteUnavailableMs)
	return s
}

// titleWidth is about the characters one line of a picture's title holds
// (800 pixels wide, about 6 pixels a character).
const titleWidth = 115

// wrapNames joins the faults' names with ", then " into lines of at most
// width characters (a longer name gets a line of its own), so that the
// title of a long run (six restarts) stays in the picture.
func wrapNames(names []string, width int) string {
	var lines []string
	line := ""
	for i, n := range names {
		if i < len(names)-1 {
			n += ", then"
		}
		switch {
		case line == "":
			line = n
		case len(line)+1+len(n) <= width:
			line += " " + n
		default:
			lines = append(lines, line)
			line = n
		}
	}
	return strings.Join(append(lines, line), "\n")
}

// representative returns the index of the fault with the median write
// unavailability (the lower one of an even count) when faults repeats one
// kind more than once, or -1.
func representative(faults []Fault, figs []Figures) int {
	if len(faults) < 2 || len(figs) != len(faults) {
		return -1
	}
	for _, f := range faults[1:] {
		if f.Kind != faults[0].Kind {
			return -1
		}
	}
	idx := make([]int, len(faults))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		return cmp.Compare(figs[a].WriteUnavailableMs, figs[b].WriteUnavailableMs)
	})
	return idx[(len(idx)-1)/2]
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// PicturePath is where the picture of a scenario goes: next to the
// figures ($COFFER_CHAOS_OUT), chaos-SCENARIO.png for the docker driver
// and chaos-DRIVER-SCENARIO.png for another; "" when no figures are
// written.
func PicturePath(driver, scenario string) string {
	out := OutPath()
	if out == "" {
		return ""
	}
	name := "chaos-" + scenario + ".png"
	if driver != "docker" {
		name = "chaos-" + driver + "-" + scenario + ".png"
	}
	return filepath.Join(filepath.Dir(out), name)
}
