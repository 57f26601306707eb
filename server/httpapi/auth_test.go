package httpapi

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestParseTTL(t *testing.T) {
	good := []struct {
		in   any
		want int64
	}{
		{nil, 0}, {"", 0}, {json.Number("3600"), 3600}, {"3600", 3600}, {"1h", 3600}, {"30m", 1800},
		{"1h30m", 5400}, {"90s", 90}, {"2d", 172800}, {json.Number("60.0"), 60}, {" 5m ", 300},
	}
	for _, c := range good {
		got, err := parseTTL("ttl", c.in)
		if err != nil || got != c.want {
			t.Errorf("parseTTL(%#v) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []any{"soon", "-1", "-5m", json.Number("-3"), json.Number("1.5"), true, []any{"1h"}, "1x", "d"} {
		if got, err := parseTTL("ttl", in); err == nil {
			t.Errorf("parseTTL(%#v) = %d, want an error", in, got)
		}
	}
}

func TestStrList(t *testing.T) {
	for _, c := range []struct {
		in   any
		want []string
	}{
		{nil, nil}, {"a", []string{"a"}}, {"a, b,,c ", []string{"a", "b", "c"}}, {[]any{"a", " b "}, []string{"a", "b"}}, {[]any{}, nil},
	} {
		got, err := strList("policies", c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("strList(%#v) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []any{json.Number("1"), []any{"a", json.Number("2")}, map[string]any{}} {
		if _, err := strList("policies", in); err == nil {
			t.Errorf("strList(%#v): want an error", in)
		}
	}
}

// FuzzParseTTL: no input panics, and an accepted one is not negative.
func FuzzParseTTL(f *testing.F) {
	for _, s := range []string{"1h", "3600", "2d", "1.5", "-1", "9999999999999999999d", "1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, in := range []any{s, json.Number(s)} {
			if n, err := parseTTL("ttl", in); err == nil && n < 0 {
				t.Fatalf("parseTTL(%q) = %d", s, n)
			}
		}
	})
}
