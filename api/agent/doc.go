// Package agent is `coffer agent`: a local caching proxy that sits beside
// services and speaks coffer's own API, so that a service (or the CLI)
// talks to it exactly as to a node.
//
// # What it serves
//
// A gRPC server on Config.Listen with:
//
//   - coffer.v1.KV. Get, List and ReadMetadata are answered through an
//     api.Client over the cluster's endpoints (failover, retries, stale
//     fallback, read-your-writes). Get is cached (api.Cache): a fresh entry
//     answers without a call; the client's watch of the mount drops entries
//     when their secret changes. List and ReadMetadata are not cached.
//     Writes (Put, Delete, Undelete, Destroy, WriteMetadata,
//     DeleteMetadata) are passed upstream with the caller's token and
//     request id (one is filled in when the request has none, so that the
//     agent's own retries stay idempotent). Watch is proxied, resuming on
//     another node after a failure.
//   - coffer.v1.Sys. Status reports the agent itself: node_id
//     Config.NodeID ("agent"), raft_state "agent", initialized and not
//     sealed (the agent has no seal: it can serve from its cache whatever
//     the cluster's state, so clients keep it in rotation). leader_id and
//     leader_address name the cluster's leader when the agent knows it
//     (from its upstream answers), applied_index the highest applied index
//     an upstream answer reported, and last_contact_ms the time since an
//     upstream node last answered (since the agent started when none has
//     yet). Init, Unseal, Seal and Rotate fail with FailedPrecondition:
//     send them to a node.
//   - the standard grpc.health.v1 service ("" and "coffer.v1.KV" SERVING
//     until shutdown) and server reflection.
//
// Get answers carry two response headers: coffer-agent-cache ("miss",
// "hit" or "stale") and, for the last two, coffer-agent-cache-age-ms.
//
// # Tokens
//
// A caller's bearer token ("authorization: Bearer <token>") is used for its
// upstream calls, and its cached answers are keyed by that token's hash
// (api.WithToken): a cached value is served only to callers whose token
// read it. A caller that sends no authorization header gets nothing
// (Unauthenticated), unless Config.UseAgentToken lends it the agent's own
// token (Config.Upstream.Token, like Vault Agent's use_auto_auth_token),
// which is allowed only on a unix socket (Listen "unix:///path", mode
// 0600): the socket's file mode then says who has that token's rights. A
// malformed header is refused (Unauthenticated), never replaced by the
// agent's token. The
// cache's watches use the agent's own token; without one that may watch,
// entries live for their TTL only. No token is ever logged or written to
// disk: the cache file holds token hashes.
//
// # Outages
//
// When no upstream node answers, a cached Get answer is served up to
// Cache.MaxStale past its TTL, marked stale: ReadMeta.stale is true and
// last_contact_ms is grown by the entry's age. Past that budget the call
// fails with Unavailable, saying that the cache is past -max-stale and the
// cluster is unreachable. When the cluster comes back, reads are fresh
// again without a restart.
//
// # The cache file
//
// With Config.CacheDir the cache is also kept on disk, encrypted, so that
// an agent restarted during an outage still serves: after every change
// (coalesced over Config.PersistDelay) and at shutdown, in
// CacheDir/cache.v1.enc, written atomically (a temporary file in the same
// directory, fsync, rename; mode 0600 in a 0700 directory). The file is
//
//	"COFFERAC" | version (1 byte) | key check (16) | nonce (12) | AES-256-GCM box
//
// The box holds JSON records (token hash, path, version, index, times and
// the protobuf answer). Its key and the key check are derived from the
// 32-byte Config.CacheKey with HKDF-SHA-256 under distinct labels, and the
// AAD binds a purpose label and the header, so the file holds no plaintext
// and cannot be taken for another file. A key check that does not match
// means another key: New fails, naming the key's source. A file that does
// not decode (truncated, altered, unknown version) is reported as a
// warning and the agent starts with an empty cache. Entries restored from
// the file count as expired: they are served only while no upstream node
// answers (a watch has not caught up with changes made while the agent was
// down).
package agent
