package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
)

// sysRoutes serves the seal, health, leader and mount endpoints of sys/.
func (h *Handler) sysRoutes() {
	h.handle("sys/health", map[op]endpointFunc{opGet: sysHealth})
	h.handle("sys/seal-status", map[op]endpointFunc{opGet: sysSealStatus})
	h.handle("sys/init", map[op]endpointFunc{opGet: sysInitStatus, opPut: sysInit})
	h.handle("sys/unseal", map[op]endpointFunc{opPut: sysUnseal})
	h.handle("sys/seal", map[op]endpointFunc{opPut: sysSeal})
	h.handle("sys/step-down", map[op]endpointFunc{opPut: sysStepDown})
	h.handle("sys/leader", map[op]endpointFunc{opGet: sysLeader})
	h.handle("sys/mounts", map[op]endpointFunc{opGet: sysMounts})
	h.handle("sys/internal/ui/mounts/*", map[op]endpointFunc{opGet: sysMountOf})
	h.handle("sys/metrics", map[op]endpointFunc{opGet: sysMetrics})
}

// sysMetrics is Vault's sys/metrics in Prometheus' format: this node's own
// metrics (a token with read on sys/metrics). The JSON form Vault also
// has is not served: ask for ?format=prometheus (or scrape the node's
// -metrics-addr, which needs no token).
func sysMetrics(ctx context.Context, rq *request) (*reply, error) {
	if f := rq.r.URL.Query().Get("format"); f != "prometheus" {
		return nil, badRequest("coffer serves metrics in Prometheus' format only: GET /v1/sys/metrics?format=prometheus")
	}
	out, err := rq.call(ctx, pb.Sys_Metrics_FullMethodName, &pb.MetricsRequest{})
	if err != nil {
		return nil, err
	}
	return &reply{text: out.(*pb.MetricsResponse).GetText(), contentType: "text/plain; version=0.0.4; charset=utf-8"}, nil
}

// healthStaleAfter: a follower that has not heard from a leader for this
// long says stale: true in sys/health (its stale reads may miss writes).
const healthStaleAfter = 3 * time.Second

// status is the node's Sys.Status (public: no token, also while sealed).
func (rq *request) status(ctx context.Context) (*pb.StatusResponse, error) {
	out, err := rq.call(ctx, pb.Sys_Status_FullMethodName, &pb.StatusRequest{})
	if err != nil {
		return nil, err
	}
	return out.(*pb.StatusResponse), nil
}

// healthCodes are sys/health's status codes, overridable by query.
type healthCodes struct {
	active, standby, sealed, uninit int
	standbyOK                       bool
}

func parseHealthCodes(rq *request) (healthCodes, error) {
	c := healthCodes{active: http.StatusOK, standby: http.StatusTooManyRequests, sealed: http.StatusServiceUnavailable, uninit: http.StatusNotImplemented}
	q := rq.r.URL.Query()
	for name, dst := range map[string]*int{"activecode": &c.active, "standbycode": &c.standby, "sealedcode": &c.sealed, "uninitcode": &c.uninit} {
		v := q.Get(name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			return c, badRequest("%s %q is not an HTTP status code: give one from 100 to 599", name, v)
		}
		*dst = n
	}
	for _, name := range []string{"standbyok", "perfstandbyok"} {
		if v := q.Get(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return c, badRequest("%s %q is not a boolean: give true or false", name, v)
			}
			c.standbyOK = c.standbyOK || b
		}
	}
	return c, nil
}

// sysHealth is Vault's health check: 200 for the leader, 429 for an
// unsealed follower (200 with standbyok=true), 503 sealed, 501 not
// initialized; with coffer's node_id, raft_state, applied_index and stale.
func sysHealth(ctx context.Context, rq *request) (*reply, error) {
	codes, err := parseHealthCodes(rq)
	if err != nil {
		return nil, err
	}
	st, err := rq.status(ctx)
	if err != nil {
		return nil, err
	}
	leader := st.GetRaftState() == "leader"
	standby := !leader
	stale := !leader && (st.GetLeaderId() == "" || st.GetLastContactMs() < 0 || time.Duration(st.GetLastContactMs())*time.Millisecond > healthStaleAfter)
	code := codes.active
	switch {
	case !st.GetSeal().GetInitialized():
		code = codes.uninit
	case st.GetSeal().GetSealed():
		code = codes.sealed
	case standby && !codes.standbyOK:
		code = codes.standby
	}
	return &reply{status: code, raw: map[string]any{
		"initialized":                  st.GetSeal().GetInitialized(),
		"sealed":                       st.GetSeal().GetSealed(),
		"standby":                      standby,
		"performance_standby":          false,
		"replication_performance_mode": "disabled",
		"replication_dr_mode":          "disabled",
		"server_time_utc":              time.Now().Unix(),
		"version":                      st.GetVersion(),
		"cluster_name":                 "coffer",
		"enterprise":                   false,
		"node_id":                      st.GetNodeId(),
		"raft_state":                   st.GetRaftState(),
		"leader_id":                    st.GetLeaderId(),
		"applied_index":                st.GetAppliedIndex(),
		"stale":                        stale,
	}}, nil
}

