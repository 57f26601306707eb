package auth

import (
	"fmt"
	"net/netip"
	"strings"
)

// MaxCIDRs bounds the CIDR blocks one binding lists.
const MaxCIDRs = 64

// ParseCIDRs parses CIDR blocks ("10.0.0.0/8") or single addresses
// ("10.1.2.3", taken as a /32 or /128). An empty list binds nothing.
func ParseCIDRs(blocks []string) ([]netip.Prefix, error) {
	if len(blocks) > MaxCIDRs {
		return nil, fmt.Errorf("auth: %d CIDR blocks, at most %d", len(blocks), MaxCIDRs)
	}
	var out []netip.Prefix
	for _, b := range blocks {
		b = strings.TrimSpace(b)
		if b == "" {
			continue
		}
		if p, err := netip.ParsePrefix(b); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(b)
		if err != nil {
			return nil, fmt.Errorf("auth: %q is neither a CIDR block (10.0.0.0/8) nor an address", b)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// AddrAllowed reports whether addr lies in one of blocks; with no blocks
// every address is allowed. An invalid addr (unknown) is allowed only
// when there are no blocks.
func AddrAllowed(blocks []netip.Prefix, addr netip.Addr) bool {
	if len(blocks) == 0 {
		return true
	}
	if !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	for _, p := range blocks {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Glob reports whether name matches pattern, in which each * stands for
// any run of characters (none included) and every other character for
// itself. Matching is case-sensitive; there are no other wildcards.
func Glob(pattern, name string) bool {
	// The classic two-pointer match with backtracking to the last star:
	// linear in practice, never exponential.
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// MatchAny reports whether name matches one of patterns (see Glob).
func MatchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if Glob(p, name) {
			return true
		}
	}
	return false
}
