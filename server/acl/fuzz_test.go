package acl

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary text to Parse. It must never panic; what it
// refuses gets one line naming the policy; what it accepts is within the
// limits, evaluates without panicking, and its canonical JSON parses back
// to the same rules and the same decisions.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		samplePolicyHCL, samplePolicyJSON, DefaultPolicySource,
		`path "secret/data/*" { capabilities = ["deny"] }` + "\n" + `path "secret/data/payments/*" { capabilities = ["read"] }`,
		`path "+/sys/policies/acl" { capabilities = ["list"] }`,
		`path "x" { policy = "write" }`,
		`path "" {}`,
		`path "x" { capabilities = ["reed"] }`,
		`{"path": {"x": {"capabilities": ["read"]}}`,
		`{"path": {"x": "read"}}`,
		`{}`,
		"path \"x\" {\n capabilities = [\"read\"]\n",
		`path "{{identity.entity.id}}" { capabilities = ["read"] }`,
	} {
		f.Add([]byte(s))
	}
	for _, dir := range []string{"testdata/clean", "testdata/fuzz/seeds"} {
		files, err := filepath.Glob(filepath.Join(dir, "*"))
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			src, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(src)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := Parse("fuzz", src)
		if err != nil {
			msg := err.Error()
			if strings.ContainsAny(msg, "\r\n") || !strings.HasPrefix(msg, "policy fuzz: ") {
				t.Fatalf("error is not one line naming the policy: %q", msg)
			}
			if !errors.Is(err, ErrInvalidPolicy) && !errors.Is(err, ErrPolicyTooLarge) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if len(src) > MaxPolicyBytes || len(p.blocks) > MaxRules {
			t.Fatalf("accepted %d bytes, %d blocks", len(src), len(p.blocks))
		}
		for _, r := range p.Rules() {
			if r.Pattern == "" || len(r.Pattern) > MaxPatternBytes {
				t.Fatalf("accepted pattern of %d bytes", len(r.Pattern))
			}
			if r.Capabilities == 0 || (r.Capabilities&Deny != 0 && r.Capabilities != Deny) {
				t.Fatalf("rule %q has capabilities %v", r.Pattern, r.Capabilities)
			}
		}
		a, err := NewACL(p)
		if err != nil {
			t.Fatal(err)
		}
		paths := derivedPaths(p)
		for _, path := range paths {
			a.Capabilities(path)
			a.Decide(path, List)
			_ = a.Decide(path, Create|Update).String()
		}
		for _, fd := range Lint(p) {
			if strings.ContainsAny(fd.String(), "\r\n") {
				t.Fatalf("finding spans lines: %q", fd)
			}
		}

		js, err := p.JSON()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Parse("fuzz", js)
		if err != nil {
			t.Fatalf("canonical JSON does not parse: %v\n%s", err, js)
		}
		same := func(x, y Rule) bool { return x.Pattern == y.Pattern && x.Capabilities == y.Capabilities }
		if !slices.EqualFunc(p.Rules(), q.Rules(), same) {
			t.Fatalf("canonical JSON changed the rules:\n%v\n%v", p.Rules(), q.Rules())
		}
		b, err := NewACL(q)
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range paths {
			for _, need := range []Capability{Read, List} {
				da, db := a.Decide(path, need), b.Decide(path, need)
				if da.Allowed != db.Allowed || da.Granted != db.Granted || da.Pattern != db.Pattern {
					t.Fatalf("%q: %+v before, %+v after the JSON round trip", path, da, db)
				}
			}
		}
	})
}

// derivedPaths returns request paths near each rule of p: the pattern
// itself, filled in, cut short and extended.
func derivedPaths(p *Policy) []string {
	paths := []string{"", "x", "secret/data/x"}
	for i, pat := range p.pats {
		if i == 20 {
			break
		}
		for _, s := range []string{
			pat.raw, pat.body, pat.lit,
			instantiate(pat, pat, "x"), instantiate(pat, pat, ""), instantiate(pat, pat, "x/y"),
		} {
			paths = append(paths, s, s+"/", strings.TrimSuffix(s, "/"))
		}
	}
	return paths
}