// sealStatus is Vault's seal-status body.
func sealStatus(st *pb.SealStatus, version string) map[string]any {
	typ := st.GetType()
	if typ == "" {
		typ = "shamir"
	}
	return map[string]any{
		"type":          typ,
		"initialized":   st.GetInitialized(),
		"sealed":        st.GetSealed(),
		"t":             st.GetThreshold(),
		"n":             st.GetShares(),
		"progress":      st.GetProgress(),
		"nonce":         "",
		"version":       version,
		"build_date":    "",
		"migration":     st.GetMigration(),
		"cluster_name":  "coffer",
		"recovery_seal": st.GetRecoverySeal(),
		"storage_type":  "raft",
	}
}

func sysSealStatus(ctx context.Context, rq *request) (*reply, error) {
	st, err := rq.status(ctx)
	if err != nil {
		return nil, err
	}
	return &reply{raw: sealStatus(st.GetSeal(), st.GetVersion())}, nil
}

func sysInitStatus(ctx context.Context, rq *request) (*reply, error) {
	st, err := rq.status(ctx)
	if err != nil {
		return nil, err
	}
	return &reply{raw: map[string]any{"initialized": st.GetSeal().GetInitialized()}}, nil
}

// sysInit initializes the cluster: the unseal key shares (hex and
// base64) and the root token, shown once.
func sysInit(ctx context.Context, rq *request) (*reply, error) {
	var body struct {
		SecretShares      uint32   `json:"secret_shares"`
		SecretThreshold   uint32   `json:"secret_threshold"`
		PGPKeys           []string `json:"pgp_keys"`
		RootTokenPGPKey   string   `json:"root_token_pgp_key"`
		RecoveryShares    uint32   `json:"recovery_shares"`
		RecoveryThreshold uint32   `json:"recovery_threshold"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if len(body.PGPKeys) > 0 || body.RootTokenPGPKey != "" {
		return nil, badRequest("coffer does not encrypt key shares or the root token with PGP keys: leave pgp_keys and root_token_pgp_key out, and hand each share to its holder over a secure channel")
	}
	// recovery_shares and recovery_threshold count on a cluster under the
	// static seal (the node that runs init decides), as in Vault.
	out, err := rq.call(ctx, pb.Sys_Init_FullMethodName, &pb.InitRequest{
		SecretShares: body.SecretShares, SecretThreshold: body.SecretThreshold,
		RecoveryShares: body.RecoveryShares, RecoveryThreshold: body.RecoveryThreshold,
	})
	if err != nil {
		return nil, err
	}
	resp := out.(*pb.InitResponse)
	hexKeys, b64Keys := encodeShares(resp.GetKeys())
	recHex, recB64 := encodeShares(resp.GetRecoveryKeys())
	return &reply{raw: map[string]any{
		"keys": hexKeys, "keys_base64": b64Keys,
		"recovery_keys": recHex, "recovery_keys_base64": recB64,
		"root_token": resp.GetRootToken(),
	}}, nil
}

// encodeShares gives shares in hex and in base64, as Vault answers them.
func encodeShares(shares [][]byte) (hexKeys, b64Keys []string) {
	hexKeys, b64Keys = make([]string, 0, len(shares)), make([]string, 0, len(shares))
	for _, k := range shares {
		hexKeys = append(hexKeys, hex.EncodeToString(k))
		b64Keys = append(b64Keys, base64.StdEncoding.EncodeToString(k))
	}
	return hexKeys, b64Keys
}

// decodeShare reads an unseal key share as Vault takes it: hex, or
// base64.
func decodeShare(s string) ([]byte, bool) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) > 0 {
		return b, true
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) > 0 {
		return b, true
	}
	return nil, false
}

func sysUnseal(ctx context.Context, rq *request) (*reply, error) {
	var body struct {
		Key     string `json:"key"`
		Reset   bool   `json:"reset"`
		Migrate bool   `json:"migrate"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if body.Migrate && body.Reset {
		return nil, badRequest("'reset' and 'migrate' exclude each other")
	}
	req := &pb.UnsealRequest{Reset_: body.Reset, Migrate: body.Migrate}
	if !body.Reset {
		if body.Key == "" {
			return nil, badRequest("'key' must be specified in request body as JSON, or 'reset' set to true")
		}
		k, ok := decodeShare(body.Key)
		if !ok {
			return nil, badRequest("'key' must be a valid hex or base64 string")
		}
		req.Key = k
	}
	out, err := rq.call(ctx, pb.Sys_Unseal_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	return &reply{raw: sealStatus(out.(*pb.SealStatus), rq.h.cfg.Version)}, nil
}

func sysSeal(ctx context.Context, rq *request) (*reply, error) {
	if _, err := rq.call(ctx, pb.Sys_Seal_FullMethodName, &pb.SealRequest{}); err != nil {
		return nil, err
	}
	return noContent(), nil
}

func sysStepDown(ctx context.Context, rq *request) (*reply, error) {
	if _, err := rq.call(ctx, pb.Operator_StepDown_FullMethodName, &pb.StepDownRequest{}); err != nil {
		return nil, err
	}
	return noContent(), nil
}

// sysLeader is Vault's sys/leader: whether this node leads and where the
// leader is.
func sysLeader(ctx context.Context, rq *request) (*reply, error) {
	st, err := rq.status(ctx)
	if err != nil {
		return nil, err
	}
	self := st.GetRaftState() == "leader"
	addr := st.GetLeaderHttpAddress()
	if self {
		addr = rq.h.cfg.URL
	}
	return &reply{raw: map[string]any{
		"ha_enabled":             true,
		"is_self":                self,
		"active_time":            "0001-01-01T00:00:00Z",
		"leader_address":         addr,
		"leader_cluster_address": st.GetLeaderAddress(),
		"performance_standby":    false,
		"raft_committed_index":   st.GetCommitIndex(),
		"raft_applied_index":     st.GetAppliedIndex(),
		"leader_id":              st.GetLeaderId(),
	}}, nil
}

// mountInfo is a mount as sys/mounts shows it.
func mountInfo(m *pb.Mount) map[string]any {
	var options map[string]string
	if m.GetVersion() != "" {
		options = map[string]string{"version": m.GetVersion()}
	}
	return map[string]any{
		"path":                    m.GetPath(),
		"type":                    m.GetType(),
		"description":             m.GetDescription(),
		"options":                 options,
		"accessor":                m.GetType() + "_coffer",
		"local":                   false,
		"seal_wrap":               false,
		"external_entropy_access": false,
		"config":                  map[string]any{"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false},
	}
}

// sysMounts lists the secret engines (the auth methods are sys/auth's).
func sysMounts(ctx context.Context, rq *request) (*reply, error) {
	out, err := rq.call(ctx, pb.Sys_Mounts_FullMethodName, &pb.MountsRequest{})
	if err != nil {
		return nil, err
	}
	data := map[string]any{}
	for _, m := range out.(*pb.MountsResponse).GetMounts() {
		if !m.GetAuth() {
			data[m.GetPath()] = mountInfo(m)
		}
	}
	// Vault answers the mounts both at the top level and under data.
	raw := map[string]any{"request_id": rq.id, "lease_id": "", "renewable": false, "lease_duration": 0, "data": data, "wrap_info": nil, "warnings": nil, "auth": nil}
	for k, v := range data {
		raw[k] = v
	}
	return &reply{raw: raw}, nil
}

// sysMountOf answers the vault CLI's preflight: the mount a path is under
// and its KV version.
func sysMountOf(ctx context.Context, rq *request) (*reply, error) {
	path := strings.TrimSuffix(rq.rest, "/")
	if path == "" {
		return nil, badRequest("name a path: sys/internal/ui/mounts/secret/app")
	}
	out, err := rq.call(ctx, pb.Sys_Mounts_FullMethodName, &pb.MountsRequest{Path: path})
	if err != nil {
		return nil, err
	}
	ms := out.(*pb.MountsResponse).GetMounts()
	if len(ms) == 0 {
		return nil, notFoundEmpty()
	}
	return &reply{data: mountInfo(ms[0])}, nil
}
