package database

import (
	"fmt"
	"strings"
)

// Statements are the SQL an operation runs, in Vault's form: a list whose
// entries are templates, each holding one or more SQL statements separated
// by ';'. The entries run in order in one transaction.
//
// An entry is not split at its semicolons: it is sent whole as one simple
// query, which PostgreSQL runs statement by statement inside the
// surrounding transaction. So a ';' inside a string, a quoted name or a
// dollar-quoted function body needs no care (Vault splits at every ';'
// and breaks such bodies), and the error of a failing statement is
// PostgreSQL's own.
type Statements []string

// The placeholders a statement may hold. {{name}} and {{username}} are the
// same value (Vault accepts both); the rendered values are checked before
// they are put in (see Render).
const (
	phName       = "{{name}}"
	phUsername   = "{{username}}"
	phPassword   = "{{password}}"
	phExpiration = "{{expiration}}"
)

// ExpirationFormat is how {{expiration}} is written, as Vault's PostgreSQL
// plugin writes it: a timestamp with zone PostgreSQL's VALID UNTIL reads.
const ExpirationFormat = "2006-01-02 15:04:05-0700"

// Values are what a statement's placeholders are replaced with. An empty
// field is refused when the statement names its placeholder.
type Values struct {
	Name       string // {{name}} and {{username}}
	Password   string // {{password}}
	Expiration string // {{expiration}}, in ExpirationFormat
}

// sqlContext is where a byte of SQL text lies, as PostgreSQL's lexer sees
// it: what would end the construct it is in.
type sqlContext struct {
	kind  ctxKind
	tag   string // the dollar-quote tag, with its $ signs
	depth int    // nesting of block comments
}

type ctxKind uint8

const (
	ctxCode         ctxKind = iota // plain SQL
	ctxString                      // '…' (standard_conforming_strings on)
	ctxEscapeString                // E'…': a backslash escapes
	ctxIdent                       // "…"
	ctxDollar                      // $tag$…$tag$
	ctxLineComment                 // -- … to the end of the line
	ctxBlockComment                // /* … */, nested
)

func (k ctxKind) String() string {
	switch k {
	case ctxCode:
		return "plain SQL"
	case ctxString, ctxEscapeString:
		return "a string literal"
	case ctxIdent:
		return "a quoted name"
	case ctxDollar:
		return "a dollar-quoted string"
	case ctxLineComment, ctxBlockComment:
		return "a comment"
	}
	return "unknown"
}

// lexContexts returns the context of every byte of sql (the context the
// byte is read in: an opening quote is read in plain SQL, its closing quote
// inside the string) and the context at the end. It follows PostgreSQL's
// scanner for what ends each construct; it does not need to know more.
func lexContexts(sql string) ([]sqlContext, sqlContext) {
	out := make([]sqlContext, len(sql))
	cur := sqlContext{}
	for i := 0; i < len(sql); {
		c := sql[i]
		switch cur.kind {
		case ctxCode:
			out[i] = cur
			switch {
			case c == '\'':
				if isEscapePrefix(sql, i) {
					cur = sqlContext{kind: ctxEscapeString}
				} else {
					cur = sqlContext{kind: ctxString}
				}
			case c == '"':
				cur = sqlContext{kind: ctxIdent}
			case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
				cur = sqlContext{kind: ctxLineComment}
				out[i+1] = cur
				i += 2
				continue
			case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
				cur = sqlContext{kind: ctxBlockComment, depth: 1}
				out[i+1] = cur
				i += 2
				continue
			case c == '$' && (i == 0 || !isIdentCont(sql[i-1])):
				if tag, ok := dollarTag(sql[i:]); ok {
					for j := i + 1; j < i+len(tag); j++ {
						out[j] = sqlContext{kind: ctxDollar, tag: tag}
					}
					cur = sqlContext{kind: ctxDollar, tag: tag}
					i += len(tag)
					continue
				}
			}
			i++
		case ctxString, ctxIdent:
			out[i] = cur
			q := byte('\'')
			if cur.kind == ctxIdent {
				q = '"'
			}
			if c == q {
				if i+1 < len(sql) && sql[i+1] == q { // a doubled quote stands for one
					out[i+1] = cur
					i += 2
					continue
				}
				cur = sqlContext{}
			}
			i++
		case ctxEscapeString:
			out[i] = cur
			switch {
			case c == '\\' && i+1 < len(sql):
				out[i+1] = cur
				i += 2
				continue
			case c == '\'' && i+1 < len(sql) && sql[i+1] == '\'':
				out[i+1] = cur
				i += 2
				continue
			case c == '\'':
				cur = sqlContext{}
			}
			i++
		case ctxDollar:
			out[i] = cur
			if c == '$' && strings.HasPrefix(sql[i:], cur.tag) {
				for j := i + 1; j < i+len(cur.tag); j++ {
					out[j] = cur
				}
				i += len(cur.tag)
				cur = sqlContext{}
				continue
			}
			i++
		case ctxLineComment:
			out[i] = cur
			if c == '\n' || c == '\r' {
				cur = sqlContext{}
			}
			i++
		case ctxBlockComment:
			out[i] = cur
			switch {
			case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
				out[i+1] = cur
				cur.depth++
				i += 2
				continue
			case c == '*' && i+1 < len(sql) && sql[i+1] == '/':
				out[i+1] = cur
				cur.depth--
				if cur.depth == 0 {
					cur = sqlContext{}
				}
				i += 2
				continue
			}
			i++
		}
	}
	return out, cur
}

