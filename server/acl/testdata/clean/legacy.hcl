# Vault's older form of a path block.
path "secret/data/legacy/*" {
  policy = "write"
}

path "secret/metadata/legacy/*" {
  policy = "read"
}
