package acl

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl"
	hclparser "github.com/hashicorp/hcl/hcl/parser"
)

const samplePolicyHCL = `
path "secret/data/payments/*" {
  capabilities = ["read"]
}

path "secret/metadata/+/config" {
  capabilities = ["list", "read"]
}

path "sys/seal" {
  capabilities = ["update", "sudo"]
}

path "secret/data/payments/root-key" {
  capabilities = ["deny"]
}

path "/auth/token/lookup-self" {
  policy = "read"
}
`

const samplePolicyJSON = `{
  "path": {
    "secret/data/payments/*": {"capabilities": ["read"]},
    "secret/metadata/+/config": {"capabilities": ["list", "read"]},
    "sys/seal": {"capabilities": ["update", "sudo"]},
    "secret/data/payments/root-key": {"capabilities": ["deny"]},
    "/auth/token/lookup-self": {"policy": "read"}
  }
}`

// samplePaths are request paths that exercise every rule of the sample
// policies and some that no rule matches.
var samplePaths = []string{
	"secret/data/payments/db", "secret/data/payments/", "secret/data/payments",
	"secret/data/payments/a/b", "secret/data/payments/root-key", "secret/data/other",
	"secret/metadata/app/config", "secret/metadata/app/config/x", "secret/metadata//config",
	"sys/seal", "sys/seal/x", "auth/token/lookup-self", "/auth/token/lookup-self", "",
}

func TestParseRules(t *testing.T) {
	p := mustParse(t, "sample", samplePolicyHCL)
	want := []Rule{
		{Pattern: "auth/token/lookup-self", Capabilities: Read | List, Line: 18, Column: 6},
		{Pattern: "secret/data/payments/*", Capabilities: Read, Line: 2, Column: 6},
		{Pattern: "secret/data/payments/root-key", Capabilities: Deny, Line: 14, Column: 6},
		{Pattern: "secret/metadata/+/config", Capabilities: List | Read, Line: 6, Column: 6},
		{Pattern: "sys/seal", Capabilities: Update | Sudo, Line: 10, Column: 6},
	}
	if got := p.Rules(); !slices.Equal(got, want) {
		t.Fatalf("Rules() =\n%v\nwant\n%v", got, want)
	}
	if p.Name() != "sample" || p.Source() != samplePolicyHCL {
		t.Fatalf("Name() = %q, Source() kept: %v", p.Name(), p.Source() == samplePolicyHCL)
	}
	rules := p.Rules()
	rules[0].Capabilities = Sudo
	if p.Rules()[0].Capabilities == Sudo {
		t.Fatal("Rules() returned the policy's own slice")
	}
}

func TestParseJSONDecidesLikeHCL(t *testing.T) {
	h := mustParse(t, "h", samplePolicyHCL)
	j := mustParse(t, "j", samplePolicyJSON)
	if !slices.EqualFunc(h.Rules(), j.Rules(), func(a, b Rule) bool {
		return a.Pattern == b.Pattern && a.Capabilities == b.Capabilities
	}) {
		t.Fatalf("rules differ:\nHCL  %v\nJSON %v", h.Rules(), j.Rules())
	}
	ha, ja := mustACL(t, h), mustACL(t, j)
	for _, path := range samplePaths {
		for _, need := range []Capability{Read, List, Update, Sudo, Create | Update} {
			if hd, jd := ha.Decide(path, need), ja.Decide(path, need); hd.Allowed != jd.Allowed || hd.Granted != jd.Granted || hd.Pattern != jd.Pattern {
				t.Errorf("%q need %v: HCL %+v, JSON %+v", path, need, hd, jd)
			}
		}
	}
	// The sample is not trivial: it allows and denies.
	if !ha.Allowed("secret/data/payments/db", Read) || ha.Allowed("secret/data/payments/root-key", Read) {
		t.Fatal("the sample policy does not decide as written")
	}
}

