# A service that owns its secrets on the KV version 2 mount.
path "secret/data/payments/*" {
  capabilities = ["create", "read", "update", "patch", "delete"]
}

path "secret/metadata/payments/*" {
  capabilities = ["list", "read", "delete"]
}

path "secret/delete/payments/*" {
  capabilities = ["update"]
}

path "secret/undelete/payments/*" {
  capabilities = ["update"]
}

path "secret/destroy/payments/*" {
  capabilities = ["update"]
}
