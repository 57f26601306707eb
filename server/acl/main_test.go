package acl

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// mustParse parses src as policy name or fails the test.
func mustParse(t testing.TB, name, src string) *Policy {
	t.Helper()
	p, err := Parse(name, []byte(src))
	if err != nil {
		t.Fatalf("Parse(%q): %v", name, err)
	}
	return p
}

// mustACL merges policies or fails the test.
func mustACL(t testing.TB, policies ...*Policy) *ACL {
	t.Helper()
	a, err := NewACL(policies...)
	if err != nil {
		t.Fatalf("NewACL: %v", err)
	}
	return a
}