func TestParseJSONListForm(t *testing.T) {
	p := mustParse(t, "list", `{"path": [
		{"secret/data/a/*": {"capabilities": ["read"]}},
		{"secret/data/b/*": {"capabilities": ["update"]}}
	]}`)
	a := mustACL(t, p)
	if a.Capabilities("secret/data/a/x") != Read || a.Capabilities("secret/data/b/x") != Update {
		t.Fatalf("rules: %v", p.Rules())
	}
	// The JSON parser keeps no positions; Parse finds the keys' own.
	if r := p.Rules(); r[0].Line != 2 || r[0].Column != 4 || r[1].Line != 3 || r[1].Column != 4 {
		t.Fatalf("positions: %v", r)
	}
}

func TestParseCanonicalJSONRoundTrip(t *testing.T) {
	p := mustParse(t, "sample", samplePolicyHCL+`
path "secret/data/payments/*" { capabilities = ["list"] }
path "//odd" { capabilities = ["read"] }
path "quote\"and\\backslash<&>" { capabilities = ["read"] }
`)
	js, err := p.JSON()
	if err != nil {
		t.Fatal(err)
	}
	q, err := Parse("sample", js)
	if err != nil {
		t.Fatalf("canonical JSON does not parse: %v\n%s", err, js)
	}
	if !slices.EqualFunc(p.Rules(), q.Rules(), func(a, b Rule) bool {
		return a.Pattern == b.Pattern && a.Capabilities == b.Capabilities
	}) {
		t.Fatalf("round trip changed the rules:\n%v\n%v\n%s", p.Rules(), q.Rules(), js)
	}
	if !strings.Contains(string(js), `"secret/data/payments/*": {`) || !strings.Contains(string(js), `"read",`) {
		t.Fatalf("canonical JSON:\n%s", js)
	}
	if got := mustACL(t, q).Capabilities("/odd"); got != Read {
		t.Fatalf(`"//odd" became a rule for %v on "/odd" after the round trip`, got)
	}
	empty, err := Parse("e", []byte("# nothing granted\n"))
	if err != nil {
		t.Fatal(err)
	}
	js, err = empty.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("e", js); err != nil {
		t.Fatalf("canonical JSON of an empty policy (%s) does not parse: %v", js, err)
	}
}

func TestParseLegacyPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		want   Capability
	}{
		{"deny", Deny},
		{"read", Read | List},
		{"write", Create | Read | Update | Patch | Delete | List},
		{"sudo", Create | Read | Update | Patch | Delete | List | Sudo},
	} {
		p := mustParse(t, "legacy", fmt.Sprintf(`path "secret/data/x" { policy = %q }`, tc.policy))
		if got := p.Rules()[0].Capabilities; got != tc.want {
			t.Errorf("policy = %q gives %v, want %v", tc.policy, got, tc.want)
		}
	}
	// Vault adds the legacy form to a capabilities list.
	p := mustParse(t, "both", `path "x" {
  policy = "read"
  capabilities = ["update"]
}`)
	if got := p.Rules()[0].Capabilities; got != Read|List|Update {
		t.Fatalf("policy and capabilities give %v", got)
	}
}

func TestParseMergesDuplicateBlocks(t *testing.T) {
	p := mustParse(t, "dup", `
path "secret/data/a" { capabilities = ["read"] }
path "secret/data/a" { capabilities = ["update"] }
path "secret/data/b" { capabilities = ["read"] }
path "secret/data/b" { capabilities = ["deny"] }
path "secret/data/c" { capabilities = ["read", "deny"] }
`)
	want := []Rule{
		{Pattern: "secret/data/a", Capabilities: Read | Update, Line: 2, Column: 6},
		{Pattern: "secret/data/b", Capabilities: Deny, Line: 4, Column: 6},
		{Pattern: "secret/data/c", Capabilities: Deny, Line: 6, Column: 6},
	}
	if got := p.Rules(); !slices.Equal(got, want) {
		t.Fatalf("Rules() = %v, want %v", got, want)
	}
}

