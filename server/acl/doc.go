// Package acl is coffer's policy language: Vault's ACL policies, in
// Vault's HCL or JSON form and over Vault's HTTP paths, so that a policy
// written for Vault's KV version 2 works unchanged.
//
// A policy is a list of path blocks:
//
//	path "secret/data/payments/*" { capabilities = ["read"] }
//	path "secret/metadata/+/config" { capabilities = ["list", "read"] }
//	path "sys/seal" { capabilities = ["update", "sudo"] }
//
// # Patterns
//
// A pattern matches a request path exactly, unless
//
//   - it ends in "*": then it is a prefix glob, and "secret/data/a*"
//     matches "secret/data/a" and "secret/data/abc/d";
//   - a segment is exactly "+": that segment matches any one non-empty
//     segment, so "secret/data/+/db" matches "secret/data/x/db" but not
//     "secret/data/x/y/db". "+" and a trailing "*" combine
//     ("secret/+/app/*", "secret/+*").
//
// A "*" anywhere but at the end, and a "+" inside a segment ("a+b"), are
// literal characters, as in Vault; Lint flags both. One leading "/" of a
// pattern is ignored. Two details are narrower than Vault's code: a "+"
// never matches an empty segment, and a "+" inside a segment does not
// count as a wildcard when patterns are ranked.
//
// # Which rule decides
//
// When several patterns match a path, the single highest-priority one
// decides, and nothing is inherited from the others. An exact pattern beats
// every wildcard one. Between two wildcard patterns P1 and P2, P1 has the
// lower priority if, in this order,
//
//  1. its first wildcard ("+" or the final "*") comes earlier;
//  2. it ends in "*" and P2 does not;
//  3. it has more "+" segments;
//  4. it is shorter;
//  5. it is lexicographically smaller.
//
// So a deny on "secret/data/*" does not cover "secret/data/payments/x" when
// "secret/data/payments/*" grants read there: Lint warns about that.
//
// A list request ("secret/metadata/app/", with the trailing "/" Vault's
// router adds) is looked up in Vault's order: an exact rule for the path,
// then for the path without its "/", then wildcard rules on the path
// without its "/", and only then wildcard rules on the path (ACL.Decide).
//
// # Capabilities and merging
//
// The capabilities are create, read, update, patch, delete, list, sudo and
// deny. A rule with deny grants nothing, whatever else it lists. Blocks with
// the same pattern — in one policy, or in the several policies of a token
// (NewACL) — merge into one rule holding the union of their capabilities,
// or deny alone if any of them denies. Vault's legacy `policy = "..."` form
// is read as Vault reads it: deny is deny; read is read and list; write is
// create, read, update, patch, delete and list; sudo is write and sudo.
//
// # What coffer refuses
//
// Parse fails closed: Vault features that narrow a rule and that coffer
// does not implement (allowed_parameters, denied_parameters,
// required_parameters, min_wrapping_ttl, max_wrapping_ttl, control_group,
// mfa_methods, subscribe_event_types) and templated paths ("{{...}}") are
// refused with the line and column, because ignoring them would grant more
// than the author meant. So are unknown keys and capabilities, empty
// patterns, blocks that grant nothing, JSON that is not valid JSON (the HCL
// package's own JSON parser accepts an object cut short), and policies over
// the limits (MaxPolicyBytes, MaxRules, MaxPatternBytes). Names are lower case
// [a-z0-9_-]{1,128}; "root" is the built-in policy (Root) and cannot be
// parsed.
//
// # Evaluation
//
// The server checks every request against the token's ACL, on followers
// too, so a lookup does not allocate: exact patterns are in a map, wildcard
// patterns in priority order, and the first that matches decides.
package acl