// isIdentCont reports whether c can continue an identifier (or a
// parameter's or number's digits): a '$' after one is not a dollar quote.
func isIdentCont(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

// isEscapePrefix reports whether the quote at sql[i] opens an E'…' string:
// an E or e right before it that does not end a longer word.
func isEscapePrefix(sql string, i int) bool {
	if i == 0 || (sql[i-1] != 'E' && sql[i-1] != 'e') {
		return false
	}
	return i == 1 || !isIdentCont(sql[i-2])
}

// dollarTag returns the dollar-quote opener at the start of s ($$ or
// $tag$, the tag a letter or '_' then letters, digits or '_').
func dollarTag(s string) (string, bool) {
	for j := 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '$':
			return s[:j+1], true
		case c == '_' || c >= 0x80 || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z'):
		case '0' <= c && c <= '9' && j > 1:
		default:
			return "", false
		}
	}
	return "", false
}

// placeholder is one occurrence of a placeholder in a template.
type placeholder struct {
	at    int    // byte offset in the template
	text  string // the placeholder as written, e.g. "{{name}}"
	value string
	field string // what the value is, for errors: "username", "password", "expiration"
}

// findPlaceholders returns the placeholders of tpl in order.
func findPlaceholders(tpl string, v Values) []placeholder {
	var out []placeholder
	for i := 0; i < len(tpl); {
		j := strings.Index(tpl[i:], "{{")
		if j < 0 {
			break
		}
		at := i + j
		var p placeholder
		switch {
		case strings.HasPrefix(tpl[at:], phName):
			p = placeholder{text: phName, value: v.Name, field: "username"}
		case strings.HasPrefix(tpl[at:], phUsername):
			p = placeholder{text: phUsername, value: v.Name, field: "username"}
		case strings.HasPrefix(tpl[at:], phPassword):
			p = placeholder{text: phPassword, value: v.Password, field: "password"}
		case strings.HasPrefix(tpl[at:], phExpiration):
			p = placeholder{text: phExpiration, value: v.Expiration, field: "expiration"}
		default:
			i = at + 2
			continue
		}
		p.at = at
		out = append(out, p)
		i = at + len(p.text)
	}
	return out
}

// Render replaces the placeholders of one statement template with v's
// values. It refuses, with ErrUnsafeValue, to put in a value that is not
// of its safe character set (see CheckUsername, CheckPassword) or that
// could end the construct it stands in: the characters allowed depend on
// where the placeholder is (inside '…' no quote or backslash, inside "…"
// no double quote, inside $$…$$ no '$', in plain SQL only letters, digits
// and '_'). Then it lexes the result and checks that every byte outside
// the values is read as it was in the template and every value lies
// wholly inside the construct its placeholder was in. A template with an
// unterminated string, quoted name or comment is refused with
// ErrInvalidStatements. Placeholders Render does not know are left as
// they are, as Vault leaves them.
//
// PostgreSQL takes no bind parameters in CREATE ROLE, ALTER ROLE or GRANT,
// so this check, not quoting alone, is what keeps a value from becoming
// SQL.
func Render(tpl string, v Values) (string, error) {
	tctx, tend := lexContexts(tpl)
	if tend.kind != ctxCode && tend.kind != ctxLineComment {
		return "", fmt.Errorf("%w: a statement ends inside %s: close it", ErrInvalidStatements, tend.kind)
	}
	phs := findPlaceholders(tpl, v)
	if len(phs) == 0 {
		return tpl, nil
	}
	var b strings.Builder
	b.Grow(len(tpl) + 64)
	last := 0
	for _, p := range phs {
		if err := checkValue(p, tctx[p.at]); err != nil {
			return "", err
		}
		b.WriteString(tpl[last:p.at])
		b.WriteString(p.value)
		last = p.at + len(p.text)
	}
	b.WriteString(tpl[last:])
	out := b.String()
	if err := sameStructure(tpl, tctx, tend, out, phs); err != nil {
		return "", err
	}
	return out, nil
}

