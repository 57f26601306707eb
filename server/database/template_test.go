package database

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var sample = Values{
	Name:       "v-token-app-abc123-1700000000",
	Password:   "Aa1-Bb2-Cc3-Dd4-Ee5x",
	Expiration: "2030-01-02 03:04:05+0000",
}

func TestRenderVaultTemplates(t *testing.T) {
	for _, c := range []struct {
		tpl, want string
	}{
		{
			`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
			`CREATE ROLE "v-token-app-abc123-1700000000" WITH LOGIN PASSWORD 'Aa1-Bb2-Cc3-Dd4-Ee5x' VALID UNTIL '2030-01-02 03:04:05+0000';`,
		},
		{
			`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{username}}";`,
			`GRANT SELECT ON ALL TABLES IN SCHEMA public TO "v-token-app-abc123-1700000000";`,
		},
		{ // a dollar-quoted body with ';' and a value inside
			"DO $$BEGIN EXECUTE 'GRANT x TO ' || quote_ident('{{name}}'); END$$;",
			"DO $$BEGIN EXECUTE 'GRANT x TO ' || quote_ident('v-token-app-abc123-1700000000'); END$$;",
		},
		{ // an E'' string: the value has no backslash
			`COMMENT ON ROLE "{{name}}" IS E'made by coffer\n{{expiration}}';`,
			`COMMENT ON ROLE "v-token-app-abc123-1700000000" IS E'made by coffer\n2030-01-02 03:04:05+0000';`,
		},
		{ // placeholders it does not know stay
			`SELECT '{{other}}', '{{ name }}'`,
			`SELECT '{{other}}', '{{ name }}'`,
		},
		{ // a doubled quote does not end the string
			`SELECT 'it''s {{name}}'`,
			`SELECT 'it''s v-token-app-abc123-1700000000'`,
		},
		{"-- for {{name}}\nSELECT 1", "-- for v-token-app-abc123-1700000000\nSELECT 1"},
	} {
		got, err := Render(c.tpl, sample)
		if err != nil {
			t.Errorf("Render(%q): %v", c.tpl, err)
			continue
		}
		if got != c.want {
			t.Errorf("Render(%q)\n got %q\nwant %q", c.tpl, got, c.want)
		}
	}
}

func TestRenderRefusesEscapes(t *testing.T) {
	for _, c := range []struct {
		name string
		tpl  string
		v    Values
		want error
	}{
		{"hostile name", `CREATE ROLE "{{name}}";`, Values{Name: `x"; DROP ROLE admin; --`}, ErrUnsafeValue},
		{"quote in password", `PASSWORD '{{password}}'`, Values{Password: `a'b`}, ErrUnsafeValue},
		{"backslash in password", `PASSWORD E'{{password}}'`, Values{Password: `a\b`}, ErrUnsafeValue},
		{"dollar in password", `PASSWORD '{{password}}'`, Values{Password: `a$b`}, ErrUnsafeValue},
		{"unquoted generated name", `CREATE ROLE {{name}};`, Values{Name: "v-token-a"}, ErrUnsafeValue},
		{"unquoted expiration", `VALID UNTIL {{expiration}}`, Values{Expiration: sample.Expiration}, ErrUnsafeValue},
		{"a name that makes an E string", `SELECT {{name}}'\' || current_user --'`, Values{Name: "E"}, ErrUnsafeValue},
		{"a name that opens a dollar quote", `SELECT $a{{name}}$ ; DROP ROLE admin; $a{{name}}$`, Values{Name: "b"}, ErrUnsafeValue},
		{"an empty value", `CREATE ROLE "{{name}}"`, Values{}, ErrUnsafeValue},
		{"an unterminated string", `CREATE ROLE "{{name}}" PASSWORD '{{password}}`, sample, ErrInvalidStatements},
		{"an unterminated name", `CREATE ROLE "{{name}}`, sample, ErrInvalidStatements},
		{"an unterminated comment", `/* {{name}}`, sample, ErrInvalidStatements},
		{"a comment-closing password", `/* '{{password}}' */ SELECT 1`, Values{Password: "ab*/cd"}, ErrUnsafeValue},
	} {
		_, err := Render(c.tpl, c.v)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Render(%q) = %v, want %v", c.name, c.tpl, err, c.want)
		}
		if err != nil && c.v.Password != "" && len(c.v.Password) >= 3 && strings.Contains(err.Error(), c.v.Password) {
			t.Errorf("%s: the error quotes the password: %v", c.name, err)
		}
	}
}

