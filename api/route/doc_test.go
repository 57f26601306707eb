package route

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

type protoMessage = proto.Message

func protoName(s string) protoreflect.Name { return protoreflect.Name(s) }

func stringValue(s string) protoreflect.Value { return protoreflect.ValueOfString(s) }

var update = flag.Bool("update", false, "rewrite docs/ROUTES.md from the route table")

const routesDoc = "../../docs/ROUTES.md"

// TestRoutesDoc keeps docs/ROUTES.md equal to the route table: run
// `go test ./api/route -run TestRoutesDoc -update` after changing it.
func TestRoutesDoc(t *testing.T) {
	want := renderRoutes(t)
	if *update {
		if err := os.WriteFile(routesDoc, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(routesDoc)
	if err != nil {
		t.Fatalf("%v: run go test ./api/route -run TestRoutesDoc -update", err)
	}
	if string(got) != want {
		t.Fatalf("docs/ROUTES.md is not the route table: run go test ./api/route -run TestRoutesDoc -update")
	}
}

func renderRoutes(t *testing.T) string {
	var b strings.Builder
	b.WriteString(`# Routes

Every gRPC method a coffer node serves, from the one route table
(` + "`api/route/table.go`" + `; this page is generated from it by
` + "`go test ./api/route -run TestRoutesDoc -update`" + ` and a test fails when
they differ). A method that is not here is refused with NO_ROUTE.

- **access**: ` + "`public`" + ` needs no token and is answered while sealed;
  ` + "`token`" + ` needs a valid token; ` + "`peer`" + ` is node to node; ` + "`login`" + `
  needs no token but an unsealed node, and is audited with its
  credentials hashed (its policy path names the login and is not checked).
- **leader**: only the leader serves it; a follower forwards it, one hop,
  with the caller's token.
- **idempotent**: the request carries a request_id, so a forwarded call
  whose answer was lost is sent again (to the next leader) without a
  second effect; other forwarded calls are sent again only when the answer
  proves they were not acted on.
- **client cert**: on a node with TLS, the caller must present a
  certificate of the cluster's CA (init: whoever reaches a fresh node first
  must not initialize it).
- **policy path** and **capabilities**: what the call touches in Vault's
  HTTP terms, so that Vault policies apply unchanged. ` + "`<mount>/data/<path>`" + `
  is the secret ` + "`<mount>/<path>`" + `; ` + "`create|update`" + ` means create for a
  new secret and update for an existing one; sudo is needed on top of the
  other capability. Every node checks them from its own replicated
  policies (docs/POLICIES.md); a follower checks before it forwards and the
  leader checks again.

| method | access | leader | idempotent | client cert | policy path | capabilities |
|---|---|---|---|---|---|---|
`)
	for _, r := range All() {
		path, need := "", ""
		if r.Policy != nil {
			md, err := methodDescriptor(r.Method)
			if err != nil {
				t.Fatal(err)
			}
			mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			if err != nil {
				t.Fatal(err)
			}
			p, c := r.Policy(examplePath(mt.New().Interface()))
			path, need = "`"+p+"`", strings.ReplaceAll(c.String(), "|", ", ")
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s |\n", r.Method, r.Access, yes(r.Leader), yes(r.Idempotent), yes(r.ClientCert), path, need)
	}
	b.WriteString("\nKV.Delete without versions is a delete of `<mount>/data/<path>`; with\nversions it is an update of `<mount>/delete/<path>`, as in Vault's KV\nversion 2.\n")
	b.WriteString("\nToken calls about the caller's own token use the `-self` paths above\n(the default policy grants them); about another token, `auth/token/lookup`,\n`renew` or `revoke` (update), or with an accessor `auth/token/lookup-accessor`,\n`renew-accessor` or `revoke-accessor` (update). Token.Capabilities of\nanother token needs update on `sys/capabilities`. Token.Create of an orphan\nneeds update on `auth/token/create-orphan`; of a batch token, any node\nserves it (nothing is written).\n")
	b.WriteString("\nLogin.Login is served by any node when it writes nothing (a batch token,\na secret_id without a use limit), also while there is no leader; when it\nwrites (a service token, a use of a secret_id) its handler forwards it to\nthe leader. The AppRole secret_id accessor is destroyed at\n`auth/approle/role/<name>/secret-id-accessor/destroy`, as in Vault.\n")
	return b.String()
}

func yes(v bool) string {
	if v {
		return "yes"
	}
	return ""
}

// examplePath gives a request the example secret path <mount>/<path>.
func examplePath(m protoMessage) protoMessage {
	msg := m.ProtoReflect()
	for _, name := range []string{"path", "prefix"} {
		if fd := msg.Descriptor().Fields().ByName(protoName(name)); fd != nil {
			msg.Set(fd, stringValue("<mount>/<path>"))
		}
	}
	if fd := msg.Descriptor().Fields().ByName(protoName("name")); fd != nil {
		msg.Set(fd, stringValue("<name>"))
	}
	return m
}
