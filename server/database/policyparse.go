package database

import (
	"fmt"
	"strconv"
	"strings"
)

// ParsePasswordPolicy reads a connection's password_policy setting:
// comma-separated KEY=VALUE pairs among length, lower, upper, digits and
// symbols (the least number of characters of each class) and
// symbol_chars (the symbols to draw from). "" is DefaultPasswordPolicy.
// The policy is validated.
func ParsePasswordPolicy(s string) (PasswordPolicy, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return DefaultPasswordPolicy(), nil
	}
	var p PasswordPolicy
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return PasswordPolicy{}, fmt.Errorf("%w: %q is not KEY=VALUE: write length=N,lower=N,upper=N,digits=N,symbols=N,symbol_chars=…", ErrInvalidPolicy, part)
		}
		if seen[k] {
			return PasswordPolicy{}, fmt.Errorf("%w: %s is given twice", ErrInvalidPolicy, k)
		}
		seen[k] = true
		if k == "symbol_chars" {
			p.Symbols = v
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxPasswordLen {
			return PasswordPolicy{}, fmt.Errorf("%w: %s=%q is not a number from 0 to %d", ErrInvalidPolicy, k, v, maxPasswordLen)
		}
		switch k {
		case "length":
			p.Length = n
		case "lower":
			p.MinLower = n
		case "upper":
			p.MinUpper = n
		case "digits":
			p.MinDigits = n
		case "symbols":
			p.MinSymbols = n
		default:
			return PasswordPolicy{}, fmt.Errorf("%w: unknown key %q: use length, lower, upper, digits, symbols or symbol_chars", ErrInvalidPolicy, k)
		}
	}
	if err := p.Validate(); err != nil {
		return PasswordPolicy{}, err
	}
	return p, nil
}
