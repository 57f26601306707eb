package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
)

// Batch tokens are self-contained: the token is the record, sealed by the
// barrier under batchTokenKey, so that any unsealed node checks it from
// its keys alone — no storage write to make one, no read to check one,
// also while there is no leader — and nobody without the keys can make or
// change one. They cannot be renewed or revoked one by one; they end at
// their expiry, or with their parent (a service token) when it is revoked.
const (
	batchTokenPrefix = "cob."
	// batchTokenKey is the additional data batch tokens are sealed under:
	// no stored entry has this key, so no sealed value of the state opens
	// as a batch token, nor a batch token as a stored entry.
	batchTokenKey = "auth/batch-token"
	// maxBatchTokenLen bounds what the gateway decodes.
	maxBatchTokenLen = 4096
)

// batchRecord is what a batch token carries.
type batchRecord struct {
	Policies    []string `json:"p"`
	Created     int64    `json:"c"`
	Expire      int64    `json:"e"`
	Parent      string   `json:"pa,omitempty"`
	DisplayName string   `json:"d,omitempty"`
	// BoundCIDRs: the client addresses the token works from (none: any).
	BoundCIDRs []string `json:"b,omitempty"`
}

// openBatchToken decodes a batch token into the record the gateway and
// the token service work with.
func openBatchToken(keys entryOpener, token string) (*tokenRecord, error) {
	b, err := decodeBatchToken(keys, token)
	if err != nil {
		return nil, err
	}
	rec := &tokenRecord{
		Hash: hashToken(token), Policies: b.Policies, Created: b.Created, Expire: b.Expire,
		Parent: b.Parent, DisplayName: b.DisplayName, BoundCIDRs: b.BoundCIDRs, batch: true,
	}
	if err := rec.parseCIDRs(); err != nil {
		return nil, err
	}
	return rec, nil
}

// isBatchToken reports whether token has the form of a batch token.
func isBatchToken(token string) bool { return strings.HasPrefix(token, batchTokenPrefix) }

// encodeBatchToken seals rec into a token.
func encodeBatchToken(keys entrySealer, rec *batchRecord) (string, error) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	sealed, err := keys.SealEntry(batchTokenKey, raw)
	if err != nil {
		return "", err
	}
	tok := batchTokenPrefix + base64.RawURLEncoding.EncodeToString(sealed)
	if len(tok) > maxBatchTokenLen {
		return "", invalidf("a batch token with these policies would be longer than %d bytes: give it fewer policies", maxBatchTokenLen)
	}
	return tok, nil
}

// decodeBatchToken opens a batch token. Any error means the token is not
// one this cluster made (or its keys are gone): the caller refuses it.
func decodeBatchToken(keys entryOpener, token string) (*batchRecord, error) {
	body, ok := strings.CutPrefix(token, batchTokenPrefix)
	if !ok || len(token) > maxBatchTokenLen {
		return nil, fmt.Errorf("server: not a batch token")
	}
	sealed, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return nil, fmt.Errorf("server: batch token is not base64: %w", err)
	}
	raw, err := keys.OpenEntry(batchTokenKey, sealed)
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var rec batchRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("server: batch token does not decode: %w", err)
	}
	if len(rec.Policies) == 0 || rec.Expire == 0 {
		return nil, fmt.Errorf("server: batch token without policies or expiry")
	}
	return &rec, nil
}
