package acl

import (
	"fmt"
	"testing"
)

// policy20 is a realistic policy of 20 rules: exact paths, globs and "+"
// segments over KV version 2 and sys paths.
const policy20 = `
path "secret/data/payments/*" { capabilities = ["create", "read", "update", "patch", "delete"] }
path "secret/metadata/payments/*" { capabilities = ["list", "read", "delete"] }
path "secret/delete/payments/*" { capabilities = ["update"] }
path "secret/undelete/payments/*" { capabilities = ["update"] }
path "secret/destroy/payments/*" { capabilities = ["update"] }
path "secret/data/payments/root-key" { capabilities = ["deny"] }
path "secret/data/shared/*" { capabilities = ["read"] }
path "secret/metadata/shared/*" { capabilities = ["list"] }
path "secret/data/+/config" { capabilities = ["read"] }
path "secret/metadata/+/config" { capabilities = ["list", "read"] }
path "secret/data/+/+/teamb" { capabilities = ["read"] }
path "secret/data/ci/*" { capabilities = ["read", "list"] }
path "database/creds/payments-ro" { capabilities = ["read"] }
path "database/creds/payments-rw" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/lookup" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "sys/seal" { capabilities = ["update", "sudo"] }
path "sys/policies/acl/payments-*" { capabilities = ["read"] }
`

// benchPaths are the request paths a lookup cycles through: hits on
// exact, glob and "+" rules, and misses.
var benchPaths = []string{
	"secret/data/payments/db",
	"secret/data/payments/root-key",
	"secret/metadata/payments/db",
	"secret/data/web/config",
	"secret/data/a/b/teamb",
	"auth/token/lookup-self",
	"sys/seal",
	"secret/data/unrelated/thing",
	"sys/mounts",
	"database/creds/payments-ro",
}

func benchLookups(b *testing.B, a *ACL) {
	b.ReportAllocs()
	var granted Capability
	for i := 0; b.Loop(); i++ {
		granted |= a.Capabilities(benchPaths[i%len(benchPaths)])
	}
	if granted == 0 {
		b.Fatal("no lookup granted anything")
	}
}

func BenchmarkCapabilities20Rules(b *testing.B) {
	p := mustParse(b, "payments", policy20)
	if n := len(p.Rules()); n != 20 {
		b.Fatalf("%d rules", n)
	}
	benchLookups(b, mustACL(b, p))
}

// fivePolicies is a token's set: the default policy, the 20-rule policy
// and three more of 10 rules each.
func fivePolicies(b *testing.B) []*Policy {
	ps := []*Policy{
		mustParse(b, DefaultPolicyName, DefaultPolicySource),
		mustParse(b, "payments", policy20),
	}
	for _, team := range []string{"web", "ci", "ops"} {
		src := ""
		for i := range 5 {
			src += fmt.Sprintf("path \"secret/data/%s/app%d/*\" { capabilities = [\"read\"] }\n", team, i)
			src += fmt.Sprintf("path \"secret/metadata/%s/+/svc%d\" { capabilities = [\"list\"] }\n", team, i)
		}
		ps = append(ps, mustParse(b, team, src))
	}
	return ps
}

func BenchmarkCapabilitiesMerged5Policies(b *testing.B) {
	benchLookups(b, mustACL(b, fivePolicies(b)...))
}

func BenchmarkAllowedListMerged5Policies(b *testing.B) {
	a := mustACL(b, fivePolicies(b)...)
	b.ReportAllocs()
	for b.Loop() {
		a.Allowed("secret/metadata/web/x/svc1/", List)
	}
}

func BenchmarkNewACL5Policies(b *testing.B) {
	ps := fivePolicies(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewACL(ps...); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse20Rules(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("payments", []byte(policy20)); err != nil {
			b.Fatal(err)
		}
	}
}
