# One path per team under any application, with "+" segments.
path "secret/data/+/teamb" {
  capabilities = ["read"]
}

path "secret/data/+/+/teamb" {
  capabilities = ["read"]
}

path "secret/metadata/+/config" {
  capabilities = ["list", "read"]
}

path "sys/seal" {
  capabilities = ["update", "sudo"]
}
