package acl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// lintOne lints src and returns the findings.
func lintOne(t *testing.T, src string) []Finding {
	t.Helper()
	return Lint(mustParse(t, "lint", src))
}

// wantFinding fails unless exactly one finding is at line and contains
// each of want.
func wantFinding(t *testing.T, findings []Finding, line int, want ...string) {
	t.Helper()
	var at []Finding
	for _, f := range findings {
		if f.Line == line {
			at = append(at, f)
		}
	}
	for _, f := range at {
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(f.Message, w)
		}
		if ok {
			return
		}
	}
	t.Errorf("no finding at line %d contains %q; findings: %v", line, want, findings)
}

func TestLintDenyOverriddenByHigherPriority(t *testing.T) {
	src := `path "secret/data/*" {
  capabilities = ["deny"]
}
path "secret/data/payments/*" {
  capabilities = ["read"]
}
`
	f := lintOne(t, src)
	if len(f) != 1 {
		t.Fatalf("findings: %v", f)
	}
	wantFinding(t, f, 1, `this deny does not apply to "secret/data/payments/x"`,
		`the higher-priority rule "secret/data/payments/*" (line 4) decides there and allows read`)
	if f[0].Pattern != "secret/data/*" || f[0].Column != 6 {
		t.Fatalf("finding %+v", f[0])
	}
	// What the finding says is what the ACL does.
	a := mustACL(t, mustParse(t, "lint", src))
	if !a.Allowed("secret/data/payments/x", Read) || a.Allowed("secret/data/other", Read) {
		t.Fatal("the example path is not allowed, or the deny does not hold elsewhere")
	}
}

func TestLintDenyOverriddenWithWildcards(t *testing.T) {
	// A deny on one segment that a glob with a longer literal start beats:
	// the example path borrows the glob's start for the "+".
	f := lintOne(t, `
path "secret/data/+/db" { capabilities = ["deny"] }
path "secret/data/app*" { capabilities = ["read", "update"] }
`)
	wantFinding(t, f, 2, `"secret/data/appx/db"`, `"secret/data/app*" (line 3)`, "allows read, update")
	// A glob deny that a "+" rule with a later wildcard beats.
	f = lintOne(t, `
path "secret/*" { capabilities = ["deny"] }
path "secret/data/+/config" { capabilities = ["read"] }
`)
	wantFinding(t, f, 2, `"secret/data/x/config"`, `"secret/data/+/config" (line 3)`)
}

func TestLintDenyThatDoesNotStopListing(t *testing.T) {
	src := `path "secret/metadata/*" { capabilities = ["list"] }
path "secret/metadata/team/*" { capabilities = ["deny"] }
`
	f := lintOne(t, src)
	if len(f) != 1 {
		t.Fatalf("findings: %v", f)
	}
	wantFinding(t, f, 2, `this deny does not stop listing "secret/metadata/team/"`, `rule "secret/metadata/*" (line 1) allows list there`,
		`add path "secret/metadata/team" { capabilities = ["deny"] }`)
	// What the finding says is what the ACL does, and its fix works.
	if !mustACL(t, mustParse(t, "l", src)).Allowed("secret/metadata/team/", List) {
		t.Fatal("the list is refused")
	}
	fixed := src + `path "secret/metadata/team" { capabilities = ["deny"] }` + "\n"
	if mustACL(t, mustParse(t, "l", fixed)).Allowed("secret/metadata/team/", List) {
		t.Fatal("the suggested fix does not stop the list")
	}
	if f := lintOne(t, fixed); len(f) != 0 {
		t.Fatalf("findings after the fix: %v", f)
	}
}

func TestLintDenyNotOverridden(t *testing.T) {
	for _, src := range []string{
		// The more specific rule denies too.
		`path "secret/data/*" { capabilities = ["deny"] }
path "secret/data/payments/*" { capabilities = ["deny"] }`,
		// The rules do not overlap.
		`path "secret/data/a/*" { capabilities = ["deny"] }
path "secret/data/b/*" { capabilities = ["read"] }`,
		// The grant is the lower-priority rule.
		`path "secret/data/payments/*" { capabilities = ["deny"] }
path "secret/data/*" { capabilities = ["read"] }`,
		// An exact deny wins over everything.
		`path "secret/data/a" { capabilities = ["deny"] }
path "secret/data/+" { capabilities = ["read"] }`,
	} {
		if f := lintOne(t, src); len(f) != 0 {
			t.Errorf("findings for\n%s\n%v", src, f)
		}
	}
}

