package acl

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Finding is one thing Lint reports about a policy: a rule that does not do
// what it seems to.
type Finding struct {
	// Line and Column locate the path block in the policy's text.
	Line, Column int
	// Pattern is the block's pattern.
	Pattern string
	// Message says what is wrong and what to do, in one line.
	Message string
}

// String returns the finding as "line L, column C: path "P": MESSAGE".
func (f Finding) String() string {
	return fmt.Sprintf("line %d, column %d: path %q: %s", f.Line, f.Column, clip(f.Pattern), f.Message)
}

// kvAPISegments are the second segments of KV version 2 request paths.
var kvAPISegments = []string{"data", "metadata", "delete", "undelete", "destroy", "config", "subkeys"}

// Lint reports the rules of p that do not do what they seem to, sorted by
// line:
//
//   - a deny rule that a higher-priority rule of the policy overrides on
//     part of what the deny covers, with an example path that is allowed,
//     and a deny on "dir/*" that does not stop listing "dir/" because a
//     list looks up "dir" first (see ACL.Decide);
//   - patterns that cannot match what the author meant: a "*" before the
//     end (a literal in Vault), a "+" inside a segment (also literal), an
//     empty segment, and a path on the KV version 2 mount "secret/" without
//     the API segment (secret/payments/* instead of secret/data/payments/*);
//   - a pattern given in more than one block (the blocks are merged);
//   - a block that can never decide anything: its pattern is denied by
//     another block of the same pattern, it denies and so voids another's
//     grants, or it grants nothing the earlier blocks do not; and a block
//     that lists deny with other capabilities, which deny voids.
//
// A rule is never fully shadowed by a rule of another pattern: under
// Vault's priority order a higher-priority pattern has its first wildcard
// no earlier and is not a glob where the other is not, so it cannot match
// every path the other matches. Only blocks of the same pattern can make a
// block useless, and Lint reports those.
func Lint(p *Policy) []Finding {
	var out []Finding
	report := func(b block, format string, args ...any) {
		out = append(out, Finding{Line: b.line, Column: b.column, Pattern: b.pat.raw, Message: fmt.Sprintf(format, args...)})
	}

	type seen struct {
		line int
		caps Capability
	}
	byPattern := make(map[string]*seen)
	for _, b := range p.blocks {
		prev, dup := byPattern[b.pat.raw]
		if !dup {
			byPattern[b.pat.raw] = &seen{line: b.line, caps: b.caps}
			for _, msg := range patternProblems(b.pat) {
				report(b, "%s", msg)
			}
		} else {
			report(b, "the same pattern is given at line %d: Vault merges the blocks (capabilities unioned, deny wins): keep one block", prev.line)
			switch {
			case prev.caps == Deny && b.caps != Deny:
				report(b, "this block grants nothing: the same pattern is denied at line %d, and deny wins: remove this block or the deny", prev.line)
			case b.caps == Deny && prev.caps != Deny:
				report(b, "this deny voids what line %d grants (%s) for the same pattern: remove the grant or this deny", prev.line, prev.caps)
			case b.caps&^prev.caps == 0:
				report(b, "this block adds nothing: line %d already grants %s for the same pattern: remove it", prev.line, prev.caps)
			}
			prev.caps = union(prev.caps, b.caps)
		}
		if b.listed&Deny != 0 && b.listed != Deny {
			report(b, "deny voids the other capabilities listed (%s): a rule with deny grants nothing: keep only deny, or remove it", b.listed&^Deny)
		}
	}

	out = append(out, overriddenDenies(p)...)
	slices.SortStableFunc(out, func(x, y Finding) int {
		if c := cmp.Compare(x.Line, y.Line); c != 0 {
			return c
		}
		return cmp.Compare(x.Column, y.Column)
	})
	return out
}

// patternProblems returns why a pattern cannot match what its author
// probably meant.
func patternProblems(p *pattern) []string {
	var out []string
	if i := strings.IndexByte(p.body, '*'); i >= 0 {
		out = append(out, `"*" is a wildcard only as the last character; here it is a literal "*" that request paths do not contain: use "+" for one segment, or end the pattern with "*"`)
	}
	if strings.HasPrefix(p.body, "/") || strings.Contains(p.body, "//") {
		out = append(out, `the pattern has an empty segment ("//"), which request paths do not have: remove the extra "/"`)
	}
	for seg := range strings.SplitSeq(p.body, "/") {
		if seg != "+" && strings.Contains(seg, "+") {
			out = append(out, fmt.Sprintf(`%q is literal: "+" is a wildcard only as a whole segment, as in "secret/data/+/config"`, clip(seg)))
			break
		}
	}
	if msg := kvProblem(p); msg != "" {
		out = append(out, msg)
	}
	return out
}

