package server

import (
	"testing"

	"coffer/api/route"
)

// TestEveryRegisteredMethodHasARoute: every method the node's gRPC server
// serves (coffer's services, health, reflection) has a route, so none is
// refused by accident; and every route names a method the node serves.
func TestEveryRegisteredMethodHasARoute(t *testing.T) {
	n := startNode(t, "")
	served := map[string]bool{}
	for svc, info := range n.srv.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			method := "/" + svc + "/" + m.Name
			served[method] = true
			if _, ok := route.Lookup(method); !ok {
				t.Errorf("%s is served but has no route: add it to api/route's table", method)
			}
		}
	}
	if len(served) < 20 {
		t.Fatalf("the node serves only %d methods", len(served))
	}
	for _, r := range route.All() {
		if !served[r.Method] {
			t.Errorf("route %s names a method the node does not serve", r.Method)
		}
	}
}
