package acl

// DefaultPolicySource is the text of coffer's default policy, the one named
// DefaultPolicyName: the token self-service paths of Vault's default
// policy, and nothing else. A token may look itself up, renew or revoke
// itself, ask what it may do, learn a path's mount, and renew or look up its leases.
const DefaultPolicySource = `# coffer's default policy: what every token may do for itself.

# Look up the token's own properties.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Renew the token.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Revoke the token.
path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# Ask which capabilities the token has on a path.
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# Ask which mount a path is under and its engine (the vault CLI's kv
# preflight; Vault answers it for any token).
path "sys/internal/ui/mounts/*" {
  capabilities = ["read"]
}

# Renew and look up the token's leases.
path "sys/leases/renew" {
  capabilities = ["update"]
}

path "sys/leases/lookup" {
  capabilities = ["update"]
}

# The older lease renewal path.
path "sys/renew" {
  capabilities = ["update"]
}
`
