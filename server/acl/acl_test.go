package acl

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// precedenceCase is a set of rules (one policy) and, for each path, the
// pattern that must decide it ("" for none).
type precedenceCase struct {
	name     string
	patterns []string
	decide   map[string]string
}

// TestPrecedence takes its cases from the examples of Vault's policy
// documentation first, then one per priority rule.
func TestPrecedence(t *testing.T) {
	for _, tc := range []precedenceCase{
		{name: "docs: exact path", patterns: []string{"secret/foo"}, decide: map[string]string{
			"secret/foo": "secret/foo", "secret/food": "", "secret/foo/bar": "",
		}},
		{name: "docs: glob under a directory", patterns: []string{"secret/bar/*"}, decide: map[string]string{
			"secret/bar/zip": "secret/bar/*", "secret/bar/zip/zap": "secret/bar/*", "secret/bars/zip": "",
		}},
		{name: "docs: glob on a prefix", patterns: []string{"secret/zip-*"}, decide: map[string]string{
			"secret/zip-zap": "secret/zip-*", "secret/zip-zap/zong": "secret/zip-*", "secret/zip/zap": "",
		}},
		{name: "docs: one segment", patterns: []string{"secret/+/teamb", "secret/+/+/teamb"}, decide: map[string]string{
			"secret/foo/teamb": "secret/+/teamb", "secret/foo/bar/teamb": "secret/+/+/teamb",
			"secret/bar/foo/teamb": "secret/+/+/teamb", "secret/teamb": "", "secret//teamb": "",
		}},
		{name: "docs: secret/* beats secret/+/+/foo/* by rule 3", patterns: []string{"secret/*", "secret/+/+/foo/*"}, decide: map[string]string{
			"secret/a/b/foo/c": "secret/*",
		}},
		{name: "docs: an exact deny inside a glob", patterns: []string{"secret/*", "secret/super-secret"}, decide: map[string]string{
			"secret/super-secret": "secret/super-secret", "secret/super-secrets": "secret/*",
		}},
		{name: "secret/* vs secret/+/teamb vs secret/data/+/teamb",
			patterns: []string{"secret/*", "secret/+/teamb", "secret/data/+/teamb"}, decide: map[string]string{
				"secret/data/x/teamb": "secret/data/+/teamb", // rule 1: its wildcard comes later
				"secret/x/teamb":      "secret/+/teamb",      // rule 2: secret/* ends in *
				"secret/data/teamb":   "secret/+/teamb",
				"secret/data/x/teamc": "secret/*",
			}},
		{name: "exact beats glob", patterns: []string{"secret/data/a*", "secret/data/a"}, decide: map[string]string{
			"secret/data/a": "secret/data/a", "secret/data/abc/d": "secret/data/a*",
		}},
		{name: "exact beats +", patterns: []string{"secret/data/+", "secret/data/a"}, decide: map[string]string{
			"secret/data/a": "secret/data/a", "secret/data/b": "secret/data/+",
		}},
		{name: "rule 1: the later first wildcard wins", patterns: []string{"secret/data/*", "secret/data/payments/*", "secret/+/payments/*"}, decide: map[string]string{
			"secret/data/payments/x": "secret/data/payments/*", "secret/data/other": "secret/data/*",
			"secret/kv/payments/x": "secret/+/payments/*",
		}},
		{name: "rule 1: + against a glob", patterns: []string{"secret/data/+/db", "secret/data/app*"}, decide: map[string]string{
			"secret/data/app/db": "secret/data/app*", "secret/data/web/db": "secret/data/+/db",
		}},
		{name: "rule 2: a glob loses", patterns: []string{"secret/data/+", "secret/data/+*"}, decide: map[string]string{
			"secret/data/x": "secret/data/+", "secret/data/x/y": "secret/data/+*", "secret/data/": "",
		}},
		{name: "rule 3: more + loses", patterns: []string{"secret/+/x/*", "secret/+/+/*"}, decide: map[string]string{
			"secret/a/x/b": "secret/+/x/*", "secret/a/y/b": "secret/+/+/*",
		}},
		{name: "rule 4: shorter loses", patterns: []string{"secret/a/+/*", "secret/a/+/b*"}, decide: map[string]string{
			"secret/a/z/bc": "secret/a/+/b*", "secret/a/z/c": "secret/a/+/*",
		}},
		{name: "rule 5: lexicographically smaller loses", patterns: []string{"a/+/+/c", "a/+/b/+"}, decide: map[string]string{
			"a/x/b/c": "a/+/b/+", "a/x/y/c": "a/+/+/c",
		}},
		{name: "+ with a trailing glob", patterns: []string{"secret/+/app/*", "secret/+*"}, decide: map[string]string{
			"secret/kv/app/db": "secret/+/app/*", "secret/kv/app/": "secret/+/app/*", "secret/kv/app": "secret/+*",
			"secret/kv": "secret/+*", "secret/": "",
		}},
		{name: "literal * and + inside segments", patterns: []string{"secret/*/x", "secret/a+b"}, decide: map[string]string{
			"secret/*/x": "secret/*/x", "secret/y/x": "", "secret/a+b": "secret/a+b", "secret/aab": "",
		}},
		{name: "+ alone", patterns: []string{"+"}, decide: map[string]string{
			"sys": "+", "sys/x": "", "": "",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src strings.Builder
			for i, p := range tc.patterns {
				// Each rule grants a different capability set, so that the
				// deciding one shows in Capabilities.
				fmt.Fprintf(&src, "path %q { capabilities = %s }\n", p, hclList(capsFor(i)))
			}
			a := mustACL(t, mustParse(t, "prec", src.String()))
			for path, want := range tc.decide {
				d := a.Decide(path, Read)
				if d.Pattern != want {
					t.Errorf("%q is decided by %q, want %q", path, d.Pattern, want)
				}
				wantCaps := Capability(0)
				if i := slices.Index(tc.patterns, want); i >= 0 {
					wantCaps = capsFor(i)
				}
				if got := a.Capabilities(path); got != wantCaps {
					t.Errorf("Capabilities(%q) = %v, want %v", path, got, wantCaps)
				}
			}
		})
	}
}