func TestLintPatternsThatMissTheirMark(t *testing.T) {
	f := lintOne(t, `path "secret/data/*/config" { capabilities = ["read"] }
path "secret/payments/*" { capabilities = ["read"] }
path "secret/data//x" { capabilities = ["read"] }
path "secret/data/a+b" { capabilities = ["read"] }
path "secret/pay*" { capabilities = ["read"] }
path "secret/payments" { capabilities = ["read"] }
path "//leading" { capabilities = ["read"] }
path "secret/data/**" { capabilities = ["read"] }
`)
	wantFinding(t, f, 1, `"*" is a wildcard only as the last character`, `use "+" for one segment`)
	wantFinding(t, f, 2, "KV version 2 requests are on secret/data/...", `write "secret/data/payments/*" (and "secret/metadata/payments/*" to list)`)
	wantFinding(t, f, 3, `empty segment ("//")`)
	wantFinding(t, f, 4, `"a+b" is literal: "+" is a wildcard only as a whole segment`)
	wantFinding(t, f, 5, `write "secret/data/pay*"`)
	wantFinding(t, f, 6, `write "secret/data/payments"`)
	wantFinding(t, f, 7, `empty segment`)
	wantFinding(t, f, 8, `"*" is a wildcard only as the last character`)
	if len(f) != 8 {
		t.Errorf("%d findings, want 8: %v", len(f), f)
	}
	for i := 1; i < len(f); i++ {
		if f[i].Line < f[i-1].Line {
			t.Fatalf("findings not sorted by line: %v", f)
		}
	}
	// What the first finding says: the "*" is literal.
	a := mustACL(t, mustParse(t, "lint", `path "secret/data/*/config" { capabilities = ["read"] }`))
	if a.Allowed("secret/data/app/config", Read) || !a.Allowed("secret/data/*/config", Read) {
		t.Fatal(`a "*" before the end is not literal`)
	}
}

func TestLintKVPatternsThatAreFine(t *testing.T) {
	for _, p := range []string{
		"secret/*", "secret/d*", "secret/data*", "secret/+/x", "secret/", "secret/metadata/", "secret/config",
		"secret/subkeys/a", "secret/delete/a/*", "secret/undelete/a", "secret/destroy/+", "kv/payments/*", "secret",
	} {
		if f := lintOne(t, `path "`+p+`" { capabilities = ["read"] }`); len(f) != 0 {
			t.Errorf("%q: %v", p, f)
		}
	}
}

func TestLintDuplicatePatterns(t *testing.T) {
	f := lintOne(t, `path "secret/data/a/*" { capabilities = ["read"] }
path "secret/data/a/*" { capabilities = ["update"] }
path "secret/data/b" { capabilities = ["read", "list"] }
path "secret/data/b" { capabilities = ["read"] }
path "secret/data/c" { capabilities = ["deny"] }
path "secret/data/c" { capabilities = ["read"] }
path "secret/data/d" { capabilities = ["read"] }
path "secret/data/d" { capabilities = ["deny"] }
path "secret/data/e" { capabilities = ["read", "deny"] }
`)
	wantFinding(t, f, 2, "the same pattern is given at line 1: Vault merges the blocks")
	wantFinding(t, f, 4, "the same pattern is given at line 3")
	wantFinding(t, f, 4, "this block adds nothing: line 3 already grants read, list")
	wantFinding(t, f, 6, "this block grants nothing: the same pattern is denied at line 5")
	wantFinding(t, f, 8, "this deny voids what line 7 grants (read)")
	wantFinding(t, f, 9, "deny voids the other capabilities listed (read)")
	if len(f) != 8 {
		t.Errorf("%d findings, want 8: %v", len(f), f)
	}
	// Line 2 adds update: merged, not useless.
	for _, x := range f {
		if x.Line == 2 && strings.Contains(x.Message, "adds nothing") {
			t.Errorf("line 2 reported as adding nothing: %v", x)
		}
	}
}

// TestLintCleanPolicies: the example policies in testdata/clean, written
// after Vault's documentation for KV version 2, draw no finding.
func TestLintCleanPolicies(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "clean", "*"))
	if err != nil || len(files) < 5 {
		t.Fatalf("clean examples: %v %v", files, err)
	}
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		p := mustParse(t, "clean", string(src))
		if f := Lint(p); len(f) != 0 {
			t.Errorf("%s: %v", file, f)
		}
	}
	if f := Lint(mustParse(t, "default", DefaultPolicySource)); len(f) != 0 {
		t.Errorf("default policy: %v", f)
	}
}

func TestFindingString(t *testing.T) {
	f := Finding{Line: 3, Column: 6, Pattern: "secret/x", Message: "m"}
	if got := f.String(); got != `line 3, column 6: path "secret/x": m` {
		t.Fatal(got)
	}
	// Every message is one line.
	for _, x := range lintOne(t, "path \"secret/a+b*c\" { capabilities = [\"read\", \"deny\"] }\npath \"secret/a+b*c\" { capabilities = [\"list\"] }") {
		if strings.ContainsAny(x.String(), "\n\r") {
			t.Errorf("finding spans lines: %q", x)
		}
	}
}
