// Package httpapi serves Vault's HTTP API on a coffer node, so that the
// vault CLI, hashicorp/vault/api and the tools built on them work
// unchanged.
//
// The handlers are thin: each decodes a request into the message of the
// gRPC method that does the same thing, hands it to the node's Backend
// (which runs it through the same gateway as a gRPC call: route table,
// authentication, policy check, audit, forwarding to the leader), and
// encodes the answer in Vault's envelope and error shape. No rule lives
// here: a path this package serves is authorised by the route of the
// method it calls.
//
// Consistency travels in headers: X-Vault-Index (OpenBao's and Vault
// Enterprise's read-your-writes header) carries coffer's applied index;
// X-Coffer-Consistency and X-Coffer-Max-Staleness choose a read's
// guarantee; X-Coffer-Node, X-Coffer-Applied-Index and X-Coffer-Stale say
// who answered and how fresh the answer is.
package httpapi
