package server

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"coffer/fsm"
)

// Limits on what a request may carry. Each violation gets an error that
// names the field and the limit.
const (
	// MaxPathLen is the longest secret path in bytes.
	MaxPathLen = 512
	// MaxSecretSize bounds the encoded data of one secret version.
	MaxSecretSize = 1 << 20
	// MaxRequestSize is the largest message a node reads (gRPC's
	// MaxRecvMsgSize): the largest legal request, a put of MaxSecretSize
	// bytes of data in MaxKeys keys, with room for its framing (at most 11
	// bytes a key: an entry's tag and three lengths), its path and request
	// id. Anything larger would be refused after decoding anyway.
	MaxRequestSize = MaxSecretSize + 64<<10
	// MaxKeys bounds the number of keys in one secret.
	MaxKeys = 1024
	// MaxKeyLen bounds the length of one key name in bytes.
	MaxKeyLen = 256
	// DefaultListLimit and MaxListLimit bound the keys of one list answer
	// (a list of 36,000 keys made a 17.7 MB answer, and 40 of them at once
	// took a leader from 300 MB to 2.2 GB: security review).
	DefaultListLimit = 1000
	MaxListLimit     = 10000
	// MaxVersionsLimit bounds a secret's max_versions: every write
	// re-encodes the secret's version list, so a path allowed to keep
	// billions of versions slowed every write to it (security review).
	MaxVersionsLimit = 10000
	// MaxVersionsPerCall bounds the versions listed in one delete,
	// undelete or destroy.
	MaxVersionsPerCall = 1000
	// DefaultMount is the KV mount present from init.
	DefaultMount = "secret/"
)

// mounts lists the KV mounts. Only secret/ exists for now.
var mounts = []string{DefaultMount}

// validatePath checks a secret path: "MOUNT/rest" with non-empty segments,
// no "." or "..", printable UTF-8 and at most MaxPathLen bytes.
func validatePath(path string) error {
	if strings.HasSuffix(path, "/") && len(path) <= MaxPathLen {
		return invalidPath(path, "a secret path must not end with /")
	}
	if err := checkPathText(path); err != nil {
		return err
	}
	mount, rest, err := splitMount(path)
	if err != nil {
		return err
	}
	if rest == "" {
		return invalidPath(path, fmt.Sprintf("name the secret under the mount, e.g. %sapp/db", mount))
	}
	return nil
}

// validatePrefix checks a list prefix: a mount, or a path under it; a
// trailing / is allowed. It returns the prefix with a trailing /.
func validatePrefix(path string) (string, error) {
	if path == "" {
		return "", invalidf("path is empty: list a mount such as %s", DefaultMount)
	}
	p := path
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	if err := checkPathText(strings.TrimSuffix(p, "/")); err != nil {
		return "", err
	}
	if _, _, err := splitMount(p); err != nil {
		return "", err
	}
	return p, nil
}

func checkPathText(path string) error {
	switch {
	case path == "":
		return invalidf("path is empty: give a path such as %sapp/db", DefaultMount)
	case len(path) > MaxPathLen:
		return invalidf("path is %d bytes, over the limit of %d: shorten it", len(path), MaxPathLen)
	case !utf8.ValidString(path):
		return invalidf("path is not valid UTF-8")
	case strings.HasPrefix(path, "/"):
		return invalidPath(path, "remove the leading /")
	}
	for _, r := range path {
		if r == 0 || unicode.IsControl(r) {
			return invalidPath(path, "it contains a control character")
		}
	}
	for _, seg := range strings.Split(path, "/") {
		switch seg {
		case "":
			return invalidPath(path, "it has an empty segment (//)")
		case ".", "..":
			return invalidPath(path, "segments . and .. are not allowed")
		}
	}
	return nil
}

// splitMount finds the mount a path lives under.
func splitMount(path string) (mount, rest string, err error) {
	for _, m := range mounts {
		if strings.HasPrefix(path, m) {
			return m, strings.TrimPrefix(path, m), nil
		}
		if path+"/" == m {
			return m, "", nil
		}
	}
	return "", "", invalidPath(path, fmt.Sprintf("no KV mount there; paths start with %s", strings.Join(mounts, " or ")))
}

func invalidPath(path, why string) error {
	return invalidf("invalid path %q: %s", printable(path), why)
}

// printable shortens and escapes a user-supplied string for an error
// message.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// validateData checks the key/value map of a put.
func validateData(data map[string]string) error {
	if len(data) == 0 {
		return invalidf("data is empty: give at least one key=value")
	}
	if len(data) > MaxKeys {
		return tooLargef("data has %d keys, over the limit of %d: split the secret", len(data), MaxKeys)
	}
	size := 0
	for k, v := range data {
		switch {
		case k == "":
			return invalidf("data has an empty key name")
		case len(k) > MaxKeyLen:
			return invalidf("key name %q is over %d bytes", printable(k), MaxKeyLen)
		case !utf8.ValidString(k):
			return invalidf("key name is not valid UTF-8")
		}
		if len(v) > MaxSecretSize {
			return tooLargef("value of key %q is %d bytes, over the limit of %d (1 MiB): store large files elsewhere and keep a reference here", printable(k), len(v), MaxSecretSize)
		}
		size += len(k) + len(v)
	}
	if size > MaxSecretSize {
		return tooLargef("secret data is %d bytes, over the limit of %d (1 MiB): split it into several secrets", size, MaxSecretSize)
	}
	return nil
}

