package audit

import (
	"bytes"
	"encoding/json"
	"time"
)

// Auth describes the caller of a request as the audit log shows it. The
// client token and the accessor are written hashed; the other fields are
// identity facts written in clear, so they must never hold a secret.
type Auth struct {
	// ClientToken is the token the call carried (hashed in the log).
	ClientToken string
	// Accessor is the token's accessor (hashed in the log, as Vault does by
	// default).
	Accessor string
	// DisplayName is the token's display name ("approle-payments").
	DisplayName string
	// Policies are the token's policy names.
	Policies []string
	// TokenType is "service" or "batch".
	TokenType string
	// EntityID is the identity the token belongs to, if any.
	EntityID string
	// Metadata is the token's metadata (role name, login method facts).
	Metadata map[string]string
}

// Header is what a request's record and its response's record share. The
// server fills one per call and reuses it for both records.
type Header struct {
	// Time is when the record was made; the zero time means "now".
	Time time.Time
	// RequestID matches a response to its request.
	RequestID string
	// Method is the gRPC method or HTTP method the call came in by.
	Method string
	// Path is the logical path, e.g. "secret/data/payments/db".
	Path string
	// Operation is read, create, update, patch, delete, list, …
	Operation string
	// RemoteAddress is the caller's address.
	RemoteAddress string
	// Auth is the caller; the zero Auth for an unauthenticated call.
	Auth Auth
}

// Request is the audit record of an incoming call.
type Request struct {
	Header
	// Data holds the request's fields. Every string in it, however deeply
	// nested in maps and slices, is written hashed unless ClearKeys names
	// it; numbers and booleans are written as they are. The map is not
	// modified.
	Data map[string]any
	// ClearKeys names the values of Data that are safe in clear ("version",
	// "ttl", "policies"): each is a dot-separated path of keys from the root
	// of Data ("options.cas"), and the whole value under it is written in
	// clear. Empty by default: nothing in clear.
	ClearKeys []string
}

// Response is the audit record of a call's outcome.
type Response struct {
	Header
	// ResultCode is the gRPC code name ("OK", "PERMISSION_DENIED") or the
	// HTTP status ("200").
	ResultCode string
	// Reason is coffer's error reason name, empty on success.
	Reason string
	// Error is the error text, empty on success. It is written in clear:
	// coffer's errors never carry a secret.
	Error string
	// Data holds the response's fields, redacted as Request.Data is.
	Data map[string]any
	// ClearKeys names the values of Data that are safe in clear, as
	// Request.ClearKeys does.
	ClearKeys []string
}

// The line layouts. Every field is always present, so a log reader sees one
// shape per type.
type (
	wireAuth struct {
		ClientToken string            `json:"client_token"`
		Accessor    string            `json:"accessor"`
		DisplayName string            `json:"display_name"`
		Policies    []string          `json:"policies"`
		TokenType   string            `json:"token_type"`
		EntityID    string            `json:"entity_id,omitempty"`
		Metadata    map[string]string `json:"metadata,omitempty"`
	}
	wireHeader struct {
		Time          string   `json:"time"`
		Type          string   `json:"type"`
		Node          string   `json:"node"`
		RequestID     string   `json:"request_id"`
		Method        string   `json:"method"`
		Path          string   `json:"path"`
		Operation     string   `json:"operation"`
		RemoteAddress string   `json:"remote_address"`
		Auth          wireAuth `json:"auth"`
	}
	wireRequest struct {
		wireHeader
		Data map[string]any `json:"data"`
	}
	wireResponse struct {
		wireHeader
		ResultCode string         `json:"result_code"`
		Reason     string         `json:"reason"`
		Error      string         `json:"error"`
		Data       map[string]any `json:"data"`
	}
)

// header lays out h for a record of type typ made on node, hashing the
// token and the accessor.
func (r *redactor) header(typ, node string, now time.Time, h *Header) wireHeader {
	t := h.Time
	if t.IsZero() {
		t = now
	}
	policies := h.Auth.Policies
	if policies == nil {
		policies = []string{}
	}
	return wireHeader{
		Time:          t.UTC().Format(time.RFC3339Nano),
		Type:          typ,
		Node:          node,
		RequestID:     h.RequestID,
		Method:        h.Method,
		Path:          h.Path,
		Operation:     h.Operation,
		RemoteAddress: h.RemoteAddress,
		Auth: wireAuth{
			ClientToken: r.secret(h.Auth.ClientToken),
			Accessor:    r.secret(h.Auth.Accessor),
			DisplayName: h.Auth.DisplayName,
			Policies:    policies,
			TokenType:   h.Auth.TokenType,
			EntityID:    h.Auth.EntityID,
			Metadata:    h.Auth.Metadata,
		},
	}
}

// requestLine returns req's audit line, ending in a newline.
func (r *redactor) requestLine(node string, now time.Time, req *Request) ([]byte, error) {
	return encodeLine(wireRequest{
		wireHeader: r.header("request", node, now, &req.Header),
		Data:       r.data(req.Data, req.ClearKeys),
	})
}

// responseLine returns resp's audit line, ending in a newline.
func (r *redactor) responseLine(node string, now time.Time, resp *Response) ([]byte, error) {
	return encodeLine(wireResponse{
		wireHeader: r.header("response", node, now, &resp.Header),
		ResultCode: resp.ResultCode,
		Reason:     resp.Reason,
		Error:      resp.Error,
		Data:       r.data(resp.Data, resp.ClearKeys),
	})
}

// encodeLine encodes v as one JSON line. JSON escapes every control
// character, so a newline inside a value cannot split the line.
func encodeLine(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
