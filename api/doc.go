// Package api is coffer's wire contract and Go client.
//
// The .proto files live in api/proto and their generated code in
// api/cofferpb (regenerate with `make proto`). Client wraps the generated
// stubs: it holds an endpoint list, attaches the token to every call, moves
// on to the next endpoint when a node answers Unavailable (sealed, no
// leader, down), and makes writes safe to retry by giving each one a
// request id that the cluster deduplicates.
package api
