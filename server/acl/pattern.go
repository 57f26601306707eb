package acl

import "strings"

// pattern is a compiled path pattern.
//
// A pattern ending in "*" is a prefix glob; a segment that is exactly "+"
// matches one non-empty segment; everything else is literal, including a
// "*" before the end and a "+" inside a segment.
type pattern struct {
	raw  string // as written, less one leading "/"
	body string // raw less the trailing "*" of a glob
	glob bool
	// lit is the literal start of the pattern, up to its first wildcard
	// (the first "+" segment, or the glob); the whole pattern when exact.
	lit string
	// firstWC is the byte offset in raw of the first wildcard ("+" segment
	// or the glob's "*"); -1 for an exact pattern.
	firstWC int
	plus    int      // number of "+" segments
	segs    []string // body split on "/", only when plus > 0
}

// compilePattern compiles raw, which has already lost its leading "/".
func compilePattern(raw string) *pattern {
	p := &pattern{raw: raw, body: raw, firstWC: -1}
	if strings.HasSuffix(raw, "*") {
		p.glob = true
		p.body = raw[:len(raw)-1]
	}
	segs := strings.Split(p.body, "/")
	off := 0
	for _, s := range segs {
		if s == "+" {
			if p.plus == 0 {
				p.firstWC = off
			}
			p.plus++
		}
		off += len(s) + 1
	}
	if p.plus > 0 {
		p.segs = segs
	} else if p.glob {
		p.firstWC = len(p.body)
	}
	if p.firstWC >= 0 {
		p.lit = raw[:p.firstWC]
	} else {
		p.lit = raw
	}
	return p
}

// exact reports whether the pattern has no wildcard.
func (p *pattern) exact() bool { return p.firstWC < 0 }

// match reports whether the request path matches the pattern. It does not
// allocate.
func (p *pattern) match(path string) bool {
	if p.exact() {
		return path == p.raw
	}
	if !strings.HasPrefix(path, p.lit) {
		return false
	}
	if p.plus == 0 { // a plain prefix glob: lit is the whole body
		return true
	}
	rest := path
	last := len(p.segs) - 1
	for i, seg := range p.segs {
		if i == last && p.glob {
			if seg == "+" { // "+*": one non-empty segment, then anything
				return rest != "" && rest[0] != '/'
			}
			return strings.HasPrefix(rest, seg)
		}
		part := rest
		j := strings.IndexByte(rest, '/')
		switch {
		case j < 0 && i != last:
			return false // the path has fewer segments
		case j >= 0 && i == last:
			return false // the path has more segments
		case j >= 0:
			part, rest = rest[:j], rest[j+1:]
		}
		if seg == "+" {
			if part == "" {
				return false
			}
		} else if part != seg {
			return false
		}
	}
	return true
}

// higher reports whether a has priority over b when both match a path,
// after Vault's documented rules: an exact pattern beats every wildcard
// one; then, a pattern whose first wildcard comes earlier loses; one that
// ends in "*" loses to one that does not; one with more "+" segments loses;
// a shorter one loses; a lexicographically smaller one loses.
func higher(a, b *pattern) bool {
	if a.exact() != b.exact() {
		return a.exact()
	}
	if !a.exact() {
		if a.firstWC != b.firstWC {
			return a.firstWC > b.firstWC
		}
		if a.glob != b.glob {
			return !a.glob
		}
		if a.plus != b.plus {
			return a.plus < b.plus
		}
	}
	if len(a.raw) != len(b.raw) {
		return len(a.raw) > len(b.raw)
	}
	return a.raw > b.raw
}
