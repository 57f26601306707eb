package database

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Character sets of generated credentials.
const (
	lowerChars = "abcdefghijklmnopqrstuvwxyz"
	upperChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digitChars = "0123456789"

	// SafeSymbols are the symbols a password may hold: none of them can end
	// a quoted name or string in SQL (no quote, backslash or '$'), nor is a
	// space, a brace or a backtick.
	SafeSymbols = "!#%&()*+,-./:;<=>?@[]^_|~"

	// usernameSymbols are the symbols a username may hold besides letters
	// and digits.
	usernameSymbols = "_-.@"
)

// MaxUsernameLen is PostgreSQL's longest name (NAMEDATALEN - 1): a longer
// one would be cut silently, and two users could end up one.
const MaxUsernameLen = 63

// maxPasswordLen bounds passwords, generated or checked.
const maxPasswordLen = 128

// CheckUsername checks that name can be put into a statement: 1 to 63
// bytes of ASCII letters, digits and "_-.@", not beginning with '-' or '.'.
// Generated usernames always pass; a static role's username must.
func CheckUsername(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the username is empty", ErrUnsafeValue)
	}
	if len(name) > MaxUsernameLen {
		return fmt.Errorf("%w: the username %q is longer than PostgreSQL's %d bytes", ErrUnsafeValue, name, MaxUsernameLen)
	}
	if name[0] == '-' || name[0] == '.' {
		return fmt.Errorf("%w: the username %q begins with %q: begin it with a letter, a digit or '_'", ErrUnsafeValue, name, name[0])
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlnum(c) && strings.IndexByte(usernameSymbols, c) < 0 {
			return fmt.Errorf("%w: the username %q holds %q: use only letters, digits and %q", ErrUnsafeValue, name, c, usernameSymbols)
		}
	}
	return nil
}

// CheckPassword checks that a password can be put into a statement: 1 to
// 128 bytes of ASCII letters, digits and SafeSymbols. The error never
// quotes the password.
func CheckPassword(pw string) error {
	if pw == "" {
		return fmt.Errorf("%w: the password is empty", ErrUnsafeValue)
	}
	if len(pw) > maxPasswordLen {
		return fmt.Errorf("%w: the password is longer than %d bytes", ErrUnsafeValue, maxPasswordLen)
	}
	for i := 0; i < len(pw); i++ {
		if c := pw[i]; !isAlnum(c) && strings.IndexByte(SafeSymbols, c) < 0 {
			return fmt.Errorf("%w: the password holds a character outside letters, digits and %q (at byte %d)", ErrUnsafeValue, SafeSymbols, i)
		}
	}
	return nil
}

// checkExpiration checks an {{expiration}} value: a timestamp in
// ExpirationFormat or "infinity".
func checkExpiration(s string) error {
	if s == "infinity" {
		return nil
	}
	if _, err := time.Parse(ExpirationFormat, s); err != nil {
		return fmt.Errorf("%w: the expiration %q is not a time in the form %q", ErrUnsafeValue, s, ExpirationFormat)
	}
	return nil
}

// formatExpiration writes t for {{expiration}}: in UTC, or "infinity" for
// the zero time. The format has whole seconds: t is rounded up, so that
// the user's VALID UNTIL is never before its lease ends (a user that
// stopped logging in while its lease still ran would surprise its
// service; the lease's revocation ends it on time either way).
func formatExpiration(t time.Time) string {
	if t.IsZero() {
		return "infinity"
	}
	if r := t.Truncate(time.Second); r.Before(t) {
		t = r.Add(time.Second)
	}
	return t.UTC().Format(ExpirationFormat)
}

