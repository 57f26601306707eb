package acl

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	hclparser "github.com/hashicorp/hcl/hcl/parser"
	"github.com/hashicorp/hcl/hcl/token"
	jsonscanner "github.com/hashicorp/hcl/json/scanner"
	jsontoken "github.com/hashicorp/hcl/json/token"
)

// Limits on what Parse accepts.
const (
	// MaxPolicyBytes is the largest policy text Parse accepts.
	MaxPolicyBytes = 64 << 10
	// MaxRules is the largest number of path blocks in one policy.
	MaxRules = 1000
	// MaxPatternBytes is the longest path pattern.
	MaxPatternBytes = 1024
	// MaxNameBytes is the longest policy name.
	MaxNameBytes = 128
)

// Names of the built-in policies.
const (
	// RootPolicyName is the built-in policy that allows everything (see
	// Root). No policy of this name can be parsed or written.
	RootPolicyName = "root"
	// DefaultPolicyName is the policy that coffer attaches to tokens by
	// default; its initial text is DefaultPolicySource.
	DefaultPolicyName = "default"
)

// restrictingKeys are path-block keys that Vault honours and coffer does
// not implement. Each one narrows what the rule grants, so ignoring it
// would grant more than the author meant: Parse refuses them.
var restrictingKeys = map[string]bool{
	"allowed_parameters":    true,
	"denied_parameters":     true,
	"required_parameters":   true,
	"min_wrapping_ttl":      true,
	"max_wrapping_ttl":      true,
	"control_group":         true,
	"mfa_methods":           true,
	"subscribe_event_types": true,
}

// legacyPolicies maps Vault's older `policy = "..."` form of a path block
// to capabilities, as Vault does.
var legacyPolicies = map[string]Capability{
	"deny":  Deny,
	"read":  Read | List,
	"write": Create | Read | Update | Patch | Delete | List,
	"sudo":  Create | Read | Update | Patch | Delete | List | Sudo,
}

// Rule is one path rule of a policy: what it grants on the paths its
// pattern matches. Path blocks of a policy with the same pattern make one
// Rule whose capabilities are the union of theirs (Deny alone if any of them
// denies), as Vault merges them.
type Rule struct {
	// Pattern is the path pattern, without a leading "/".
	Pattern string
	// Capabilities is what the rule grants; exactly Deny for a deny rule.
	Capabilities Capability
	// Line and Column locate the first block of this pattern in the
	// policy's text.
	Line, Column int
}

// block is one path block as written.
type block struct {
	pat          *pattern
	caps         Capability // exactly Deny when the block denies
	listed       Capability // as listed, before deny overrides the rest
	line, column int
}

// Policy is a parsed policy. It is immutable and safe for concurrent use.
type Policy struct {
	name   string
	source string
	rules  []Rule     // merged, sorted by pattern
	pats   []*pattern // compiled, parallel to rules
	blocks []block    // each path block in the order written
}

// Name returns the policy's name.
func (p *Policy) Name() string { return p.name }

// Source returns the policy's text exactly as given to Parse.
func (p *Policy) Source() string { return p.source }

// Rules returns the policy's rules in canonical form: one per pattern,
// sorted by pattern, duplicate blocks merged and the legacy `policy` form
// turned into capabilities. The slice is a copy.
func (p *Policy) Rules() []Rule { return slices.Clone(p.rules) }

// jsonPolicy and jsonRule are the canonical JSON form, which is Vault's.
type jsonPolicy struct {
	Path map[string]jsonRule `json:"path,omitempty"`
}

type jsonRule struct {
	Capabilities []string `json:"capabilities"`
}

// JSON returns the policy in canonical JSON form, which Parse accepts and
// which decides every path as the policy does:
//
//	{"path": {"secret/data/app/*": {"capabilities": ["read"]}}}
func (p *Policy) JSON() ([]byte, error) {
	out := jsonPolicy{}
	if len(p.rules) > 0 {
		out.Path = make(map[string]jsonRule, len(p.rules))
	}
	for _, r := range p.rules {
		key := r.Pattern
		if strings.HasPrefix(key, "/") {
			key = "/" + key // Parse strips one leading "/"
		}
		out.Path[key] = jsonRule{Capabilities: r.Capabilities.Names()}
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return nil, fmt.Errorf("acl: encode policy %s: %w", p.name, err)
	}
	return []byte(b.String()), nil
}

