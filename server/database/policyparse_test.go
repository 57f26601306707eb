package database

import (
	"errors"
	"strings"
	"testing"
	"unicode"
)

// TestParsePasswordPolicy: the setting's pairs become a policy whose
// passwords have the length and classes it asks for; bad settings are
// refused with ErrInvalidPolicy.
func TestParsePasswordPolicy(t *testing.T) {
	p, err := ParsePasswordPolicy("length=32, upper=3, digits=4, symbols=2, symbol_chars=-_")
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		pw, err := p.Generate()
		if err != nil {
			t.Fatal(err)
		}
		var upper, digits, symbols int
		for _, r := range pw {
			switch {
			case unicode.IsUpper(r):
				upper++
			case unicode.IsDigit(r):
				digits++
			case strings.ContainsRune("-_", r):
				symbols++
			}
		}
		if len(pw) != 32 || upper < 3 || digits < 4 || symbols < 2 {
			t.Fatalf("password of %d chars with %d upper, %d digits, %d symbols", len(pw), upper, digits, symbols)
		}
	}
	if d, err := ParsePasswordPolicy(""); err != nil || d != DefaultPasswordPolicy() {
		t.Fatalf("empty setting: %+v, %v", d, err)
	}
	for _, bad := range []string{"length", "length=x", "length=4", "colour=3", "length=20,length=21", "symbol_chars='", "lower=30,length=20"} {
		if _, err := ParsePasswordPolicy(bad); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%q: err = %v, want ErrInvalidPolicy", bad, err)
		}
	}
}