func isAlnum(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

// GenerateUsername returns a new dynamic user's name in Vault's form,
// v-<display>-<role>-<random>-<unix seconds>: display and role cut to 8
// characters, lowercased, with every character but a letter, a digit or
// '_' made '_' (an empty part left out), then 20 random lowercase letters
// and digits from crypto/rand. It is at most 63 bytes and passes
// CheckUsername.
func GenerateUsername(displayName, roleName string, now time.Time) string {
	parts := []string{"v"}
	for _, p := range []string{displayName, roleName} {
		if s := usernamePart(p, 8); s != "" {
			parts = append(parts, s)
		}
	}
	parts = append(parts, randomFrom(lowerChars+digitChars, 20), strconv.FormatInt(now.Unix(), 10))
	name := strings.Join(parts, "-")
	if len(name) > MaxUsernameLen {
		name = name[:MaxUsernameLen]
	}
	return name
}

// usernamePart makes s safe and short for a generated username.
func usernamePart(s string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() == max {
			break
		}
		switch {
		case ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// PasswordPolicy says how passwords are generated: Length characters
// drawn from lowercase and uppercase letters, digits and Symbols, with at
// least the given number of each. The zero value is DefaultPasswordPolicy.
type PasswordPolicy struct {
	// Length is the password's length (8 to 128); 0 means 20.
	Length int
	// MinLower, MinUpper, MinDigits, MinSymbols are the least number of
	// characters of each class. All zero means one of each of lower,
	// upper and digit (and of symbols when Symbols is set).
	MinLower, MinUpper, MinDigits, MinSymbols int
	// Symbols are the symbols to draw from, a subset of SafeSymbols; ""
	// means "-".
	Symbols string
}

// DefaultPasswordPolicy is the policy of the zero PasswordPolicy: 20
// characters of letters, digits and '-', with at least one lowercase, one
// uppercase letter and one digit.
func DefaultPasswordPolicy() PasswordPolicy {
	return PasswordPolicy{Length: 20, MinLower: 1, MinUpper: 1, MinDigits: 1, Symbols: "-"}
}

// withDefaults fills the zero fields.
func (p PasswordPolicy) withDefaults() PasswordPolicy {
	if p == (PasswordPolicy{}) {
		return DefaultPasswordPolicy()
	}
	if p.Length == 0 {
		p.Length = 20
	}
	if p.Symbols == "" {
		p.Symbols = "-"
	}
	if p.MinLower == 0 && p.MinUpper == 0 && p.MinDigits == 0 && p.MinSymbols == 0 {
		p.MinLower, p.MinUpper, p.MinDigits = 1, 1, 1
	}
	return p
}

// Validate checks that the policy can make passwords that CheckPassword
// accepts.
func (p PasswordPolicy) Validate() error {
	p = p.withDefaults()
	if p.Length < 8 || p.Length > maxPasswordLen {
		return fmt.Errorf("%w: length %d is outside 8 to %d", ErrInvalidPolicy, p.Length, maxPasswordLen)
	}
	for _, m := range []struct {
		name string
		n    int
	}{{"lowercase", p.MinLower}, {"uppercase", p.MinUpper}, {"digits", p.MinDigits}, {"symbols", p.MinSymbols}} {
		if m.n < 0 {
			return fmt.Errorf("%w: the least number of %s is negative (%d)", ErrInvalidPolicy, m.name, m.n)
		}
	}
	if sum := p.MinLower + p.MinUpper + p.MinDigits + p.MinSymbols; sum > p.Length {
		return fmt.Errorf("%w: the least numbers of each class add up to %d, more than the length %d", ErrInvalidPolicy, sum, p.Length)
	}
	seen := map[byte]bool{}
	for i := 0; i < len(p.Symbols); i++ {
		c := p.Symbols[i]
		if strings.IndexByte(SafeSymbols, c) < 0 {
			return fmt.Errorf("%w: symbol %q cannot be put safely into SQL: choose symbols from %q", ErrInvalidPolicy, c, SafeSymbols)
		}
		if seen[c] {
			return fmt.Errorf("%w: symbol %q is listed twice", ErrInvalidPolicy, c)
		}
		seen[c] = true
	}
	return nil
}

// Generate returns a new password of the policy, from crypto/rand: first
// the least number of each class, then characters from all classes, then
// shuffled, every draw uniform (no modulo bias).
func (p PasswordPolicy) Generate() (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	p = p.withDefaults()
	all := lowerChars + upperChars + digitChars + p.Symbols
	out := make([]byte, 0, p.Length)
	for _, c := range []struct {
		chars string
		n     int
	}{{lowerChars, p.MinLower}, {upperChars, p.MinUpper}, {digitChars, p.MinDigits}, {p.Symbols, p.MinSymbols}} {
		for range c.n {
			out = append(out, c.chars[randIndex(len(c.chars))])
		}
	}
	for len(out) < p.Length {
		out = append(out, all[randIndex(len(all))])
	}
	// Fisher–Yates, so the required characters are not at the front.
	for i := len(out) - 1; i > 0; i-- {
		j := randIndex(i + 1)
		out[i], out[j] = out[j], out[i]
	}
	return string(out), nil
}

// randomFrom returns n characters drawn uniformly from chars.
func randomFrom(chars string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[randIndex(len(chars))]
	}
	return string(b)
}

// randIndex returns a uniform integer in [0, n) from crypto/rand, drawing
// again whenever the 32-bit draw falls in the incomplete last block.
func randIndex(n int) int {
	if n <= 0 {
		return 0
	}
	limit := uint32((1 << 32) - (1<<32)%uint64(n)) // a multiple of n; 0 stands for 2^32
	var buf [4]byte
	for {
		// crypto/rand.Read does not fail (it crashes the program if the
		// system's generator is broken).
		_, _ = rand.Read(buf[:])
		v := binary.LittleEndian.Uint32(buf[:])
		if limit == 0 || v < limit {
			return int(v % uint32(n))
		}
	}
}