// validName reports whether name is an acceptable policy name (which
// "root" is not).
func validName(name string) bool {
	if name == "" || len(name) > MaxNameBytes {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// checkName returns why name is not acceptable, or "".
func checkName(name string) string {
	switch {
	case name == RootPolicyName:
		return `the name "root" is reserved for the built-in root policy, which allows everything and cannot be written: choose another name`
	case name == "":
		return "the policy has no name: give it one of a-z, 0-9, _ and - (up to 128 characters)"
	case len(name) > MaxNameBytes:
		return fmt.Sprintf("the name is %d bytes long: use at most %d", len(name), MaxNameBytes)
	case validName(name):
		return ""
	case validName(strings.ToLower(name)):
		return fmt.Sprintf("policy names are lower case (Vault lower-cases them, coffer refuses upper case): use %q", strings.ToLower(name))
	}
	return "a policy name may hold only a-z, 0-9, _ and - (1 to 128 characters): rename it"
}

// Parse parses a policy named name from src, in Vault's HCL or JSON form
// (JSON when the text starts with "{"), and checks it. A policy is a list of
//
//	path "PATTERN" { capabilities = ["read", "list"] }
//
// blocks; Vault's legacy `policy = "deny|read|write|sudo"` is accepted in a
// block too. Parse refuses, with one line naming the place, what it cannot
// honour exactly: keys that would restrict a rule in Vault and that coffer
// does not implement (allowed_parameters and the like), templated paths,
// unknown keys or capabilities, empty patterns, blocks that grant nothing,
// JSON that is not valid JSON, and anything over MaxPolicyBytes, MaxRules or
// MaxPatternBytes. The error is a *ParseError wrapping ErrInvalidPolicy or
// ErrPolicyTooLarge. A text without any path block (only comments, or "{}")
// is a policy that grants nothing; an empty text is refused.
func Parse(name string, src []byte) (*Policy, error) {
	if msg := checkName(name); msg != "" {
		return nil, &ParseError{Policy: name, Msg: msg, kind: ErrInvalidPolicy}
	}
	if len(src) > MaxPolicyBytes {
		return nil, &ParseError{Policy: name, kind: ErrPolicyTooLarge,
			Msg: fmt.Sprintf("the policy is %d bytes, more than the limit of %d: split it into several policies", len(src), MaxPolicyBytes)}
	}
	if !utf8.Valid(src) {
		line, col := position(src, invalidUTF8At(src))
		return nil, &ParseError{Policy: name, Line: line, Column: col, kind: ErrInvalidPolicy,
			Msg: "the policy is not valid UTF-8: save it as UTF-8"}
	}
	if len(strings.TrimSpace(string(src))) == 0 {
		return nil, &ParseError{Policy: name, kind: ErrInvalidPolicy,
			Msg: `the policy is empty: write at least one path "PATTERN" { capabilities = [...] } block`}
	}
	if isJSON(src) {
		// The HCL package's JSON parser accepts text that is not JSON,
		// even an object cut short: a policy truncated before its deny
		// rules would be accepted. The JSON form must be valid JSON.
		var se *json.SyntaxError
		if err := json.Unmarshal(src, new(any)); errors.As(err, &se) {
			line, col := position(src, int(se.Offset)-1)
			return nil, &ParseError{Policy: name, Line: line, Column: col, kind: ErrInvalidPolicy,
				Msg: fmt.Sprintf(`cannot parse the policy: %s: fix the JSON ({"path": {"PATTERN": {"capabilities": ["read"]}}})`, se.Error())}
		} else if err != nil {
			return nil, &ParseError{Policy: name, kind: ErrInvalidPolicy,
				Msg: fmt.Sprintf(`cannot parse the policy: %s: fix the JSON ({"path": {"PATTERN": {"capabilities": ["read"]}}})`, clip(err.Error()))}
		}
	}
	file, err := parseHCL(src)
	if err != nil {
		e := syntaxError(err)
		e.Policy = name
		return nil, e
	}
	ps := &parser{name: name}
	if isJSON(src) {
		ps.json = newJSONKeyIndex(src)
	}
	if err := ps.file(file); err != nil {
		return nil, err
	}
	p := &Policy{name: name, source: string(src), blocks: ps.blocks}
	p.rules, p.pats = mergeBlocks(ps.blocks)
	return p, nil
}

// mergeBlocks makes one rule of the blocks of each pattern, sorted by
// pattern, with the compiled patterns in a parallel slice.
func mergeBlocks(blocks []block) ([]Rule, []*pattern) {
	type entry struct {
		rule Rule
		pat  *pattern
	}
	var entries []entry
	index := make(map[string]int, len(blocks))
	for _, b := range blocks {
		if i, ok := index[b.pat.raw]; ok {
			entries[i].rule.Capabilities = union(entries[i].rule.Capabilities, b.caps)
			continue
		}
		index[b.pat.raw] = len(entries)
		entries = append(entries, entry{Rule{Pattern: b.pat.raw, Capabilities: b.caps, Line: b.line, Column: b.column}, b.pat})
	}
	slices.SortFunc(entries, func(x, y entry) int { return strings.Compare(x.rule.Pattern, y.rule.Pattern) })
	rules, pats := make([]Rule, len(entries)), make([]*pattern, len(entries))
	for i, e := range entries {
		rules[i], pats[i] = e.rule, e.pat
	}
	return rules, pats
}

// union merges the capabilities of two rules of the same pattern: a deny
// in either makes the result a deny.
func union(a, b Capability) Capability {
	if (a|b)&Deny != 0 {
		return Deny
	}
	return a | b
}

// parseHCL runs the HCL parser, turning a panic inside it into an error:
// no input may crash the server.
func parseHCL(src []byte) (f *ast.File, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("the parser failed on this input (%v)", r)
		}
	}()
	return hcl.ParseBytes(src)
}

