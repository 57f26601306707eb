path "secret/data/\"quoted\"/${var}/\u00e9" {
  capabilities = ["read"]
}
path "secret/data/a//b/*/c/a+b" {
  policy = "write"
}