// TestRenderUnquotedSafeName: a static role's plain name may stand
// unquoted, as plain SQL reads it the same.
func TestRenderUnquotedSafeName(t *testing.T) {
	got, err := Render(`ALTER ROLE {{name}} WITH PASSWORD '{{password}}'`, Values{Name: "app_user", Password: "Secret-123"})
	if err != nil || got != `ALTER ROLE app_user WITH PASSWORD 'Secret-123'` {
		t.Fatalf("Render = %q, %v", got, err)
	}
}

func TestCheckStatements(t *testing.T) {
	good := Statements{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
		"DO $f$ BEGIN PERFORM 1; END $f$;",
	}
	if err := CheckStatements(good); err != nil {
		t.Fatalf("CheckStatements(good): %v", err)
	}
	for _, bad := range []string{
		`CREATE ROLE {{name}};`,
		`CREATE ROLE "{{name}}" PASSWORD {{password}};`,
		`CREATE ROLE "{{name}}" PASSWORD '{{password}};`,
		`CREATE ROLE "x$$`,
	} {
		err := CheckStatements(Statements{bad})
		if !errors.Is(err, ErrInvalidStatements) {
			t.Errorf("CheckStatements(%q) = %v, want ErrInvalidStatements", bad, err)
		}
	}
}

func TestLexContexts(t *testing.T) {
	sql := `a 'b''c' "d""e" $t$ ' " $t$ E'\'' -- x` + "\n" + `/* /* */ ' */ z`
	ctx, end := lexContexts(sql)
	if end.kind != ctxCode {
		t.Fatalf("ends in %v", end.kind)
	}
	kindAt := func(sub string, nth int) ctxKind {
		i := -1
		for range nth + 1 {
			j := strings.Index(sql[i+1:], sub)
			if j < 0 {
				t.Fatalf("%q not in the sample", sub)
			}
			i += 1 + j
		}
		return ctx[i].kind
	}
	for _, c := range []struct {
		sub  string
		nth  int
		want ctxKind
	}{
		{"a", 0, ctxCode},
		{"b", 0, ctxString},
		{"c", 0, ctxString},
		{"d", 0, ctxIdent},
		{"e", 0, ctxIdent},
		{` ' " `, 0, ctxDollar},
		{"x", 0, ctxLineComment},
		{` ' */`, 0, ctxBlockComment}, // still inside the outer comment
		{"z", 0, ctxCode},
	} {
		if got := kindAt(c.sub, c.nth); got != c.want {
			t.Errorf("%q is read in %v, want %v", c.sub, got, c.want)
		}
	}
}

