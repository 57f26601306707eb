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
//   - coffer.v1.Database. Creds and StaticCreds are answered from the
//     credentials the agent holds (see "Database credentials" below); the
//     other calls (connections, roles, rotate-role, rotate-root) are
//     passed upstream.
//   - coffer.v1.Lease. Every call is passed upstream with the caller's
//     token. A renewal of a lease the agent holds moves its end as the
//     cluster answered (a short increment brings it closer); a revocation
//     (or revoke-prefix) through the agent drops the credentials it held
//     under that lease.
//   - the standard grpc.health.v1 service ("", "coffer.v1.KV",
//     "coffer.v1.Database" and "coffer.v1.Lease" SERVING until shutdown)
//     and server reflection.
//
// Get, Creds and StaticCreds answers carry two response headers:
// coffer-agent-cache ("miss", "hit" or "stale") and, for the last two,
// coffer-agent-cache-age-ms.
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
// # Database credentials
//
// As Vault Agent's lease cache does, the agent fetches a dynamic role's
// credentials once per token (by hash) and role, and hands the same
// credentials — one database user — to every caller with that token while
// their lease runs; concurrent first callers wait for one Creds call.
// Another token gets its own. lease_duration_seconds in an answer is what
// is left of the lease. A background renewer per held lease:
//
//   - renews it (with the token that fetched it, increment 0: the lease's
//     TTL) at two thirds of its remaining TTL, retrying a failure with a
//     jittered back-off (250 ms doubling to 30 s) while the lease lasts;
//   - once renewals cannot extend it further — the answer was capped by
//     the max TTL, or the token may not renew — fetches new credentials
//     when a share of the lease's whole life (issue to max TTL) is left,
//     drawn per lease from 10–20 % as Vault's lifetime watcher does, but
//     at least three Config.LeaseMargin and never in the first half of the
//     life; callers get the new credentials from then on. Only
//     credentials that were handed out are replaced: ones nobody took run
//     out with their lease, so an idle token costs at most one database
//     user per role;
//   - leaves the old lease to run out rather than revoking it, as Vault
//     Agent does: a caller given the old credentials just before the
//     switch may still be using them, they end at most a few renewal
//     intervals later, and the default policy does not let a token revoke
//     leases;
//   - drops the credentials Config.LeaseMargin before their lease ends.
//
// Lease times are the agent's clock: the time the Creds call was sent
// plus the durations the cluster reports (end minus issue, both on the
// cluster's clock), so clock skew between the agent and the nodes does
// not matter, and they are taken down to the whole second, as VALID UNTIL
// has them (a second early until the first renewal tells the issue
// time). Credentials are handed out only while at least
// Config.LeaseMargin (-lease-margin, 2 s) of their lease is left.
//
// Before handing held credentials out, when the cluster last accepted the
// token more than Cache.TokenRecheck ago, the agent asks it, with the
// caller's token, whether the token may still read database/creds/ROLE
// (Token.Capabilities; a policy change counts within the recheck, as for
// cached KV answers) and whether the lease still runs (Lease.Lookup). A
// token that may no longer read, or a lease revoked meanwhile, ends the
// held credentials (the call then goes to the cluster); a refused token
// drops everything held for it (as does any call through the agent that
// the cluster refuses as Unauthenticated, and a refused renewal), so those
// credentials are neither served nor renewed again. The agent holds at most
// Config.MaxHeldLeases credentials (a caller beyond is refused with
// ResourceExhausted).
//
// StaticCreds is always read from the cluster while a node answers (a
// rotate-role is seen at once). The last answer per token and role is kept
// until the role's next scheduled rotation (ttl_seconds from the time the
// call was sent): a static password stops working then.
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
// Held database credentials are served (marked stale once the token's
// recheck finds no node) only while their lease has Config.LeaseMargin
// left; then Creds fails with Unavailable (reason CACHE_TOO_STALE), saying
// that the lease is over and the cluster is unreachable. They are never
// served past their lease, whatever -max-stale says. A kept static
// password is served the same way until its role's next rotation, never
// after. When the cluster comes back, Creds fetches fresh credentials.
// During a full outage the agent cannot learn that a token or a lease was
// revoked: it serves what it holds until the lease ends.
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
// the protobuf answer), the held database credentials (token hash, role,
// the protobuf answer — username and password — and the lease's times)
// whose lease has more than Config.LeaseMargin left, and the kept static
// passwords before their rotation: the same AES-256-GCM box protects
// them as the KV secrets. Its key and the key check are derived from the
// 32-byte Config.CacheKey with HKDF-SHA-256 under distinct labels, and the
// AAD binds a purpose label and the header, so the file holds no plaintext
// and cannot be taken for another file. A key check that does not match
// means another key: New fails, naming the key's source. A file that does
// not decode (truncated, altered, unknown version) is reported as a
// warning and the agent starts with an empty cache. Entries restored from
// the file count as expired: they are served only while no upstream node
// answers (a watch has not caught up with changes made while the agent was
// down). Restored database credentials are served while their lease runs:
// the first call with their token asks the cluster about the lease (a
// token recheck) when a node answers, and serves them marked stale when
// none does; their renewals resume with that caller's token (the file
// holds no token). Credentials whose lease ended while the agent was down
// are dropped at start.
package agent