// hclList writes c as an HCL list.
func hclList(c Capability) string {
	names := c.Names()
	for i, n := range names {
		names[i] = fmt.Sprintf("%q", n)
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// capsFor returns a distinct, non-deny capability set for rule i.
func capsFor(i int) Capability { return Capability(i+1) & AllGranting }

func TestDenyAppliesOnlyWhenItDecides(t *testing.T) {
	a := mustACL(t, mustParse(t, "deny", `
path "secret/data/*" { capabilities = ["deny"] }
path "secret/data/payments/*" { capabilities = ["read"] }
path "secret/data/payments/root-key" { capabilities = ["deny"] }
`))
	for path, want := range map[string]Capability{
		"secret/data/other":             Deny,
		"secret/data/payments/db":       Read, // the deny is lower priority
		"secret/data/payments/root-key": Deny,
	} {
		if got := a.Capabilities(path); got != want {
			t.Errorf("Capabilities(%q) = %v, want %v", path, got, want)
		}
	}
	if a.Allowed("secret/data/other", Read|Deny) || a.Allowed("secret/data/other", Deny) {
		t.Error("a deny rule allowed something")
	}
}

func TestMergeAcrossPolicies(t *testing.T) {
	reader := mustParse(t, "reader", `
path "secret/data/shared" { capabilities = ["read"] }
path "secret/data/*" { capabilities = ["read", "list"] }
path "secret/data/locked" { capabilities = ["read"] }
`)
	writer := mustParse(t, "writer", `
path "secret/data/shared" { capabilities = ["update"] }
path "secret/data/app/*" { capabilities = ["update"] }
`)
	locker := mustParse(t, "locker", `path "secret/data/locked" { policy = "deny" }`)
	a := mustACL(t, reader, writer, locker)
	for path, want := range map[string]Capability{
		"secret/data/shared": Read | Update, // same pattern: union
		"secret/data/app/db": Update,        // nothing inherited from secret/data/*
		"secret/data/other":  Read | List,
		"secret/data/locked": Deny, // a deny in any policy makes the rule deny
	} {
		if got := a.Capabilities(path); got != want {
			t.Errorf("Capabilities(%q) = %v, want %v", path, got, want)
		}
	}
	d := a.Decide("secret/data/shared", Update)
	if !d.Allowed || !slices.Equal(d.Policies, []string{"reader", "writer"}) {
		t.Fatalf("Decide = %+v", d)
	}
	// The order of the policies does not matter.
	b := mustACL(t, locker, writer, reader)
	for _, path := range []string{"secret/data/shared", "secret/data/app/db", "secret/data/other", "secret/data/locked"} {
		if a.Capabilities(path) != b.Capabilities(path) {
			t.Errorf("%q: %v in one order, %v in the other", path, a.Capabilities(path), b.Capabilities(path))
		}
	}
	// One policy given twice changes nothing.
	c := mustACL(t, reader, reader)
	if got := c.Decide("secret/data/shared", Read); got.Granted != Read || len(got.Policies) != 1 {
		t.Fatalf("Decide = %+v", got)
	}
}

func TestAllowedAnyOf(t *testing.T) {
	a := mustACL(t, mustParse(t, "p", `
path "secret/data/new" { capabilities = ["create"] }
path "secret/data/old" { capabilities = ["update"] }
path "secret/data/ro" { capabilities = ["read"] }
path "sys/audit" { capabilities = ["update", "sudo"] }
`))
	for _, tc := range []struct {
		path string
		need Capability
		want bool
	}{
		{"secret/data/new", Create | Update, true},
		{"secret/data/old", Create | Update, true},
		{"secret/data/ro", Create | Update, false},
		{"secret/data/ro", Read, true},
		{"secret/data/ro", 0, false},
		{"secret/data/none", Read, false},
		{"sys/audit", Update, true},
		{"sys/audit", Sudo, true},
		{"sys/audit", Read, false},
	} {
		if got := a.Allowed(tc.path, tc.need); got != tc.want {
			t.Errorf("Allowed(%q, %v) = %v, want %v", tc.path, tc.need, got, tc.want)
		}
	}
}

func TestListRequests(t *testing.T) {
	a := mustACL(t, mustParse(t, "list", `
path "secret/metadata/app" { capabilities = ["list"] }
path "+/sys/policies/acl" { capabilities = ["list"] }
path "x" { capabilities = ["read"] }
path "x/*" { capabilities = ["list"] }
path "y/" { capabilities = ["list"] }
path "y" { capabilities = ["read"] }
path "secret/metadata/*" { capabilities = ["list"] }
path "secret/metadata/team/*" { capabilities = ["deny"] }
`))
	for _, tc := range []struct {
		path string
		need Capability
		want bool
	}{
		// A rule without the trailing "/" decides a list request too.
		{"secret/metadata/app/", List, true},
		{"ns/sys/policies/acl/", List, true},
		// Only for lists.
		{"secret/metadata/app/", Read, false},
		// The exact rule for the bare path decides before any wildcard.
		{"x/", List, false},
		{"x/z/", List, true},
		// An exact rule for the path itself beats the bare one.
		{"y/", List, true},
		// Wildcard rules on the bare path come first, as in Vault, even
		// when a rule on the path has the higher priority.
		{"secret/metadata/team/", List, true},
		{"secret/metadata/team/x/", List, false},
	} {
		if got := a.Allowed(tc.path, tc.need); got != tc.want {
			t.Errorf("Allowed(%q, %v) = %v, want %v (%v)", tc.path, tc.need, got, tc.want, a.Decide(tc.path, tc.need))
		}
	}
	if got := a.Capabilities("ns/sys/policies/acl/"); got != 0 {
		t.Errorf("Capabilities of the list path = %v: the list rule is for Decide only", got)
	}
}

func TestRoot(t *testing.T) {
	r := Root()
	for _, path := range []string{"secret/data/x", "sys/seal", "", "anything/at/all"} {
		if got := r.Capabilities(path); got != AllGranting {
			t.Errorf("root Capabilities(%q) = %v", path, got)
		}
		if !r.Allowed(path, Sudo) || !r.Allowed(path, List) {
			t.Errorf("root refuses %q", path)
		}
	}
	if r.Allowed("x", Deny) || r.Allowed("x", 0) {
		t.Error("root allows nothing-needs")
	}
	d := r.Decide("sys/seal", Sudo)
	if !slices.Equal(d.Policies, []string{"root"}) || !strings.Contains(d.String(), "by the root policy") {
		t.Fatalf("root decision %+v: %s", d, d)
	}
	if _, err := Parse(RootPolicyName, []byte(`path "*" { capabilities = ["sudo"] }`)); err == nil {
		t.Fatal(`Parse accepted a policy named "root"`)
	}
}

func TestDefaultPolicy(t *testing.T) {
	p := mustParse(t, DefaultPolicyName, DefaultPolicySource)
	a := mustACL(t, p)
	want := map[string]Capability{
		"auth/token/lookup-self":            Read,
		"auth/token/renew-self":             Update,
		"auth/token/revoke-self":            Update,
		"sys/capabilities-self":             Update,
		"sys/internal/ui/mounts/secret/app": Read,
		"sys/leases/renew":                  Update,
		"sys/leases/lookup":                 Update,
		"sys/renew":                         Update,
	}
	if len(p.Rules()) != len(want) {
		t.Fatalf("the default policy has %d rules, want %d: %v", len(p.Rules()), len(want), p.Rules())
	}
	for path, c := range want {
		if got := a.Capabilities(path); got != c {
			t.Errorf("Capabilities(%q) = %v, want %v", path, got, c)
		}
	}
	for _, path := range []string{"secret/data/x", "auth/token/create", "auth/token/lookup", "sys/leases/revoke", "sys/renew/x", "cubbyhole/x"} {
		if got := a.Capabilities(path); got != 0 {
			t.Errorf("the default policy grants %v on %q", got, path)
		}
	}
	if f := Lint(p); len(f) != 0 {
		t.Errorf("Lint(default) = %v", f)
	}
}

func TestNewACL(t *testing.T) {
	if _, err := NewACL(mustParse(t, "a", `path "x" { capabilities = ["read"] }`), nil); err == nil || !strings.Contains(err.Error(), "policy 2 of 2 is nil") {
		t.Fatalf("NewACL with a nil policy: %v", err)
	}
	empty := mustACL(t)
	if empty.Capabilities("x") != 0 || empty.Allowed("x", AllGranting) {
		t.Fatal("an ACL without policies allows something")
	}
}

func TestDecisionString(t *testing.T) {
	a := mustACL(t, mustParse(t, "app", `
path "secret/data/app/*" { capabilities = ["read"] }
path "secret/data/app/key" { capabilities = ["deny"] }
`))
	for _, tc := range []struct {
		path string
		need Capability
		want string
	}{
		{"secret/data/app/db", Create | Update, `permission denied: create or update on "secret/data/app/db": rule "secret/data/app/*" (policy app) grants read`},
		{"secret/data/app/key", Read, `permission denied: read on "secret/data/app/key": rule "secret/data/app/key" (policy app) denies it`},
		{"secret/data/other", Read, `permission denied: read on "secret/data/other": no rule of the token's policies matches this path`},
		{"secret/data/app/db", Read, `read on "secret/data/app/db" is allowed: rule "secret/data/app/*" (policy app) grants read`},
	} {
		if got := a.Decide(tc.path, tc.need).String(); got != tc.want {
			t.Errorf("Decide(%q, %v).String() =\n%s\nwant\n%s", tc.path, tc.need, got, tc.want)
		}
	}
}

// TestLookupAllocatesNothing holds the promise the server relies on.
func TestLookupAllocatesNothing(t *testing.T) {
	a := mustACL(t, mustParse(t, "p", samplePolicyHCL), mustParse(t, DefaultPolicyName, DefaultPolicySource))
	paths := append(slices.Clone(samplePaths), "secret/metadata/app/")
	allocs := testing.AllocsPerRun(100, func() {
		for _, path := range paths {
			a.Capabilities(path)
			a.Allowed(path, Read)
			a.Decide(path, List)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round of lookups", allocs)
	}
}

// TestConcurrentLookups lets -race see many goroutines share one ACL.
func TestConcurrentLookups(t *testing.T) {
	a := mustACL(t, mustParse(t, "p", samplePolicyHCL))
	want := make(map[string]Capability)
	for _, path := range samplePaths {
		want[path] = a.Capabilities(path)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8*len(samplePaths))
	for range 8 {
		wg.Go(func() {
			for _, path := range samplePaths {
				if got := a.Capabilities(path); got != want[path] {
					errs <- fmt.Sprintf("%q: %v, want %v", path, got, want[path])
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestLookupMatchesReference compares the ACL's lookup with a direct
// reading of Vault's documented rules: every matching pattern (matched by a
// regular expression built from the pattern) is a candidate, and the one
// that ranks highest by the documented keys decides.
func TestLookupMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(alphabet string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	for round := range 300 {
		var patterns []string
		var src strings.Builder
		for range 1 + rng.IntN(8) {
			p := pick("ab/+", 1+rng.IntN(6))
			if rng.IntN(2) == 0 {
				p += "*"
			}
			if strings.TrimPrefix(p, "/") == "" || slices.Contains(patterns, strings.TrimPrefix(p, "/")) {
				continue
			}
			patterns = append(patterns, strings.TrimPrefix(p, "/"))
			fmt.Fprintf(&src, "path %q { capabilities = %s }\n", p, hclList(capsFor(len(patterns)-1)))
		}
		a := mustACL(t, mustParse(t, "ref", src.String()))
		for range 30 {
			path := pick("ab/", rng.IntN(7))
			want := referenceDecide(patterns, path)
			if got := a.Decide(path, Read).Pattern; got != want {
				t.Fatalf("round %d: patterns %q, path %q: decided by %q, the reference says %q", round, patterns, path, got, want)
			}
		}
	}
}

// referenceDecide is the documented rule, written independently of the
// package's pattern type.
func referenceDecide(patterns []string, path string) string {
	type key struct {
		exact    bool
		firstWC  int
		notGlob  bool
		fewerPlu int
		length   int
		text     string
	}
	rank := func(p string) key {
		body, glob := strings.CutSuffix(p, "*")
		k := key{notGlob: !glob, length: len(p), text: p, firstWC: -1}
		plus := 0
		off := 0
		for _, s := range strings.Split(body, "/") {
			if s == "+" {
				if plus == 0 {
					k.firstWC = off
				}
				plus++
			}
			off += len(s) + 1
		}
		if k.firstWC < 0 && glob {
			k.firstWC = len(body)
		}
		k.exact = k.firstWC < 0
		k.fewerPlu = -plus
		return k
	}
	less := func(a, b key) bool { // a has lower priority than b
		switch {
		case a.exact != b.exact:
			return b.exact
		case a.firstWC != b.firstWC:
			return a.firstWC < b.firstWC
		case a.notGlob != b.notGlob:
			return b.notGlob
		case a.fewerPlu != b.fewerPlu:
			return a.fewerPlu < b.fewerPlu
		case a.length != b.length:
			return a.length < b.length
		}
		return a.text < b.text
	}
	best := ""
	for _, p := range patterns {
		body, glob := strings.CutSuffix(p, "*")
		var re strings.Builder
		re.WriteString("^")
		for i, s := range strings.Split(body, "/") {
			if i > 0 {
				re.WriteString("/")
			}
			if s == "+" {
				re.WriteString("[^/]+")
			} else {
				re.WriteString(regexp.QuoteMeta(s))
			}
		}
		if glob {
			re.WriteString(".*")
		}
		re.WriteString("$")
		if !regexp.MustCompile(re.String()).MatchString(path) {
			continue
		}
		if best == "" || less(rank(best), rank(p)) {
			best = p
		}
	}
	return best
}