func TestParseAcceptsVaultSpellings(t *testing.T) {
	// Vault's HCL decoder matches keys without regard to case, and accepts
	// a top-level name (which it ignores).
	p := mustParse(t, "spell", `
name = "ignored"
PATH "secret/data/x" {
  Capabilities = ["read"]
}
`)
	if got := p.Rules(); len(got) != 1 || got[0].Capabilities != Read {
		t.Fatalf("Rules() = %v", got)
	}
	// The pattern may also be a key inside a path object.
	p = mustParse(t, "nested", "path {\n  \"secret/+*\" { capabilities = [\"list\"] }\n}")
	if got := p.Rules(); len(got) != 1 || got[0] != (Rule{Pattern: "secret/+*", Capabilities: List, Line: 2, Column: 3}) {
		t.Fatalf("Rules() = %v", got)
	}
}

// parseErrorCase is one refused policy: the error must be exactly one
// line, name the policy, give the position when wantLine > 0, and contain
// each of want.
type parseErrorCase struct {
	name     string
	policy   string // the policy's name; "p" when empty and not noName
	noName   bool
	src      string
	wantLine int
	wantCol  int
	want     []string
	tooLarge bool
}

func checkParseError(t *testing.T, tc parseErrorCase) {
	t.Helper()
	name := tc.policy
	if name == "" && !tc.noName {
		name = "p"
	}
	p, err := Parse(name, []byte(tc.src))
	if err == nil {
		t.Fatalf("Parse accepted it: %v", p.Rules())
	}
	msg := err.Error()
	if strings.ContainsAny(msg, "\r\n") {
		t.Fatalf("the error is not one line: %q", msg)
	}
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error %T is not a *ParseError", err)
	}
	if tc.wantLine > 0 {
		prefix := fmt.Sprintf("policy %s: line %d, column %d: ", name, tc.wantLine, tc.wantCol)
		if !strings.HasPrefix(msg, prefix) {
			t.Fatalf("error %q\ndoes not start with %q", msg, prefix)
		}
		if pe.Line != tc.wantLine || pe.Column != tc.wantCol {
			t.Fatalf("ParseError at %d:%d, want %d:%d", pe.Line, pe.Column, tc.wantLine, tc.wantCol)
		}
	} else if strings.Contains(msg, "line ") {
		t.Fatalf("error %q gives a position where none is known", msg)
	}
	for _, w := range tc.want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q\ndoes not contain %q", msg, w)
		}
	}
	if got := errors.Is(err, ErrPolicyTooLarge); got != tc.tooLarge {
		t.Errorf("errors.Is(err, ErrPolicyTooLarge) = %v", got)
	}
	if got := errors.Is(err, ErrInvalidPolicy); got == tc.tooLarge {
		t.Errorf("errors.Is(err, ErrInvalidPolicy) = %v", got)
	}
}

func TestParseRefusesRestrictingKeys(t *testing.T) {
	for key, val := range map[string]string{
		"allowed_parameters":    `{ "bar" = ["zip"] }`,
		"denied_parameters":     `{ "bar" = [] }`,
		"required_parameters":   `["bar"]`,
		"min_wrapping_ttl":      `"1s"`,
		"max_wrapping_ttl":      `"90s"`,
		"control_group":         `{ max_ttl = "4h" }`,
		"mfa_methods":           `["okta"]`,
		"subscribe_event_types": `["kv*"]`,
	} {
		t.Run(key, func(t *testing.T) {
			checkParseError(t, parseErrorCase{
				src:      "# a comment\npath \"secret/foo\" {\n  capabilities = [\"create\"]\n  " + key + " = " + val + "\n}\n",
				wantLine: 4, wantCol: 3,
				want: []string{key + " is not supported by coffer: remove it or grant the capability without it"},
			})
		})
	}
	// The same in JSON, where the parser flattens a block that holds only
	// objects into nested keys.
	checkParseError(t, parseErrorCase{
		src:      "{\"path\": {\"secret/foo\": {\n  \"allowed_parameters\": {\"bar\": {}}}}}",
		wantLine: 2, wantCol: 3,
		want: []string{"allowed_parameters is not supported by coffer"},
	})
	checkParseError(t, parseErrorCase{
		src:      "{\"path\": {\"secret/foo\": {\"capabilities\": [\"create\"],\n \"min_wrapping_ttl\": \"1s\"}}}",
		wantLine: 2, wantCol: 2,
		want: []string{"min_wrapping_ttl is not supported by coffer"},
	})
}

