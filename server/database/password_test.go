package database

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestGenerateUsername(t *testing.T) {
	now := time.Unix(1700000000, 0)
	seen := map[string]bool{}
	for range 1000 {
		name := GenerateUsername("token", "readonly", now)
		if !strings.HasPrefix(name, "v-token-readonly-") || !strings.HasSuffix(name, "-1700000000") {
			t.Fatalf("GenerateUsername = %q, want v-token-readonly-<random>-1700000000", name)
		}
		if err := CheckUsername(name); err != nil {
			t.Fatal(err)
		}
		if strings.ToLower(name) != name {
			t.Fatalf("%q has uppercase", name)
		}
		if seen[name] {
			t.Fatalf("%q generated twice", name)
		}
		seen[name] = true
	}
	for _, c := range []struct{ display, role, prefix string }{
		{"approle-My App!", "Role.With\"Quote", "v-approle_-role_wit-"},
		{"", "app", "v-app-"},
		{"", "", "v-"},
		{"ünïcode", strings.Repeat("x", 200), "v-_n_code-xxxxxxxx-"},
	} {
		name := GenerateUsername(c.display, c.role, now)
		if !strings.HasPrefix(name, c.prefix) || len(name) > MaxUsernameLen || CheckUsername(name) != nil || strings.Contains(name, "--") {
			t.Errorf("GenerateUsername(%q, %q) = %q, want prefix %q, ≤ 63 bytes, safe", c.display, c.role, name, c.prefix)
		}
	}
}

func TestCheckUsername(t *testing.T) {
	for _, ok := range []string{"app_user", "v-token-app-abc-1700000000", "svc.reader@corp", strings.Repeat("a", 63)} {
		if err := CheckUsername(ok); err != nil {
			t.Errorf("CheckUsername(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", `x"; DROP ROLE admin; --`, "a'b", "a b", "-x", ".x", strings.Repeat("a", 64), "a\nb", "ä", "a$b", `a\b`} {
		if err := CheckUsername(bad); !errors.Is(err, ErrUnsafeValue) {
			t.Errorf("CheckUsername(%q) = %v, want ErrUnsafeValue", bad, err)
		}
	}
}

func TestCheckPasswordNeverQuotesIt(t *testing.T) {
	for _, bad := range []string{"", "with space", "quote'd", `dq"`, `back\slash`, "dol$lar", "{{brace}}", strings.Repeat("a", 129)} {
		err := CheckPassword(bad)
		if !errors.Is(err, ErrUnsafeValue) {
			t.Errorf("CheckPassword(%q) = %v", bad, err)
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("the error quotes the password: %v", err)
		}
	}
	if err := CheckPassword("Aa1" + SafeSymbols); err != nil {
		t.Fatal(err)
	}
}

func TestPasswordPolicyDefault(t *testing.T) {
	for range 500 {
		pw, err := PasswordPolicy{}.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != 20 {
			t.Fatalf("len %d", len(pw))
		}
		if !strings.ContainsAny(pw, lowerChars) || !strings.ContainsAny(pw, upperChars) || !strings.ContainsAny(pw, digitChars) {
			t.Fatalf("%q lacks a class", pw)
		}
		if err := CheckPassword(pw); err != nil {
			t.Fatal(err)
		}
		if strings.Trim(pw, lowerChars+upperChars+digitChars+"-") != "" {
			t.Fatalf("%q holds a character outside letters, digits and '-'", pw)
		}
	}
}

func TestPasswordPolicyMinimums(t *testing.T) {
	p := PasswordPolicy{Length: 12, MinLower: 2, MinUpper: 3, MinDigits: 4, MinSymbols: 3, Symbols: "!#%"}
	for range 300 {
		pw, err := p.Generate()
		if err != nil {
			t.Fatal(err)
		}
		count := func(set string) int {
			n := 0
			for _, r := range pw {
				if strings.ContainsRune(set, r) {
					n++
				}
			}
			return n
		}
		if len(pw) != 12 || count(lowerChars) < 2 || count(upperChars) < 3 || count(digitChars) < 4 || count("!#%") < 3 {
			t.Fatalf("%q does not meet the policy", pw)
		}
	}
}

func TestPasswordPolicyValidate(t *testing.T) {
	for _, bad := range []PasswordPolicy{
		{Length: 4},
		{Length: 500},
		{Length: 10, MinLower: 5, MinUpper: 6},
		{MinDigits: -1},
		{Symbols: "'"},
		{Symbols: "$"},
		{Symbols: `\`},
		{Symbols: "--"},
		{Symbols: " "},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%+v.Validate() = %v, want ErrInvalidPolicy", bad, err)
		}
		if _, err := bad.Generate(); err == nil {
			t.Errorf("%+v.Generate() made a password", bad)
		}
	}
	if err := DefaultPasswordPolicy().Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestPasswordUniform checks that every character of the pool is drawn
// about as often: a modulo bias or a fixed position would show.
func TestPasswordUniform(t *testing.T) {
	p := PasswordPolicy{Length: 64, MinLower: 0, MinUpper: 0, MinDigits: 0, MinSymbols: 1, Symbols: "-"}
	counts := map[byte]int{}
	const n = 4000
	for range n {
		pw, err := p.Generate()
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(pw); i++ {
			counts[pw[i]]++
		}
	}
	pool := lowerChars + upperChars + digitChars
	total := 0
	for i := 0; i < len(pool); i++ {
		total += counts[pool[i]]
	}
	want := float64(total) / float64(len(pool))
	// χ² over the 62 letters and digits (61 degrees of freedom): a fair
	// sample exceeds 140 about 4 times in 100 million; a modulo bias (256 %
	// 62 = 8 characters drawn 25 % more often) gives about 2000.
	chi := 0.0
	for i := 0; i < len(pool); i++ {
		d := float64(counts[pool[i]]) - want
		chi += d * d / want
	}
	if chi > 140 || math.IsNaN(chi) {
		t.Fatalf("χ² = %.1f over %d draws: the characters are not drawn uniformly", chi, total)
	}
}

func TestRandIndex(t *testing.T) {
	for _, n := range []int{1, 2, 3, 61, 62, 63, 1000} {
		for range 200 {
			if v := randIndex(n); v < 0 || v >= n {
				t.Fatalf("randIndex(%d) = %d", n, v)
			}
		}
	}
}
