package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"hash"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

const (
	// MinSaltSize is the shortest salt [NewHasher] accepts, in bytes.
	MinSaltSize = 32
	// HashPrefix starts every hashed value in the log, as in Vault.
	HashPrefix = "hmac-sha256:"
	// RedactedSealed replaces a sensitive value while the node knows no salt
	// (it is sealed, e.g. while it audits an unseal call).
	RedactedSealed = "[redacted: sealed]"

	// maxDepth bounds how deep the redaction walks nested data. Deeper values
	// (or a map that contains itself) are replaced, not followed, so no data
	// the server hands over can exhaust the stack.
	maxDepth = 32
	// redactedTooDeep replaces a value nested deeper than maxDepth.
	redactedTooDeep = "[redacted: nested too deep]"
)

// Hasher computes the salted HMAC-SHA256 that stands for a sensitive value
// in the audit log. Every node of a cluster builds it from the same salt, so
// a value hashes the same in every node's log. It is safe for concurrent use.
type Hasher struct {
	mu   sync.RWMutex
	salt []byte // nil once destroyed
}

// NewHasher returns a Hasher keyed by a copy of salt, which must hold at
// least [MinSaltSize] bytes; the caller may zero its own copy afterwards.
func NewHasher(salt []byte) (*Hasher, error) {
	if len(salt) < MinSaltSize {
		return nil, ErrShortSalt
	}
	return &Hasher{salt: bytes.Clone(salt)}, nil
}

// HMAC returns "hmac-sha256:" and the hex HMAC-SHA256 of value under the
// salt. After [Hasher.Destroy] it returns [RedactedSealed] instead: a
// destroyed Hasher never lets a value through in clear.
func (h *Hasher) HMAC(value string) string {
	m := h.mac()
	if m == nil {
		return RedactedSealed
	}
	return sum(m, value)
}

// Destroy zeroes the salt; the Hasher then behaves as a sealed node's. It is
// idempotent. Zeroing is best effort: Go's runtime may have copied the bytes
// (and a record being hashed at that moment finishes with the salt it began
// with).
func (h *Hasher) Destroy() {
	if h == nil {
		return
	}
	h.mu.Lock()
	clear(h.salt)
	h.salt = nil
	h.mu.Unlock()
}

// mac returns a fresh HMAC keyed by the salt, or nil if h is nil or
// destroyed. One MAC serves a whole record, so a record is hashed under one
// salt even if the node seals meanwhile.
func (h *Hasher) mac() hash.Hash {
	if h == nil {
		return nil
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.salt == nil {
		return nil
	}
	return hmac.New(sha256.New, h.salt)
}

// HashForSearch returns what value looks like in the audit log under salt
// ("hmac-sha256:" and hex), so an operator who knows a value can find it in
// the log: it is what `coffer audit hash VALUE` prints.
func HashForSearch(salt []byte, value string) (string, error) {
	if len(salt) < MinSaltSize {
		return "", ErrShortSalt
	}
	return sum(hmac.New(sha256.New, salt), value), nil
}

// sum computes the prefixed hex HMAC of value with m, which it resets first.
func sum(m hash.Hash, value string) string {
	m.Reset()
	m.Write([]byte(value)) // a hash.Hash never returns an error
	var mac [sha256.Size]byte
	var out [len(HashPrefix) + 2*sha256.Size]byte
	copy(out[:], HashPrefix)
	hex.Encode(out[len(HashPrefix):], m.Sum(mac[:0]))
	return string(out[:])
}

// redactor rewrites one record's sensitive values. mac is nil while the node
// is sealed.
type redactor struct {
	mac hash.Hash
}

// secret returns what the log shows for a sensitive string: the empty
// string stays empty (it means "none"), anything else is hashed, or
// redacted while sealed.
func (r *redactor) secret(s string) string {
	switch {
	case s == "":
		return ""
	case r.mac == nil:
		return RedactedSealed
	default:
		return sum(r.mac, s)
	}
}

// data returns a redacted copy of m; the caller's map is left untouched.
// clearKeys name the values written in clear: each is a dot-separated path
// of map keys from the root of m ("version", "metadata.created_time"); a
// slice on the way is transparent ("keys.name" reaches the "name" of every
// map in the slice "keys").
func (r *redactor) data(m map[string]any, clearKeys []string) map[string]any {
	var paths [][]string
	for _, k := range clearKeys {
		if k != "" {
			paths = append(paths, strings.Split(k, "."))
		}
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = r.entry(k, v, 1, 0, paths)
	}
	return out
}

// entry redacts the value v found under key k of a map at path position
// at, given the clear paths still possible there.
func (r *redactor) entry(k string, v any, level, at int, paths [][]string) any {
	var next [][]string
	for _, p := range paths {
		if p[at] != k {
			continue
		}
		if len(p) == at+1 {
			return r.walk(v, level, 0, nil, true)
		}
		next = append(next, p)
	}
	return r.walk(v, level, at+1, next, false)
}

// walk returns the loggable form of v: strings hashed (kept when inClear),
// numbers and booleans unchanged, maps and slices rebuilt. Any other type is
// first turned into its JSON form and then walked, so no type can carry a
// string past the hash.
func (r *redactor) walk(v any, level, at int, paths [][]string, inClear bool) any {
	if level > maxDepth {
		return redactedTooDeep
	}
	str := func(s string) any {
		if inClear {
			return s
		}
		return r.secret(s)
	}
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return str(x)
	case bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, uintptr:
		return x
	case float64:
		return finite(x)
	case float32:
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return finite(float64(x))
		}
		return x
	case json.Number:
		if _, err := strconv.ParseFloat(string(x), 64); err == nil {
			return x
		}
		return str(string(x))
	case []byte:
		return str(string(x))
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if inClear {
				out[k] = r.walk(e, level+1, 0, nil, true)
			} else {
				out[k] = r.entry(k, e, level+1, at, paths)
			}
		}
		return out
	case map[string]string:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if inClear {
				out[k] = e
			} else {
				out[k] = r.entry(k, e, level+1, at, paths)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = r.walk(e, level+1, at, paths, inClear)
		}
		return out
	case []string:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = str(e)
		}
		return out
	}
	// Anything else (structs, pointers, named string types, other maps and
	// slices): take its JSON form, which holds only the types above.
	b, err := json.Marshal(v)
	if err != nil {
		return "[redacted: cannot encode " + reflect.TypeOf(v).String() + "]"
	}
	var g any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&g); err != nil {
		return "[redacted: cannot encode " + reflect.TypeOf(v).String() + "]"
	}
	return r.walk(g, level, at, paths, inClear)
}

// finite keeps a number, except NaN and the infinities, which JSON cannot
// hold: they become their names.
func finite(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	return f
}
