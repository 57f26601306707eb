name = "ignored"
path {
  "secret/+*" { capabilities = ["list"] }
}
PATH "/secret/data/ünïcode/+/x*" {
  Capabilities = ["read", "deny"]
  policy = "sudo"
}
path "secret/data/heredoc" {
  capabilities = [<<EOT
read
EOT
  ]
}
path "a" "b" { capabilities = ["read"] }
