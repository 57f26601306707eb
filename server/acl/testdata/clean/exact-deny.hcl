# Everything on the mount but one secret: an exact deny has the highest
# priority there is, so nothing overrides it.
path "secret/data/*" {
  capabilities = ["create", "read", "update", "patch", "delete", "list"]
}

path "secret/data/super-secret" {
  capabilities = ["deny"]
}

path "secret/metadata/*" {
  capabilities = ["list"]
}
