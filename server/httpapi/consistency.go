package httpapi

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
)

// The headers of consistency (DESIGN.md §13).
const (
	// headerIndex is Vault's read-your-writes header: a write answers with
	// the index it was applied at; a read that sends it back is answered at
	// or after it.
	headerIndex = "X-Vault-Index"
	// headerInconsistent: "forward-active-node" makes a node that has not
	// applied the index pass the read to the leader instead of waiting.
	headerInconsistent = "X-Vault-Inconsistent"
	headerConsistency  = "X-Coffer-Consistency"
	headerMaxStaleness = "X-Coffer-Max-Staleness"
	headerNode         = "X-Coffer-Node"
	headerApplied      = "X-Coffer-Applied-Index"
	headerStale        = "X-Coffer-Stale"
)

// indexClusterID is the cluster id field of the X-Vault-Index states
// coffer makes.
const indexClusterID = "coffer"

// encodeIndex makes an X-Vault-Index value for a Raft index, in the form
// of Vault's WAL state ("v1:CLUSTER:LOCAL:REPLICATED:HMAC", base64) that
// hashicorp/vault/api parses and merges. The state carries no HMAC: a
// forged index makes only its sender's read wait, bounded.
func encodeIndex(index uint64) string {
	n := strconv.FormatUint(index, 10)
	return base64.StdEncoding.EncodeToString([]byte("v1:" + indexClusterID + ":" + n + ":" + n + ":"))
}

// decodeIndex parses an X-Vault-Index value.
func decodeIndex(v string) (uint64, bool) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return 0, false
	}
	parts := strings.Split(string(raw), ":")
	if len(parts) != 5 || parts[0] != "v1" || parts[1] != indexClusterID {
		return 0, false
	}
	local, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		return 0, false
	}
	return local, true
}

// readOptions turns the request's consistency headers into the read
// options of the gRPC API, and reports whether the client asked to be
// forwarded rather than wait.
func readOptions(h http.Header) (*pb.ReadOptions, bool, error) {
	opts := &pb.ReadOptions{}
	switch c := strings.ToLower(strings.TrimSpace(h.Get(headerConsistency))); c {
	case "", "default":
	case "stale":
		opts.Consistency = pb.Consistency_CONSISTENCY_STALE
	case "linearizable":
		opts.Consistency = pb.Consistency_CONSISTENCY_LINEARIZABLE
	default:
		return nil, false, badRequest("%s: %q is not a consistency: use stale, default or linearizable", headerConsistency, c)
	}
	if v := strings.TrimSpace(h.Get(headerMaxStaleness)); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, false, badRequest("%s: %q is not a duration: give one such as 2s or 500ms", headerMaxStaleness, v)
		}
		opts.MaxStalenessMs = d.Milliseconds()
	}
	for _, v := range h.Values(headerIndex) {
		for _, s := range strings.Split(v, ",") {
			if strings.TrimSpace(s) == "" {
				continue
			}
			idx, ok := decodeIndex(s)
			if !ok {
				return nil, false, badRequest("%s: %q is not an index a coffer node made: send back the value a response carried, or none", headerIndex, s)
			}
			opts.MinIndex = max(opts.MinIndex, idx)
		}
	}
	forward := strings.EqualFold(strings.TrimSpace(h.Get(headerInconsistent)), "forward-active-node")
	return opts, forward, nil
}

// readOpts returns the request's read options, asking the leader when the
// client would rather be forwarded than wait for this node to catch up.
func (rq *request) readOpts() *pb.ReadOptions {
	o := rq.read
	if rq.forward && o.GetMinIndex() > rq.h.cfg.Backend.AppliedIndex() {
		o.ForwardToLeader = true
	}
	return o
}

// setConsistencyHeaders says who answered and at which index: the read's
// ReadMeta, or a write's index.
func setConsistencyHeaders(h http.Header, rep *reply) {
	// The names are canonical already: set without canonicalizing again
	// (this runs for every read).
	if m := rep.meta; m != nil {
		h[headerApplied] = []string{strconv.FormatUint(m.GetAppliedIndex(), 10)}
		h[headerStale] = []string{strconv.FormatBool(m.GetStale())}
		if m.GetNodeId() != "" {
			h[headerNode] = []string{m.GetNodeId()}
		}
		if m.GetAppliedIndex() > 0 {
			h[headerIndex] = []string{encodeIndex(m.GetAppliedIndex())}
		}
	}
	if rep.index > 0 {
		h[headerIndex] = []string{encodeIndex(rep.index)}
		h[headerApplied] = []string{strconv.FormatUint(rep.index, 10)}
	}
}