// errAt finds "at LINE:COLUMN" in a parser error's text.
var errAt = regexp.MustCompile(` at (\d+):(\d+)\b`)

// errTwice is the parser's error for an argument given twice.
var errTwice = regexp.MustCompile(`^The argument "([^"]{1,64})" at \d+:\d+ was already set`)

// syntaxError turns a parser error into a ParseError with the parser's
// line and column.
func syntaxError(err error) *ParseError {
	e := &ParseError{kind: ErrInvalidPolicy}
	msg := err.Error()
	var pe *hclparser.PosError
	if errors.As(err, &pe) {
		e.Line, e.Column, msg = pe.Pos.Line, pe.Pos.Column, pe.Err.Error()
	} else if m := errAt.FindStringSubmatch(msg); m != nil {
		// Some of the parser's errors name their position in the text
		// ("The argument "capabilities" at 3:2 was already set").
		e.Line, _ = strconv.Atoi(m[1])
		e.Column, _ = strconv.Atoi(m[2])
		if d := errTwice.FindStringSubmatch(msg); d != nil {
			e.Msg = fmt.Sprintf("%s is given twice: give it once", d[1])
			return e
		}
	}
	e.Msg = fmt.Sprintf(`cannot parse the policy: %s: fix the syntax (path "PATTERN" { capabilities = ["read"] })`, clip(msg))
	return e
}

// isJSON reports whether the HCL package reads src as JSON: when its first
// non-space character is "{".
func isJSON(src []byte) bool {
	t := strings.TrimLeftFunc(string(src), unicode.IsSpace)
	return strings.HasPrefix(t, "{")
}

