package auth

import (
	"net/netip"
	"strings"
	"testing"
)

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"web", "web", true},
		{"web", "web2", false},
		{"web", "", false},
		{"*", "", true},
		{"*", "anything.at.all", true},
		{"*.example.com", "api.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "api.example.com.evil", false},
		{"api-*-prod", "api-eu-prod", true},
		{"api-*-prod", "api--prod", true},
		{"api-*-prod", "api-eu-prod-x", false},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "abc", true},
		{"a*b*c", "acb", false},
		{"**", "x", true},
		{"Web", "web", false},
		{"?", "x", false}, // only * is special
	} {
		if got := Glob(c.pattern, c.name); got != c.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
	// Many stars against a long name that almost matches stay fast.
	long := strings.Repeat("a", 5000)
	if Glob(strings.Repeat("*a", 50)+"b", long) {
		t.Fatal("a pattern ending in b matched a name of a's")
	}
}

func TestCIDRs(t *testing.T) {
	blocks, err := ParseCIDRs([]string{"10.0.0.0/8", " 192.168.1.7 ", "fd00::/8", ""})
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 3 {
		t.Fatalf("blocks %v", blocks)
	}
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "11.0.0.1": false, "192.168.1.7": true, "192.168.1.8": false,
		"::ffff:10.9.9.9": true, "fd12::1": true, "fe80::1": false,
	} {
		if got := AddrAllowed(blocks, netip.MustParseAddr(addr)); got != want {
			t.Errorf("AddrAllowed(%s) = %v, want %v", addr, got, want)
		}
	}
	if AddrAllowed(blocks, netip.Addr{}) {
		t.Error("an unknown address passed a binding")
	}
	if !AddrAllowed(nil, netip.Addr{}) {
		t.Error("no binding refused an unknown address")
	}
	for _, bad := range []string{"10.0.0.0/33", "ten", "10.0.0.0/8/8"} {
		if _, err := ParseCIDRs([]string{bad}); err == nil || !strings.Contains(err.Error(), "CIDR") {
			t.Errorf("ParseCIDRs(%q) = %v", bad, err)
		}
	}
	if _, err := ParseCIDRs(make([]string, MaxCIDRs+1)); err == nil {
		t.Error("too many blocks accepted")
	}
}