// FuzzRenderStatements renders arbitrary templates with arbitrary values.
// Render must never panic, and whatever it accepts must keep every value
// inside the construct its placeholder stood in: the lexer reads the rest
// of the text as in the template, and a value holds nothing that could
// end that construct.
func FuzzRenderStatements(f *testing.F) {
	seeds := []string{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
		`CREATE ROLE {{name}};`,
		"DO $$BEGIN EXECUTE 'GRANT x TO ' || quote_ident('{{name}}'); END$$;",
		`SELECT E'{{password}}'`,
		`SELECT {{name}}'x'`,
		`SELECT $a{{name}}$ x $a{{name}}$`,
		"-- {{name}}\n'{{password}}'",
		`/* {{password}} */`,
		`"{{name}}""{{name}}"`,
	}
	for _, s := range seeds {
		f.Add(s, sample.Name, sample.Password, sample.Expiration)
		f.Add(s, `x"; DROP ROLE admin; --`, `p'; DROP ROLE admin; --`, `2030' OR '1`)
		f.Add(s, "E", "a*/b", "infinity")
	}
	f.Fuzz(func(t *testing.T, tpl, name, password, expiration string) {
		v := Values{Name: name, Password: password, Expiration: expiration}
		out, err := Render(tpl, v)
		if err != nil {
			if !errors.Is(err, ErrUnsafeValue) && !errors.Is(err, ErrInvalidStatements) {
				t.Fatalf("Render error wraps no sentinel: %v", err)
			}
			if len(password) >= 3 && strings.Contains(err.Error(), password) && !strings.Contains(tpl, password) && !strings.Contains(name, password) {
				t.Fatalf("the error quotes the password: %v", err)
			}
			return
		}
		phs := findPlaceholders(tpl, v)
		if len(phs) == 0 {
			if out != tpl {
				t.Fatalf("a template without placeholders changed: %q → %q", tpl, out)
			}
			return
		}
		tctx, tend := lexContexts(tpl)
		octx, oend := lexContexts(out)
		if tend != oend {
			t.Fatalf("the end context changed: %q → %q", tpl, out)
		}
		ti, oi := 0, 0
		for _, p := range phs {
			for ; ti < p.at; ti, oi = ti+1, oi+1 {
				if tpl[ti] != out[oi] || tctx[ti] != octx[oi] {
					t.Fatalf("byte %d of the template is read differently in the output: %q → %q", ti, tpl, out)
				}
			}
			if out[oi:oi+len(p.value)] != p.value {
				t.Fatalf("the output does not hold %s's value at its place", p.text)
			}
			c := tctx[p.at]
			for k := 0; k < len(p.value); k++ {
				if octx[oi+k] != c {
					t.Fatalf("%s's value leaves %v: %q → %q", p.text, c.kind, tpl, out)
				}
			}
			// Independent of the lexer: nothing that ends the construct.
			var forbidden string
			switch c.kind {
			case ctxString, ctxEscapeString:
				forbidden = `'\`
			case ctxIdent:
				forbidden = `"`
			case ctxDollar:
				forbidden = "$"
			case ctxLineComment:
				forbidden = "\r\n"
			case ctxBlockComment:
				forbidden = "*/"
			case ctxCode:
				for i := 0; i < len(p.value); i++ {
					if ch := p.value[i]; !isAlnum(ch) && ch != '_' {
						t.Fatalf("%s's value %q stands unquoted with %q", p.text, p.value, ch)
					}
				}
			}
			if strings.ContainsAny(p.value, forbidden) {
				t.Fatalf("%s's value %q in %v holds one of %q", p.text, p.value, c.kind, forbidden)
			}
			oi += len(p.value)
			ti += len(p.text)
		}
		if tpl[ti:] != out[oi:] {
			t.Fatalf("the template's tail changed: %q → %q", tpl, out)
		}
		// Every value passed its own check.
		for _, p := range phs {
			switch p.field {
			case "username":
				if CheckUsername(p.value) != nil {
					t.Fatalf("an unsafe username was put in: %q", p.value)
				}
			case "password":
				if CheckPassword(p.value) != nil {
					t.Fatal("an unsafe password was put in")
				}
			case "expiration":
				if checkExpiration(p.value) != nil {
					t.Fatalf("an unsafe expiration was put in: %q", p.value)
				}
			}
		}
	})
}

func TestFormatExpiration(t *testing.T) {
	tm := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 2*3600))
	if got := formatExpiration(tm); got != "2030-01-02 01:04:05+0000" {
		t.Fatalf("formatExpiration = %q", got)
	}
	// A fraction of a second rounds up: VALID UNTIL never ends before the
	// lease.
	if got := formatExpiration(tm.Add(time.Millisecond)); got != "2030-01-02 01:04:06+0000" {
		t.Fatalf("formatExpiration of a time with a fraction = %q, want the next second", got)
	}
	if got := formatExpiration(time.Time{}); got != "infinity" {
		t.Fatalf("formatExpiration(zero) = %q", got)
	}
	if checkExpiration("2030-01-02 01:04:05+0000") != nil || checkExpiration("2030' OR '1") == nil {
		t.Fatal("checkExpiration accepts or refuses the wrong value")
	}
}