// invalidUTF8At returns the offset of the first byte of src that is not
// valid UTF-8.
func invalidUTF8At(src []byte) int {
	for i := 0; i < len(src); {
		r, n := utf8.DecodeRune(src[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return len(src)
}

// position returns the line and column (in characters, from 1) of byte
// offset off in src.
func position(src []byte, off int) (line, col int) {
	off = max(0, min(off, len(src)))
	line, col = 1, 1
	for _, r := range string(src[:off]) {
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// parser walks the HCL syntax tree of one policy.
type parser struct {
	name   string
	blocks []block
	json   *jsonKeyIndex // nil for HCL, whose keys carry their position
}

// keyPos returns the position of an object key.
func (ps *parser) keyPos(k *ast.ObjectKey) token.Pos {
	if k.Token.Pos.IsValid() || ps.json == nil {
		return k.Token.Pos
	}
	return ps.json.pos(k)
}

// nodePos returns the position of n, or else the fallback: the JSON
// parser keeps no position for literals.
func nodePos(n ast.Node, fallback token.Pos) token.Pos {
	if n == nil {
		return fallback
	}
	if p := n.Pos(); p.IsValid() {
		return p
	}
	return fallback
}

// jsonKeyIndex finds the positions of the keys of a JSON policy, which the
// HCL package's JSON parser drops: it scans the text for keys (strings
// followed by ":") and hands them out in document order, which is the
// order the parser walks them in.
type jsonKeyIndex struct {
	keys []jsontoken.Token
	next int
	seen map[*ast.ObjectKey]token.Pos // flattening shares key nodes
}

func newJSONKeyIndex(src []byte) *jsonKeyIndex {
	ix := &jsonKeyIndex{seen: make(map[*ast.ObjectKey]token.Pos)}
	sc := jsonscanner.New(src)
	var prev jsontoken.Token
	for {
		tok := sc.Scan()
		if tok.Type == jsontoken.EOF || tok.Type == jsontoken.ILLEGAL {
			return ix
		}
		if tok.Type == jsontoken.COLON && prev.Type == jsontoken.STRING {
			ix.keys = append(ix.keys, prev)
		}
		prev = tok
	}
}

// pos returns the position of the next key with k's text.
func (ix *jsonKeyIndex) pos(k *ast.ObjectKey) token.Pos {
	if p, ok := ix.seen[k]; ok {
		return p
	}
	for i := ix.next; i < len(ix.keys); i++ {
		if ix.keys[i].Text == k.Token.Text {
			ix.next = i + 1
			p := ix.keys[i].Pos
			ix.seen[k] = token.Pos{Line: p.Line, Column: p.Column, Offset: p.Offset}
			return ix.seen[k]
		}
	}
	return token.Pos{}
}

func (ps *parser) errAt(pos token.Pos, kind error, format string, args ...any) *ParseError {
	return &ParseError{Policy: ps.name, Line: pos.Line, Column: pos.Column, Msg: fmt.Sprintf(format, args...), kind: kind}
}

const blockExample = `path "secret/data/app/*" { capabilities = ["read"] }`

func (ps *parser) file(f *ast.File) error {
	list, ok := f.Node.(*ast.ObjectList)
	if !ok {
		return ps.errAt(token.Pos{}, ErrInvalidPolicy, "a policy is a list of path blocks: write %s", blockExample)
	}
	for _, item := range list.Items {
		if len(item.Keys) == 0 {
			return ps.errAt(nodePos(item.Val, token.Pos{}), ErrInvalidPolicy, "expected a path block: write %s", blockExample)
		}
		kpos := ps.keyPos(item.Keys[0])
		key, ok := keyString(item.Keys[0])
		switch lower := strings.ToLower(key); {
		case !ok:
			return ps.errAt(kpos, ErrInvalidPolicy, "expected a path block: write %s", blockExample)
		case lower == "path":
			if err := ps.path(kpos, item.Keys[1:], item.Val); err != nil {
				return err
			}
		case lower == "name" && len(item.Keys) == 1 && isString(item.Val):
			// Vault's parser accepts a top-level name and ignores it; the
			// policy's name is the one it is written under.
		default:
			return ps.errAt(kpos, ErrInvalidPolicy, "unknown key %q: a policy holds only path blocks, such as %s", clip(key), blockExample)
		}
	}
	return nil
}

// path handles `path ...` with the keys that follow "path" and its value.
func (ps *parser) path(pos token.Pos, keys []*ast.ObjectKey, val ast.Node) error {
	if len(keys) > 0 {
		return ps.block(keys, val)
	}
	// `path { "PATTERN" { ... } }`, or JSON's {"path": {...}} when the
	// parser did not flatten it.
	obj, ok := val.(*ast.ObjectType)
	if !ok || len(obj.List.Items) == 0 {
		return ps.errAt(pos, ErrInvalidPolicy, "path needs a pattern: write %s", blockExample)
	}
	for _, item := range obj.List.Items {
		if len(item.Keys) == 0 {
			return ps.errAt(nodePos(item.Val, pos), ErrInvalidPolicy, "path needs a pattern: write %s", blockExample)
		}
		if err := ps.block(item.Keys, item.Val); err != nil {
			return err
		}
	}
	return nil
}

// block handles one path block: keys[0] is its pattern.
func (ps *parser) block(keys []*ast.ObjectKey, val ast.Node) error {
	pos := ps.keyPos(keys[0])
	raw, ok := keyString(keys[0])
	if !ok {
		return ps.errAt(pos, ErrInvalidPolicy, "the path pattern must be a quoted string: write %s", blockExample)
	}
	if len(ps.blocks) == MaxRules {
		return ps.errAt(pos, ErrPolicyTooLarge, "more than %d path blocks: split the policy into several policies", MaxRules)
	}
	raw = strings.TrimPrefix(raw, "/")
	if msg, kind := checkPattern(raw); msg != "" {
		return ps.errAt(pos, kind, "%s", msg)
	}
	var items []*ast.ObjectItem
	if len(keys) > 1 && !keys[1].Token.JSON {
		return ps.errAt(ps.keyPos(keys[1]), ErrInvalidPolicy, "path takes one pattern: write one block per pattern, such as %s", blockExample)
	}
	if len(keys) > 1 { // a flattened JSON object: {"PATTERN": {"key": {...}}}
		items = []*ast.ObjectItem{{Keys: keys[1:], Val: val}}
	} else if obj, ok := val.(*ast.ObjectType); ok {
		items = obj.List.Items
	} else {
		return ps.errAt(pos, ErrInvalidPolicy, "path %q must be followed by a block: write path %q { capabilities = [\"read\"] }", clip(raw), clip(raw))
	}
	var caps Capability
	var sawCaps, sawPolicy bool
	for _, item := range items {
		if len(item.Keys) == 0 {
			return ps.errAt(nodePos(item.Val, pos), ErrInvalidPolicy, "expected capabilities = [...] in the block of path %q", clip(raw))
		}
		kpos := ps.keyPos(item.Keys[0])
		key, _ := keyString(item.Keys[0])
		lower := strings.ToLower(key)
		switch {
		case restrictingKeys[lower]:
			return ps.errAt(kpos, ErrInvalidPolicy, "%s is not supported by coffer: remove it or grant the capability without it", lower)
		case len(item.Keys) > 1 && (lower == "capabilities" || lower == "policy"):
			return ps.errAt(kpos, ErrInvalidPolicy, "%s takes a value, not a block: write %s = [...]", lower, lower)
		case lower == "capabilities":
			if sawCaps {
				return ps.errAt(kpos, ErrInvalidPolicy, "capabilities is given twice for path %q: give one list", clip(raw))
			}
			sawCaps = true
			c, err := ps.capabilities(kpos, item.Val)
			if err != nil {
				return err
			}
			caps |= c
		case lower == "policy":
			if sawPolicy {
				return ps.errAt(kpos, ErrInvalidPolicy, "policy is given twice for path %q: give it once", clip(raw))
			}
			sawPolicy = true
			s, ok := literalString(item.Val)
			if !ok {
				return ps.errAt(kpos, ErrInvalidPolicy, `policy must be a string: write policy = "read" (deny, read, write or sudo), or use capabilities = [...]`)
			}
			c, ok := legacyPolicies[s]
			if !ok {
				return ps.errAt(nodePos(item.Val, kpos), ErrInvalidPolicy, `unknown policy %q: use "deny", "read", "write" or "sudo", or capabilities = [...]`, clip(s))
			}
			caps |= c
		default:
			return ps.errAt(kpos, ErrInvalidPolicy, "unknown key %q in the block of path %q: a path block holds capabilities = [...]", clip(key), clip(raw))
		}
	}
	if !sawCaps && !sawPolicy {
		return ps.errAt(pos, ErrInvalidPolicy, `path %q has no capabilities: add capabilities = ["read"] (or ["deny"])`, clip(raw))
	}
	if caps == 0 {
		return ps.errAt(pos, ErrInvalidPolicy, `path %q grants nothing: list its capabilities, such as ["read"], or ["deny"]`, clip(raw))
	}
	b := block{pat: compilePattern(raw), caps: caps, listed: caps, line: pos.Line, column: pos.Column}
	if caps&Deny != 0 {
		b.caps = Deny
	}
	ps.blocks = append(ps.blocks, b)
	return nil
}

// capabilities parses a capabilities list.
func (ps *parser) capabilities(kpos token.Pos, val ast.Node) (Capability, error) {
	list, ok := val.(*ast.ListType)
	if !ok {
		return 0, ps.errAt(kpos, ErrInvalidPolicy, `capabilities must be a list of strings: write capabilities = ["read", "list"]`)
	}
	var caps Capability
	for _, elem := range list.List {
		s, ok := literalString(elem)
		if !ok {
			return 0, ps.errAt(nodePos(elem, kpos), ErrInvalidPolicy, `capabilities must be a list of strings: write capabilities = ["read", "list"]`)
		}
		c, err := ParseCapability(s)
		if err != nil {
			return 0, ps.errAt(nodePos(elem, kpos), ErrInvalidPolicy, "%s", err.Error())
		}
		caps |= c
	}
	return caps, nil
}

// checkPattern returns why a pattern (without its leading "/") is refused,
// and the kind of error, or "".
func checkPattern(raw string) (string, error) {
	switch {
	case raw == "":
		return `the path pattern is empty: give the paths the rule is for, such as "secret/data/app/*"`, ErrInvalidPolicy
	case len(raw) > MaxPatternBytes:
		return fmt.Sprintf("the path pattern is %d bytes long, more than the limit of %d: shorten it", len(raw), MaxPatternBytes), ErrPolicyTooLarge
	case strings.Contains(raw, "{{"):
		// Vault fills templates from the token's identity; matched as
		// literal text, the rule would grant one path to every token.
		return fmt.Sprintf("path %q is templated ({{...}}), which coffer does not support: write the paths out", clip(raw)), ErrInvalidPolicy
	}
	for _, r := range raw {
		if r < 0x20 || r == 0x7f {
			return fmt.Sprintf("path %q holds a control character: remove it", clip(raw)), ErrInvalidPolicy
		}
	}
	return "", nil
}

// keyString returns the text of an object key.
func keyString(k *ast.ObjectKey) (string, bool) {
	switch k.Token.Type {
	case token.IDENT:
		return k.Token.Text, true
	case token.STRING:
		return tokenString(k.Token)
	}
	return "", false
}

// literalString returns the value of a string literal.
func literalString(n ast.Node) (string, bool) {
	lit, ok := n.(*ast.LiteralType)
	if !ok || lit.Token.Type != token.STRING {
		return "", false
	}
	return tokenString(lit.Token)
}

func isString(n ast.Node) bool {
	_, ok := literalString(n)
	return ok
}

// tokenString unquotes a string token; the HCL package panics on a string
// it cannot unquote, which is turned into a refusal here.
func tokenString(t token.Token) (s string, ok bool) {
	defer func() {
		if recover() != nil {
			s, ok = "", false
		}
	}()
	s, ok = t.Value().(string)
	return s, ok
}