// validateVersions checks the version list of delete, undelete, destroy.
func validateVersions(versions []uint64, required bool, verb string) error {
	if required && len(versions) == 0 {
		return invalidf("%s needs the versions to act on (-versions=1,2)", verb)
	}
	if len(versions) > MaxVersionsPerCall {
		return invalidf("%d versions in one %s, over the limit of %d", len(versions), verb, MaxVersionsPerCall)
	}
	for _, v := range versions {
		if v == 0 {
			return invalidf("version 0 does not exist: versions start at 1")
		}
	}
	return nil
}

// validateListPage checks a list's page: the limit (0: the default) and
// the child to start after (one child name, as a page returned it).
func validateListPage(limit uint32, after string) (int, error) {
	if limit > MaxListLimit {
		return 0, invalidf("limit %d is over the most keys of one answer, %d: page with after", limit, MaxListLimit)
	}
	if limit == 0 {
		limit = DefaultListLimit
	}
	if name := strings.TrimSuffix(after, "/"); strings.Contains(name, "/") || len(after) > MaxPathLen || (after != "" && name == "") {
		return 0, invalidf("after %q is not one key of a list answer: pass the next_after of the previous page", printable(after))
	}
	return int(limit), nil
}

// validateRequestID checks a write's request_id before it reaches Raft: the
// state machine refuses a longer one, and a refusal there would cost a log
// entry and come back as a failed command.
func validateRequestID(id string) error {
	if len(id) > fsm.MaxRequestIDLen {
		return invalidf("request_id is %d bytes, over the limit of %d: use an id such as the client makes (api.NewRequestID)", len(id), fsm.MaxRequestIDLen)
	}
	return nil
}

// invalidf is an ErrInvalidArgument with its own message.
func invalidf(format string, args ...any) error {
	return withMessage(ErrInvalidArgument, format, args...)
}

// tooLargef is an ErrTooLarge with its own message.
func tooLargef(format string, args ...any) error {
	return withMessage(ErrTooLarge, format, args...)
}

// Limits on a secret's custom metadata, Vault's: at most
// fsm.MaxCustomMetadataKeys keys, each key 1 to 128 bytes and each value
// at most 512 bytes, both printable.
const (
	MaxCustomMetadataKeyLen   = 128
	MaxCustomMetadataValueLen = 512
	// MaxDeleteVersionAfter bounds delete_version_after (a century), so
	// that creation time plus it stays a time.
	MaxDeleteVersionAfter = 100 * 365 * 24 * time.Hour
)

// validateCustomMetadata checks custom metadata keys and values against
// Vault's limits; removed lists keys a patch removes (their names only).
func validateCustomMetadata(custom map[string]string, removed []string) error {
	const prefix = "custom_metadata validation failed"
	if n := len(custom); n > fsm.MaxCustomMetadataKeys {
		return invalidf("%s: payload must contain at most %d keys, provided %d", prefix, fsm.MaxCustomMetadataKeys, n)
	}
	if len(removed) > MaxKeys {
		return invalidf("%s: %d keys removed at once, over the limit of %d", prefix, len(removed), MaxKeys)
	}
	check := func(k string) error {
		if len(k) == 0 || len(k) > MaxCustomMetadataKeyLen {
			return invalidf("%s: length of key %q is %d but must be 0 < len(key) <= %d", prefix, printable(k), len(k), MaxCustomMetadataKeyLen)
		}
		if !isPrintable(k) {
			return invalidf("%s: key %q contains unprintable characters", prefix, printable(k))
		}
		return nil
	}
	for k, v := range custom {
		if err := check(k); err != nil {
			return err
		}
		if len(v) > MaxCustomMetadataValueLen {
			return invalidf("%s: length of value for key %q is %d but must be <= %d", prefix, printable(k), len(v), MaxCustomMetadataValueLen)
		}
		if !isPrintable(v) {
			return invalidf("%s: value for key %q contains unprintable characters", prefix, printable(k))
		}
	}
	for _, k := range removed {
		if err := check(k); err != nil {
			return err
		}
	}
	return nil
}

// isPrintable reports whether s is valid UTF-8 of printable characters.
func isPrintable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// validateDeleteVersionAfter checks a delete_version_after in nanoseconds.
func validateDeleteVersionAfter(n int64) error {
	if n < 0 {
		return invalidf("delete_version_after %s is negative: give 0 (never) or a duration such as 720h", time.Duration(n))
	}
	if time.Duration(n) > MaxDeleteVersionAfter {
		return invalidf("delete_version_after %s is over the limit of %s: give a shorter duration", time.Duration(n), MaxDeleteVersionAfter)
	}
	return nil
}
