// Package auth holds the checks of coffer's login methods that need
// nothing of a node: verifying a JWT against a set of public keys (a JWKS
// document, PEM keys, or a JWKS URL fetched and cached), checking its
// claims against a role, matching names against globs and addresses
// against CIDR blocks. The server keeps the roles and the state; this
// package decides, on untrusted input, and never panics.
//
// Every error says in one line what is wrong, and never carries a token
// or a key.
package auth
