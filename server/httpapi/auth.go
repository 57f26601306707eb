package httpapi

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
)

// authRoutes serves tokens, policies, logins and the sys endpoints that
// go with them (capabilities, audit-hash, rotate, generate-root).
func (h *Handler) authRoutes() {
	h.tokenRoutes()
	h.policyRoutes()
	h.loginRoutes()
	h.sysOpsRoutes()
	h.databaseRoutes()
}

// parseTTL reads a duration as Vault takes it: a number of seconds (JSON
// number or digits in a string), or a Go duration ("1h", "30m", "90s"),
// with "d" for days as well. nil and "" are 0.
func parseTTL(field string, v any) (int64, error) {
	n, err := parseSeconds(field, v)
	if err == nil && n > maxTTLSeconds {
		return 0, badRequest("%s is more than 100 years: give a shorter duration", field)
	}
	return n, err
}

// parseSeconds reads a duration in Vault's forms, in seconds.
func parseSeconds(field string, v any) (int64, error) {
	bad := func() error {
		return badRequest("%s %s is not a duration: give seconds (3600) or a duration such as \"1h\" or \"30m\"", field, jsonKindOrValue(v))
	}
	var s string
	switch t := v.(type) {
	case nil:
		return 0, nil
	case json.Number:
		s = t.String()
	case string:
		s = strings.TrimSpace(t)
	default:
		return 0, bad()
	}
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, badRequest("%s must not be negative", field)
		}
		return n, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f < math.MaxInt64 && f == math.Trunc(f) {
		return int64(f), nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/86400 {
			return 0, bad()
		}
		return n * 86400, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, bad()
	}
	if d < 0 {
		return 0, badRequest("%s must not be negative", field)
	}
	return int64(d / time.Second), nil
}

// maxTTLSeconds bounds a duration a request names (100 years).
const maxTTLSeconds = 100 * 365 * 24 * 3600

// jsonKindOrValue names a bad value in an error without echoing a long
// one.
func jsonKindOrValue(v any) string {
	switch t := v.(type) {
	case string:
		if len(t) > 32 {
			t = t[:32] + "…"
		}
		return strconv.Quote(t)
	case json.Number:
		return t.String()
	case bool:
		return strconv.FormatBool(t)
	}
	return jsonKind(v)
}

// strList reads a list as Vault takes it: a JSON array of strings, or one
// string of comma-separated items. Empty items are dropped.
func strList(field string, v any) ([]string, error) {
	var items []string
	switch t := v.(type) {
	case nil:
		return nil, nil
	case string:
		items = strings.Split(t, ",")
	case []any:
		for _, e := range t {
			s, ok := e.(string)
			if !ok {
				return nil, badRequest("%s: every item must be a string, not %s", field, jsonKindOrValue(e))
			}
			items = append(items, s)
		}
	default:
		return nil, badRequest("%s must be a list of strings or a comma-separated string, not %s", field, jsonKindOrValue(v))
	}
	var out []string
	for _, s := range items {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

// boolOf reads a boolean as Vault takes it: true/false, or a string or
// number of the same meaning. nil is false.
func boolOf(field string, v any) (bool, error) {
	switch t := v.(type) {
	case nil:
		return false, nil
	case bool:
		return t, nil
	case string, json.Number:
		b, err := strconv.ParseBool(fmt.Sprint(t))
		if err == nil {
			return b, nil
		}
	}
	return false, badRequest("%s must be true or false, not %s", field, jsonKindOrValue(v))
}

// intOf reads an integer (a JSON number or digits in a string).
func intOf(field string, v any) (int64, error) {
	switch t := v.(type) {
	case nil:
		return 0, nil
	case json.Number, string:
		s := strings.TrimSpace(fmt.Sprint(t))
		if s == "" {
			return 0, nil
		}
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
	}
	return 0, badRequest("%s must be a whole number, not %s", field, jsonKindOrValue(v))
}

// authBlock is Vault's "auth" of a token's creation, renewal or login.
func authBlock(t *pb.TokenInfo) map[string]any {
	policies := nonNil(t.GetPolicies())
	return map[string]any{
		"client_token":    t.GetToken(),
		"accessor":        t.GetAccessor(),
		"policies":        policies,
		"token_policies":  policies,
		"metadata":        nil,
		"lease_duration":  t.GetTtlSeconds(),
		"renewable":       t.GetRenewable(),
		"entity_id":       "",
		"token_type":      t.GetType(),
		"orphan":          t.GetOrphan(),
		"mfa_requirement": nil,
		"num_uses":        t.GetNumUses(),
	}
}

// nonNil makes a nil list an empty one, which JSON shows as [] (Vault
// never answers null for a list of policies or names).
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// withTopLevel is Vault's answer of a sys/ path: the envelope, with the
// data's fields repeated at the top level (older clients read them
// there).
func withTopLevel(rq *request, data map[string]any) *reply {
	raw := map[string]any{"request_id": rq.id, "lease_id": "", "renewable": false, "lease_duration": 0, "data": data, "wrap_info": nil, "warnings": nil, "auth": nil, "mount_type": "system"}
	for k, v := range data {
		if _, taken := raw[k]; !taken {
			raw[k] = v
		}
	}
	return &reply{raw: raw}
}

// keysReply is a LIST's answer: data.keys (404 when there is none, as
// Vault answers an empty list).
func keysReply(names []string) (*reply, error) {
	if len(names) == 0 {
		return nil, notFoundEmpty()
	}
	return &reply{data: map[string]any{"keys": names}}, nil
}

// indexed is a write's reply: 204 with the write's Raft index
// (X-Vault-Index).
func indexed(index uint64) *reply { return &reply{status: http.StatusNoContent, index: index} }