// checkValue checks p's value for its field and for the context its
// placeholder stands in. A password is never quoted in the error.
func checkValue(p placeholder, c sqlContext) error {
	show := func() string {
		if p.field == "password" {
			return "the password"
		}
		return fmt.Sprintf("the %s %q", p.field, p.value)
	}
	if p.value == "" {
		return fmt.Errorf("%w: %s is used in a statement but has no value", ErrUnsafeValue, p.text)
	}
	var err error
	switch p.field {
	case "username":
		err = CheckUsername(p.value)
	case "password":
		err = CheckPassword(p.value)
	case "expiration":
		err = checkExpiration(p.value)
	}
	if err != nil {
		return err
	}
	var bad string
	switch c.kind {
	case ctxCode:
		for i := 0; i < len(p.value); i++ {
			if ch := p.value[i]; !(ch == '_' || ('a' <= ch && ch <= 'z') || ('A' <= ch && ch <= 'Z') || ('0' <= ch && ch <= '9')) {
				return fmt.Errorf("%w: %s stands unquoted in a statement and %s holds %q: quote it (\"%s\" for a name, '%s' for a value)",
					ErrUnsafeValue, p.text, show(), ch, p.text, p.text)
			}
		}
	case ctxString:
		bad = `'\`
	case ctxEscapeString:
		bad = `'\`
	case ctxIdent:
		bad = `"`
	case ctxDollar:
		bad = "$"
	case ctxLineComment:
		bad = "\r\n"
	case ctxBlockComment:
		bad = "*/"
	}
	if i := strings.IndexAny(p.value, bad); i >= 0 {
		return fmt.Errorf("%w: %s holds %q, which would end %s in a statement", ErrUnsafeValue, show(), p.value[i], c.kind)
	}
	return nil
}

// sameStructure checks that out, which is tpl with the placeholders phs
// replaced by their values, is read by the lexer exactly as tpl is outside
// the values, and that each value lies inside the context its placeholder
// was in.
func sameStructure(tpl string, tctx []sqlContext, tend sqlContext, out string, phs []placeholder) error {
	octx, oend := lexContexts(out)
	if oend != tend {
		return fmt.Errorf("%w: a value changes where a statement's strings or names end", ErrUnsafeValue)
	}
	ti, oi := 0, 0
	for _, p := range phs {
		for ; ti < p.at; ti, oi = ti+1, oi+1 {
			if tctx[ti] != octx[oi] {
				return fmt.Errorf("%w: a value changes where a statement's strings or names end", ErrUnsafeValue)
			}
		}
		// The value's bytes are read in its placeholder's context, and so is
		// the byte after it (a value must not extend a $tag or an E prefix).
		want := tctx[p.at]
		for k := 0; k < len(p.value); k, oi = k+1, oi+1 {
			if octx[oi] != want {
				return fmt.Errorf("%w: the value of %s would not stay inside %s", ErrUnsafeValue, p.text, want.kind)
			}
		}
		ti += len(p.text)
	}
	for ; ti < len(tpl); ti, oi = ti+1, oi+1 {
		if tctx[ti] != octx[oi] {
			return fmt.Errorf("%w: a value changes where a statement's strings or names end", ErrUnsafeValue)
		}
	}
	return nil
}

// renderAll renders each entry of stmts.
func renderAll(stmts Statements, v Values) ([]string, error) {
	out := make([]string, 0, len(stmts))
	for _, s := range stmts {
		r, err := Render(s, v)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(r) == "" {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// CheckStatements checks templates when a role or connection is written,
// so that a mistake shows then and not at the first credential: every
// string, quoted name and comment is closed, and every placeholder stands
// inside quotes ("{{name}}", '{{password}}', '{{expiration}}'), since the
// names coffer generates hold '-', which plain SQL would read as a minus.
func CheckStatements(stmts Statements) error {
	for i, s := range stmts {
		ctx, end := lexContexts(s)
		if end.kind != ctxCode && end.kind != ctxLineComment {
			return fmt.Errorf("%w: statement %d ends inside %s: close it", ErrInvalidStatements, i+1, end.kind)
		}
		for _, p := range findPlaceholders(s, Values{}) {
			if ctx[p.at].kind == ctxCode {
				return fmt.Errorf("%w: statement %d has %s unquoted: write \"%s\" for a name or '%s' for a value",
					ErrInvalidStatements, i+1, p.text, p.text, p.text)
			}
		}
	}
	return nil
}