func TestParseRefusals(t *testing.T) {
	for _, tc := range []parseErrorCase{
		{name: "unknown capability", src: "path \"x\" {\n  capabilities = [\"read\", \"reed\"]\n}", wantLine: 2, wantCol: 27,
			want: []string{`unknown capability "reed": use create, read, update, patch, delete, list, sudo or deny`}},
		{name: "capability in upper case", src: `path "x" { capabilities = ["Read"] }`, wantLine: 1, wantCol: 28,
			want: []string{`use "read"`}},
		{name: "Vault-only capability", src: `path "x" { capabilities = ["subscribe"] }`, wantLine: 1, wantCol: 28,
			want: []string{`capability "subscribe" is not supported by coffer: remove it`}},
		{name: "capability not a string", src: `path "x" { capabilities = ["read", 3] }`, wantLine: 1, wantCol: 36,
			want: []string{"capabilities must be a list of strings"}},
		{name: "capabilities not a list", src: `path "x" { capabilities = "read" }`, wantLine: 1, wantCol: 12,
			want: []string{`capabilities must be a list of strings: write capabilities = ["read", "list"]`}},
		{name: "capabilities twice", src: "path \"x\" {\n capabilities = [\"read\"]\n capabilities = [\"list\"]\n}", wantLine: 3, wantCol: 2,
			want: []string{`capabilities is given twice: give it once`}},
		{name: "empty capabilities", src: `path "x" { capabilities = [] }`, wantLine: 1, wantCol: 6,
			want: []string{`path "x" grants nothing`}},
		{name: "no capabilities", src: "path \"secret/data/x\" {\n}\n", wantLine: 1, wantCol: 6,
			want: []string{`path "secret/data/x" has no capabilities: add capabilities = ["read"]`}},
		{name: "unknown key in block", src: "path \"x\" {\n  capabilites = [\"read\"]\n}", wantLine: 2, wantCol: 3,
			want: []string{`unknown key "capabilites" in the block of path "x"`}},
		{name: "unknown top-level key", src: "\n\npaths \"x\" { capabilities = [\"read\"] }", wantLine: 3, wantCol: 1,
			want: []string{`unknown key "paths": a policy holds only path blocks`}},
		{name: "empty pattern", src: `path "" { capabilities = ["read"] }`, wantLine: 1, wantCol: 6,
			want: []string{"the path pattern is empty"}},
		{name: "only a slash", src: `path "/" { capabilities = ["read"] }`, wantLine: 1, wantCol: 6,
			want: []string{"the path pattern is empty"}},
		{name: "templated path", src: `path "secret/data/{{identity.entity.id}}/*" { capabilities = ["read"] }`, wantLine: 1, wantCol: 6,
			want: []string{"templated", "coffer does not support"}},
		{name: "control character", src: `path "secret/a\nb" { capabilities = ["read"] }`, wantLine: 1, wantCol: 6,
			want: []string{`"secret/a\nb" holds a control character`}},
		{name: "unknown legacy policy", src: `path "x" { policy = "admin" }`, wantLine: 1, wantCol: 21,
			want: []string{`unknown policy "admin": use "deny", "read", "write" or "sudo"`}},
		{name: "legacy policy not a string", src: `path "x" { policy = ["read"] }`, wantLine: 1, wantCol: 12,
			want: []string{"policy must be a string"}},
		{name: "path without a block", src: `{"path": {"x": "read"}}`, wantLine: 1, wantCol: 11,
			want: []string{`path "x" must be followed by a block`}},
		{name: "two patterns", src: `path "a" "b" { capabilities = ["read"] }`, wantLine: 1, wantCol: 10,
			want: []string{"path takes one pattern"}},
		{name: "path without a pattern", src: `path = "x"`, wantLine: 1, wantCol: 1,
			want: []string{"path needs a pattern"}},
		{name: "empty text", src: " \n\t\n",
			want: []string{"the policy is empty"}},
		{name: "invalid UTF-8", src: "path \"x\" {\n  capabilities = [\"re\xffd\"]\n}", wantLine: 2, wantCol: 22,
			want: []string{"not valid UTF-8"}},
		{name: "malformed JSON", src: "{\"path\": {\"x\": {\"capabilities\": [\"read\"]}}\n\"oops\"}", wantLine: 2, wantCol: 1,
			want: []string{"cannot parse the policy: invalid character '\"' after object key:value pair"}},
		{name: "JSON with two keys for one pattern", src: "{\"path\": {\"x\": {\"capabilities\": {\"a\": {}}}}}", wantLine: 1, wantCol: 17,
			want: []string{"capabilities takes a value, not a block"}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkParseError(t, tc) })
	}
}

