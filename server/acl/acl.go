package acl

import (
	"fmt"
	"slices"
	"strings"
)

// mergedRule is one pattern of an ACL: the union of every rule with that
// pattern in the token's policies.
type mergedRule struct {
	pat      *pattern
	caps     Capability
	policies []string // the policies that hold the pattern, in the order given
}

// ACL decides what a token may do: the merged rules of the token's
// policies. Build one with NewACL (or Root) when a token's policies are
// known, and keep it while they do not change; lookups do not allocate. An
// ACL is immutable and safe for concurrent use.
type ACL struct {
	root  bool
	exact map[string]*mergedRule // rules without a wildcard, by pattern
	wild  []*mergedRule          // rules with a wildcard, highest priority first
}

// rootPolicies is what a root decision reports as its source.
var rootPolicies = []string{RootPolicyName}

// Root returns the ACL of the built-in root policy: it allows everything
// on every path, sudo included.
func Root() *ACL { return &ACL{root: true} }

// NewACL merges a token's policies as Vault does: rules with the same
// pattern in different policies become one rule holding the union of their
// capabilities (Deny alone when any of them denies); a lookup then applies
// the single highest-priority rule that matches the path. With no
// policies, the ACL allows nothing.
func NewACL(policies ...*Policy) (*ACL, error) {
	a := &ACL{exact: make(map[string]*mergedRule)}
	byPattern := make(map[string]*mergedRule)
	for i, p := range policies {
		if p == nil {
			return nil, fmt.Errorf("acl: policy %d of %d is nil: pass parsed policies", i+1, len(policies))
		}
		for j, r := range p.rules {
			m, ok := byPattern[r.Pattern]
			if !ok {
				m = &mergedRule{pat: p.pats[j], caps: r.Capabilities}
				byPattern[r.Pattern] = m
				if m.pat.exact() {
					a.exact[r.Pattern] = m
				} else {
					a.wild = append(a.wild, m)
				}
			} else {
				m.caps = union(m.caps, r.Capabilities)
			}
			if !slices.Contains(m.policies, p.name) {
				m.policies = append(m.policies, p.name)
			}
		}
	}
	slices.SortFunc(a.wild, func(x, y *mergedRule) int {
		switch {
		case x == y:
			return 0
		case higher(x.pat, y.pat):
			return -1
		}
		return 1
	})
	return a, nil
}

// lookup returns the rule that decides path, or nil.
func (a *ACL) lookup(path string) *mergedRule {
	if m, ok := a.exact[path]; ok {
		return m
	}
	return a.lookupWild(path)
}

// lookupWild returns the highest-priority wildcard rule that matches path,
// or nil.
func (a *ACL) lookupWild(path string) *mergedRule {
	for _, m := range a.wild {
		if m.pat.match(path) {
			return m
		}
	}
	return nil
}

// lookupList returns the rule that decides a list request on path, which
// ends in "/", in Vault's order: an exact rule for the path, an exact rule
// for the path without its trailing "/" (the bare path), the wildcard
// rules on the bare path, and only then the wildcard rules on the path.
func (a *ACL) lookupList(path string) *mergedRule {
	bare := path[:len(path)-1]
	if m, ok := a.exact[path]; ok {
		return m
	}
	if m, ok := a.exact[bare]; ok {
		return m
	}
	if m := a.lookupWild(bare); m != nil {
		return m
	}
	return a.lookupWild(path)
}

// Capabilities returns what the ACL grants on path: the capabilities of
// the highest-priority matching rule, exactly Deny when that rule denies,
// and 0 when no rule matches. path is the request path as Vault's router
// sees it: cleaned, without a leading "/" (for example
// "secret/data/payments/db").
func (a *ACL) Capabilities(path string) Capability {
	if a.root {
		return AllGranting
	}
	if m := a.lookup(path); m != nil {
		return m.caps
	}
	return 0
}

// Allowed reports whether the ACL grants any one of the capabilities in
// need on path. Several bits mean that any of them suffices: the server
// passes Create|Update when it does not know whether a secret exists yet.
// To require two capabilities, such as Sudo on a root-protected path in
// addition to the operation's own, call Allowed once for each. need 0 (or
// Deny) is never allowed. A list request passes need List and the path with
// a trailing "/", as Vault's router does; a rule for the path without the
// "/" then decides too (see Decide).
func (a *ACL) Allowed(path string, need Capability) bool {
	return a.Decide(path, need).Allowed
}

// Decision is the outcome of one check, with what an error message or an
// audit entry needs.
type Decision struct {
	// Path and Need are the check's input.
	Path string
	Need Capability
	// Allowed reports whether the rule grants one of the capabilities in
	// Need.
	Allowed bool
	// Granted is what the deciding rule grants: exactly Deny for a deny
	// rule, 0 when no rule matched.
	Granted Capability
	// Pattern is the deciding rule's pattern, "" when no rule matched.
	Pattern string
	// Policies are the policies that hold Pattern ("root" for the root
	// ACL). The slice is shared: do not modify it.
	Policies []string
}

// Decide is Allowed with the reason. When need includes List and path ends
// in "/", the lookup follows Vault's order for list requests: an exact rule
// for the path; an exact rule for the path without its trailing "/" (the
// bare path); the highest-priority wildcard rule matching the bare path;
// the one matching the path. So with rules "secret/metadata/*" (list) and
// "secret/metadata/app/*" (deny), listing "secret/metadata/app/" is allowed,
// as in Vault: the bare path "secret/metadata/app" matches only the first.
// Lint reports such a deny.
func (a *ACL) Decide(path string, need Capability) Decision {
	d := Decision{Path: path, Need: need}
	if a.root {
		d.Granted, d.Policies = AllGranting, rootPolicies
		d.Allowed = need&AllGranting != 0
		return d
	}
	var m *mergedRule
	if need&List != 0 && strings.HasSuffix(path, "/") {
		m = a.lookupList(path)
	} else {
		m = a.lookup(path)
	}
	if m == nil {
		return d
	}
	d.Granted, d.Pattern, d.Policies = m.caps, m.pat.raw, m.policies
	d.Allowed = m.caps&Deny == 0 && m.caps&need&AllGranting != 0
	return d
}

// String describes the decision in one line, for an error message or a
// log: which capability is missing on which path, and why.
func (d Decision) String() string {
	needs := strings.Join((d.Need &^ Deny).Names(), " or ")
	if needs == "" {
		needs = "nothing"
	}
	var b strings.Builder
	if d.Allowed {
		fmt.Fprintf(&b, "%s on %q is allowed", needs, clip(d.Path))
	} else {
		fmt.Fprintf(&b, "permission denied: %s on %q", needs, clip(d.Path))
	}
	switch {
	case d.Pattern == "" && d.Granted != 0:
		fmt.Fprintf(&b, " by the root policy")
	case d.Pattern == "":
		b.WriteString(": no rule of the token's policies matches this path")
	case d.Granted == Deny:
		fmt.Fprintf(&b, ": rule %q (policy %s) denies it", clip(d.Pattern), strings.Join(d.Policies, ", "))
	default:
		fmt.Fprintf(&b, ": rule %q (policy %s) grants %s", clip(d.Pattern), strings.Join(d.Policies, ", "), d.Granted)
	}
	return b.String()
}
