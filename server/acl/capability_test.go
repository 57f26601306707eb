package acl

import (
	"slices"
	"strings"
	"testing"
)

func TestCapabilityNamesInVaultOrder(t *testing.T) {
	all := Deny | Sudo | List | Delete | Patch | Update | Read | Create
	want := []string{"create", "read", "update", "patch", "delete", "list", "sudo", "deny"}
	if got := all.Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	if got := (List | Read).String(); got != "read, list" {
		t.Fatalf("String() = %q, want %q", got, "read, list")
	}
	if got := Capability(0).String(); got != "none" {
		t.Fatalf("String() of 0 = %q", got)
	}
	if got := Capability(0).Names(); len(got) != 0 {
		t.Fatalf("Names() of 0 = %v", got)
	}
	if AllGranting&Deny != 0 || AllGranting.String() != "create, read, update, patch, delete, list, sudo" {
		t.Fatalf("AllGranting = %v", AllGranting)
	}
}

func TestParseCapabilityRoundTrip(t *testing.T) {
	for _, name := range (AllGranting | Deny).Names() {
		c, err := ParseCapability(name)
		if err != nil {
			t.Fatalf("ParseCapability(%q): %v", name, err)
		}
		if got := c.Names(); len(got) != 1 || got[0] != name {
			t.Fatalf("ParseCapability(%q) = %v", name, got)
		}
	}
}

func TestParseCapabilityRefusals(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"reed", `unknown capability "reed": use create, read, update, patch, delete, list, sudo or deny`},
		{"Read", `unknown capability "Read": capabilities are lower case: use "read"`},
		{"subscribe", `capability "subscribe" is not supported by coffer: remove it`},
		{"", `unknown capability "": use create`},
		{strings.Repeat("x", 500), `unknown capability "` + strings.Repeat("x", 80) + `…"`},
	} {
		_, err := ParseCapability(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCapability(%.20q) = %v, want it to contain %q", tc.in, err, tc.want)
		}
	}
}