// kvProblem reports a pattern on the KV version 2 mount "secret/" that
// lacks the API segment (data, metadata, ...) and so matches no request.
func kvProblem(p *pattern) string {
	rest, ok := strings.CutPrefix(p.body, "secret/")
	if !ok {
		return ""
	}
	seg, _, more := strings.Cut(rest, "/")
	switch {
	case seg == "+":
		return ""
	case !more && p.glob: // the glob ends inside the second segment
		for _, api := range kvAPISegments {
			if strings.HasPrefix(api, seg) {
				return ""
			}
		}
	case seg == "" || slices.Contains(kvAPISegments, seg):
		return ""
	}
	tail := p.raw[len("secret/"):]
	return fmt.Sprintf(`KV version 2 requests are on secret/data/..., secret/metadata/... and secret/delete|undelete|destroy/..., so this pattern matches none: write "secret/data/%s" (and "secret/metadata/%s" to list)`, clip(tail), clip(tail))
}

// overriddenDenies reports deny rules that a higher-priority rule of the
// same policy overrides on part of what the deny covers. Each report names
// a path where the policy, evaluated, allows what the deny seems to forbid.
func overriddenDenies(p *Policy) []Finding {
	a, err := NewACL(p)
	if err != nil {
		return nil
	}
	type pair struct{ deny, decider string }
	reported := make(map[pair]bool)
	var out []Finding
	for i, d := range p.rules {
		if d.Capabilities != Deny || p.pats[i].exact() {
			continue // an exact deny has the highest priority there is
		}
		dp := p.pats[i]
		for j, r := range p.rules {
			rp := p.pats[j]
			if r.Capabilities == Deny || !higher(rp, dp) {
				continue
			}
			for _, w := range witnesses(rp, dp) {
				if !dp.match(w) || !rp.match(w) {
					continue
				}
				m := a.lookup(w)
				if m == nil || m.caps == Deny || m.pat == dp || reported[pair{dp.raw, m.pat.raw}] {
					continue
				}
				reported[pair{dp.raw, m.pat.raw}] = true
				line := lineOf(p, m.pat.raw)
				out = append(out, Finding{Line: d.Line, Column: d.Column, Pattern: d.Pattern, Message: fmt.Sprintf(
					"this deny does not apply to %q: the higher-priority rule %q (line %d) decides there and allows %s, because Vault applies only the highest-priority matching rule: deny that path in a rule of its own, or narrow the rule of line %d",
					clip(w), clip(m.pat.raw), line, m.caps, line)})
				break
			}
		}
		// A list request on the directory the deny covers looks up the
		// bare path first (see ACL.Decide), which the deny does not match.
		if dir := instantiate(dp, dp, ""); strings.HasSuffix(dir, "/") && dp.match(dir) {
			if dec := a.Decide(dir, List); dec.Allowed {
				out = append(out, Finding{Line: d.Line, Column: d.Column, Pattern: d.Pattern, Message: fmt.Sprintf(
					"this deny does not stop listing %q: for a list, Vault looks up the path without its trailing \"/\" first, and rule %q (line %d) allows list there: add path %q { capabilities = [\"deny\"] }",
					clip(dir), clip(dec.Pattern), lineOf(p, dec.Pattern), clip(strings.TrimSuffix(dir, "/")))})
			}
		}
	}
	return out
}

// lineOf returns the line of the first block of pattern raw.
func lineOf(p *Policy, raw string) int {
	for _, r := range p.rules {
		if r.Pattern == raw {
			return r.Line
		}
	}
	return 0
}

// witnesses returns candidate paths that may match both a and b: each
// pattern filled in with the other's literal segments where it has a "+",
// and with "x" elsewhere. Callers check each candidate against both.
func witnesses(a, b *pattern) []string {
	return []string{
		instantiate(a, b, "x"), instantiate(a, b, ""),
		instantiate(b, a, "x"), instantiate(b, a, ""),
	}
}

// instantiate returns a path that p matches, borrowing the segments of
// hint for p's "+" segments where hint has a literal there, and ending a
// glob with suffix.
func instantiate(p, hint *pattern, suffix string) string {
	if p.exact() {
		return p.raw
	}
	var b strings.Builder
	if p.plus == 0 {
		b.WriteString(p.body)
	} else {
		hsegs := strings.Split(hint.body, "/")
		for i, s := range p.segs {
			if i > 0 {
				b.WriteByte('/')
			}
			if s != "+" {
				b.WriteString(s)
				continue
			}
			fill := "x"
			if i < len(hsegs) && hsegs[i] != "+" {
				if hint.glob && i == len(hsegs)-1 {
					fill = hsegs[i] + "x" // the glob ends inside this segment
				} else if hsegs[i] != "" {
					fill = hsegs[i]
				}
			}
			b.WriteString(fill)
		}
	}
	if p.glob {
		b.WriteString(suffix)
	}
	return b.String()
}