// TestParseReportsHCLParserPosition checks that a syntax error carries the
// HCL parser's own line and column.
func TestParseReportsHCLParserPosition(t *testing.T) {
	for _, src := range []string{
		"path \"x\" {\n  capabilities = [\"read\"]\n",           // unclosed block
		"path \"x\" {\n  capabilities = [\"read\" \"list\"]\n}", // missing comma
		"path \"x\" {\n  capabilities = \n}",                    // missing value
		"path \"x\" { capabilities = [\"read\"] }\n}\n",         // stray brace
	} {
		_, perr := hcl.Parse(src)
		var pe *hclparser.PosError
		if !errors.As(perr, &pe) {
			t.Fatalf("the HCL parser gives no position for %q: %v", src, perr)
		}
		checkParseError(t, parseErrorCase{src: src, wantLine: pe.Pos.Line, wantCol: pe.Pos.Column,
			want: []string{"cannot parse the policy: ", pe.Err.Error(), "fix the syntax"}})
	}
}

func TestParseLimits(t *testing.T) {
	big := "# " + strings.Repeat("x", MaxPolicyBytes) + "\npath \"x\" { capabilities = [\"read\"] }"
	checkParseError(t, parseErrorCase{src: big, tooLarge: true,
		want: []string{fmt.Sprintf("the policy is %d bytes, more than the limit of 65536: split it into several policies", len(big))}})

	var b strings.Builder
	for i := range MaxRules + 1 {
		fmt.Fprintf(&b, "path \"r/%d\" { capabilities = [\"read\"] }\n", i)
	}
	checkParseError(t, parseErrorCase{src: b.String(), tooLarge: true, wantLine: MaxRules + 1, wantCol: 6,
		want: []string{"more than 1000 path blocks: split the policy"}})
	// Exactly the limit is accepted.
	at := strings.Join(strings.SplitAfter(b.String(), "\n")[:MaxRules], "")
	if p := mustParse(t, "many", at); len(p.Rules()) != MaxRules {
		t.Fatalf("%d rules", len(p.Rules()))
	}

	long := strings.Repeat("a", MaxPatternBytes+1)
	checkParseError(t, parseErrorCase{src: "\n path \"" + long + "\" { capabilities = [\"read\"] }", tooLarge: true, wantLine: 2, wantCol: 7,
		want: []string{"the path pattern is 1025 bytes long, more than the limit of 1024"}})
	// A leading "/" does not count, as it is stripped.
	mustParse(t, "long", "path \"/"+long[1:]+"\" { capabilities = [\"read\"] }")
}

func TestParseNames(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"root", `policy root: the name "root" is reserved for the built-in root policy`},
		{"Admin", `policy "Admin": policy names are lower case (Vault lower-cases them, coffer refuses upper case): use "admin"`},
		{"a.b", `policy "a.b": a policy name may hold only a-z, 0-9, _ and -`},
		{"", `policy "": the policy has no name`},
		{"bad\nname", `policy "bad\nname": a policy name may hold only`},
		{strings.Repeat("a", MaxNameBytes+1), "the name is 129 bytes long: use at most 128"},
	} {
		checkParseError(t, parseErrorCase{policy: tc.name, noName: tc.name == "", src: `path "x" { capabilities = ["read"] }`, want: []string{tc.want}})
	}
	for _, ok := range []string{"default", "a", "team-b_2", strings.Repeat("z", MaxNameBytes)} {
		mustParse(t, ok, `path "x" { capabilities = ["read"] }`)
	}
}
