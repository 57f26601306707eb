// Package api is coffer's wire contract and Go client.
//
// The .proto files live in api/proto and their generated code in
// api/cofferpb (regenerate with `make proto`). Client wraps the generated
// stubs and carries the failure story of DESIGN.md §7 on the client side.
//
// # Endpoints
//
// A Client holds a list of endpoints (Config.Endpoints, or COFFER_ADDR via
// ConfigFromEnv). Reads are spread round robin over the healthy ones;
// writes go to the leader when the client knows it (learned from
// Sys.Status and from every read's ReadMeta.leader_id) and to any healthy
// endpoint otherwise, which forwards them. An endpoint that cannot be
// reached, or answers that it is sealed, is marked down and skipped for a
// back-off (Config.DownBackoff, doubling up to MaxDownBackoff); a
// background prober asks it for Sys.Status when the back-off ends and
// puts it back once it answers unsealed. The prober runs only while some
// endpoint is down or the leader is unknown, and Close stops it.
// EndpointStates shows what the client knows. With Config.SyncEndpoints
// the client also learns the API addresses of live members
// (Operator.Members, root token) so that nodes added later are used.
//
// Each endpoint's scheme chooses its transport: https:// speaks TLS
// (Config.TLS, or the system's roots), http:// plaintext, and a bare
// host:port follows Config.TLS (nil: plaintext; the CLI always sets one,
// so a bare address speaks TLS there, as VAULT_ADDR's does). When a
// connection fails, the client looks why (only then: a TLS handshake's
// error, or for plaintext a probe that sends a TLS ClientHello) and a
// mismatch or a certificate that does not verify fails the call on that
// endpoint with a TransportError: one line naming the cause (plaintext
// against TLS or the reverse, an unknown authority, the names the
// certificate holds, its expiry date) and what to do.
//
// # Retries
//
// A call tries the candidates in turn and moves on after a retryable error
// (codes.Unavailable: node down, sealed, no leader, stale bound exceeded,
// min_index not reached; also an attempt that ran out of
// Config.AttemptTimeout). After a failed pass over every endpoint it backs
// off (jittered, 50ms doubling to 1s) and tries again, within the caller's
// deadline and Config.RetryBudget. A pass that reaches no node at all ends
// the call early — a dead cluster does not come back within one call —
// unless an endpoint was found down within the last 2 s: the others may be
// nodes the client wrote off earlier that are reachable again. Writes
// carry a request id (filled in when empty) on every attempt, which the
// cluster deduplicates, so a retried write makes exactly one version.
//
// A write outstanding on the leader for longer than Config.LeaderCheck
// (200ms) makes the client ask the other nodes to answer as soon as they
// follow another leader; once one names another leader, the attempt is
// abandoned (LEADER_UNRESPONSIVE) and the write goes to the new leader
// with the same request id. A leader that is frozen (docker pause, a
// stalled VM) keeps its connections open and answers nothing: without the
// check a write would wait out AttemptTimeout there; with it, it waits
// about the election time. A slow leader the others still follow is not
// abandoned. Config.DisableLeaderCheck turns it off.
//
// A read outstanding on one node for longer than Config.HedgeAfter
// (250ms) is also sent to another node, and every HedgeAfter to the next
// while none has answered (a node that said "no leader" is asked again
// later); the first answer wins and the other attempts are cancelled. A
// frozen or stalled node thus costs the reads that go to it about
// HedgeAfter (or the election, when it led) instead of AttemptTimeout, and
// a node that was beaten goes after the others for 2 s. Every node answers
// at the consistency the read asked for. Writes are never hedged (the
// leader check covers them). Config.DisableHedgedReads turns it off.
//
// # Consistency
//
// Reads use Config.Consistency and Config.MaxStaleness unless the request
// sets its ReadOptions. A default read that fails with Unavailable on
// every endpoint is retried as a stale read (turn off with
// Config.DisableStaleFallback); its ReadMeta.Stale is then true. A
// linearizable read is never answered from a stale fallback or a cached
// value: it succeeds linearizably or fails with a retryable error.
// Read-your-writes: the client remembers the highest index its writes
// returned (LastWriteIndex) and sends it as min_index with every read, so
// no read goes back before the client's own writes, whichever node
// answers. GetWithInfo tells which endpoint answered and whether the
// answer was a fallback.
//
// # Watch
//
// Client.Watch follows the changes under a prefix as a channel of
// WatchEvent; it reconnects to another endpoint after a failure and
// resumes after the last index it saw, and reports a WatchCompacted event
// (then goes on) when a node no longer holds the changes since then.
//
// # Cache
//
// With Config.Cache the client caches Get answers in memory, keyed by
// (token hash, path, version): a fresh entry (within its TTL, shortened by
// a random jitter) answers without a call; the least recently used entry
// is evicted past MaxEntries. The client watches the mount of every cached
// path and drops a path's entries when it changes (and on its own writes),
// so entries are fresh within the watch's delay rather than the TTL.
// Linearizable reads skip the cache. Stale-if-error: when no endpoint
// answers, an entry is served up to CacheConfig.MaxStale past its expiry,
// with ReadMeta.Stale set and last_contact_ms grown by its age
// (GetWithInfo reports the age); past the budget the read fails with a
// CacheStaleError (errors.Is ErrCacheTooStale, gRPC code Unavailable).
// A cached answer is only served to calls with the token that read it:
// WithToken(ctx, token) makes one call use another token than
// Config.Token, and its cached answers are keyed by that token's hash, so
// that a process serving several callers (an agent) can share one Client.
// Cache is also usable on its own (NewCache): it keys entries by
// TokenHash, does no I/O, and exports and takes back its entries (Records,
// Restore) for a process that persists them, encrypted. The client never
// writes anything to disk.
package api
