package httpapi

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestDocListsEveryEndpoint keeps docs/HTTP-API.md true: every operation
// of every endpoint the handler serves is named there as "`OP path`"
// (a prefix endpoint's path ends in ":path").
func TestDocListsEveryEndpoint(t *testing.T) {
	doc, err := os.ReadFile("../../docs/HTTP-API.md")
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{})
	var missing []string
	for _, e := range h.endpoints {
		path := e.path
		if e.prefix {
			path += ":path"
		}
		for o := range e.ops {
			name := "`" + string(o) + " " + path + "`"
			if !strings.Contains(string(doc), name) {
				missing = append(missing, name)
			}
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Fatalf("docs/HTTP-API.md does not list %d operations the handler serves:\n%s", len(missing), strings.Join(missing, "\n"))
	}
}
