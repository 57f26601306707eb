package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
)

// kvMount is the KV version 2 mount the HTTP API serves.
const kvMount = "secret/"

// kvRoutes serves KV version 2 at Vault's paths under secret/.
func (h *Handler) kvRoutes() {
	h.handle(kvMount+"data/*", map[op]endpointFunc{opGet: kvGet, opPut: kvPut, opDelete: kvDeleteLatest})
	h.handle(kvMount+"metadata/*", map[op]endpointFunc{opGet: kvReadMetadata, opPut: kvWriteMetadata, opDelete: kvDeleteMetadata, opList: kvList})
	h.handle(kvMount+"metadata", map[op]endpointFunc{opList: kvList})
	h.handle(kvMount+"delete/*", map[op]endpointFunc{opPut: kvVersions(pb.KV_Delete_FullMethodName)})
	h.handle(kvMount+"undelete/*", map[op]endpointFunc{opPut: kvVersions(pb.KV_Undelete_FullMethodName)})
	h.handle(kvMount+"destroy/*", map[op]endpointFunc{opPut: kvVersions(pb.KV_Destroy_FullMethodName)})
}

// secretPath is the coffer path of the secret the request names.
func (rq *request) secretPath() (string, error) {
	if rq.rest == "" || strings.HasSuffix(rq.rest, "/") {
		return "", badRequest("name a secret under %s, e.g. %s%s", strings.TrimSuffix(rq.path, rq.rest), strings.TrimSuffix(rq.path, rq.rest), "app/db")
	}
	return kvMount + rq.rest, nil
}

// kvTime is Vault's form of a KV time: RFC 3339 in UTC, "" for none.
func kvTime(unixNano int64) string {
	if unixNano == 0 {
		return ""
	}
	return time.Unix(0, unixNano).UTC().Format(time.RFC3339Nano)
}

// versionMeta is a version's metadata as Vault's KV v2 shows it.
func versionMeta(m *pb.VersionMetadata) map[string]any {
	return map[string]any{
		"created_time":    kvTime(m.GetCreatedTimeUnixNano()),
		"custom_metadata": nil,
		"deletion_time":   kvTime(m.GetDeletionTimeUnixNano()),
		"destroyed":       m.GetDestroyed(),
		"version":         m.GetVersion(),
	}
}

func kvGet(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	req := &pb.GetRequest{Path: path, Read: rq.readOpts()}
	if v := rq.r.URL.Query().Get("version"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, badRequest("version %q is not a number: give a version such as 3, or 0 for the current one", v)
		}
		req.Version = n
	}
	out, err := rq.call(ctx, pb.KV_Get_FullMethodName, req)
	if err != nil {
		if isReason(err, pb.ErrorReason_NOT_FOUND) {
			return nil, notFoundEmpty()
		}
		return nil, err
	}
	resp := out.(*pb.GetResponse)
	data := make(map[string]any, len(resp.GetData()))
	for k, v := range resp.GetData() {
		data[k] = v
	}
	return &reply{data: map[string]any{"data": data, "metadata": versionMeta(resp.GetMetadata())}, meta: resp.GetReadMeta(), mountType: "kv"}, nil
}

// kvWrite is the body of a KV v2 write.
type kvWrite struct {
	Data    map[string]any `json:"data"`
	Options struct {
		CAS *json.Number `json:"cas"`
	} `json:"options"`
}

// stringData converts a secret's JSON values to coffer's string values:
// strings as they are, numbers and booleans in their JSON form. Objects,
// arrays and null are refused: coffer stores a map of strings.
func stringData(in map[string]any) (map[string]string, error) {
	out := make(map[string]string, len(in))
	for k, v := range in {
		switch t := v.(type) {
		case string:
			out[k] = t
		case json.Number:
			out[k] = t.String()
		case bool:
			out[k] = strconv.FormatBool(t)
		default:
			return nil, badRequest("data.%s: coffer stores string values (numbers and booleans as their text), not %s: encode it as a string", k, jsonKind(v))
		}
	}
	return out, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

func kvPut(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	var body kvWrite
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if body.Data == nil {
		return nil, badRequest("no data provided: send {\"data\": {\"key\": \"value\"}}")
	}
	data, err := stringData(body.Data)
	if err != nil {
		return nil, err
	}
	req := &pb.PutRequest{Path: path, Data: data, RequestId: rq.r.Header.Get(headerRequestID)}
	if body.Options.CAS != nil {
		n, err := strconv.ParseUint(body.Options.CAS.String(), 10, 64)
		if err != nil {
			return nil, badRequest("options.cas %q is not a version: give 0 (only if the secret does not exist) or the current version", body.Options.CAS.String())
		}
		req.Cas = &n
	}
	out, err := rq.call(ctx, pb.KV_Put_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	resp := out.(*pb.PutResponse)
	return &reply{
		data:      versionMeta(&pb.VersionMetadata{Version: resp.GetVersion(), CreatedTimeUnixNano: resp.GetCreatedTimeUnixNano()}),
		index:     resp.GetIndex(),
		mountType: "kv",
	}, nil
}

// headerRequestID lets a client make a write idempotent across its own
// retries (coffer's request_id); without it each request is a new write.
const headerRequestID = "X-Coffer-Request-Id"

func kvDeleteLatest(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.KV_Delete_FullMethodName, &pb.VersionsRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID)})
	if err != nil {
		return nil, err
	}
	return &reply{status: http.StatusNoContent, index: out.(*pb.WriteResponse).GetIndex()}, nil
}

// kvVersions serves secret/delete|undelete|destroy/PATH {versions: [...]}.
func kvVersions(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		path, err := rq.secretPath()
		if err != nil {
			return nil, err
		}
		var body struct {
			Versions []uint64 `json:"versions"`
		}
		if err := rq.decode(&body); err != nil {
			return nil, err
		}
		if len(body.Versions) == 0 {
			return nil, badRequest("no version number provided: send {\"versions\": [1, 2]}")
		}
		out, err := rq.call(ctx, method, &pb.VersionsRequest{Path: path, Versions: body.Versions, RequestId: rq.r.Header.Get(headerRequestID)})
		if err != nil {
			return nil, err
		}
		return &reply{status: http.StatusNoContent, index: out.(*pb.WriteResponse).GetIndex()}, nil
	}
}

func kvReadMetadata(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.KV_ReadMetadata_FullMethodName, &pb.ReadMetadataRequest{Path: path, Read: rq.readOpts()})
	if err != nil {
		if isReason(err, pb.ErrorReason_NOT_FOUND) {
			return nil, notFoundEmpty()
		}
		return nil, err
	}
	m := out.(*pb.ReadMetadataResponse)
	versions := make(map[string]any, len(m.GetVersions()))
	for _, v := range m.GetVersions() {
		versions[strconv.FormatUint(v.GetVersion(), 10)] = map[string]any{
			"created_time":  kvTime(v.GetCreatedTimeUnixNano()),
			"deletion_time": kvTime(v.GetDeletionTimeUnixNano()),
			"destroyed":     v.GetDestroyed(),
		}
	}
	return &reply{data: map[string]any{
		"cas_required":         m.GetCasRequired(),
		"created_time":         kvTime(m.GetCreatedTimeUnixNano()),
		"current_version":      m.GetCurrentVersion(),
		"custom_metadata":      nil,
		"delete_version_after": "0s",
		"max_versions":         m.GetMaxVersions(),
		"oldest_version":       m.GetOldestVersion(),
		"updated_time":         kvTime(m.GetUpdatedTimeUnixNano()),
		"versions":             versions,
	}, meta: m.GetReadMeta(), mountType: "kv"}, nil
}

// kvMetadataWrite is the body of a metadata write.
type kvMetadataWrite struct {
	MaxVersions *uint32 `json:"max_versions"`
	CASRequired *bool   `json:"cas_required"`
}

func kvWriteMetadata(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	var body kvMetadataWrite
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	req := &pb.WriteMetadataRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID)}
	if body.MaxVersions != nil {
		req.MaxVersions = *body.MaxVersions
	}
	if body.CASRequired != nil {
		req.CasRequired = *body.CASRequired
	}
	out, err := rq.call(ctx, pb.KV_WriteMetadata_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	return &reply{status: http.StatusNoContent, index: out.(*pb.WriteResponse).GetIndex()}, nil
}

func kvDeleteMetadata(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.KV_DeleteMetadata_FullMethodName, &pb.DeleteMetadataRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID)})
	if err != nil {
		return nil, err
	}
	return &reply{status: http.StatusNoContent, index: out.(*pb.WriteResponse).GetIndex()}, nil
}

// maxListKeys bounds the keys one LIST answers when the client asks for
// no page: past it, the client pages with ?limit= and ?after=.
const maxListKeys = 100_000

// kvList lists the keys under secret/metadata/PREFIX/: every key, page
// by page, or one page with ?limit= (and ?after=, the key to start after;
// the answer's next_after continues).
func kvList(ctx context.Context, rq *request) (*reply, error) {
	prefix := kvMount + rq.rest
	if rq.rest != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	q := rq.r.URL.Query()
	var limit uint64
	if v := q.Get("limit"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return nil, badRequest("limit %q is not a page size: give a number from 1 to 10000", v)
		}
		limit = n
	}
	after := q.Get("after")
	var keys []string
	var meta *pb.ReadMeta
	read := rq.readOpts()
	for {
		page := uint32(10_000)
		if limit > 0 {
			page = uint32(limit)
		}
		out, err := rq.call(ctx, pb.KV_List_FullMethodName, &pb.ListRequest{Path: prefix, Read: read, Limit: page, After: after})
		if err != nil {
			return nil, err
		}
		resp := out.(*pb.ListResponse)
		keys = append(keys, resp.GetKeys()...)
		if meta == nil {
			meta = resp.GetReadMeta()
			// The next pages read at least what the first one saw.
			read = &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_STALE, MinIndex: meta.GetAppliedIndex(), ForwardToLeader: read.GetForwardToLeader()}
		}
		after = resp.GetNextAfter()
		if limit > 0 {
			if len(keys) == 0 {
				return nil, notFoundEmpty()
			}
			return &reply{data: map[string]any{"keys": keys, "next_after": after}, meta: meta, mountType: "kv"}, nil
		}
		if after == "" {
			break
		}
		if len(keys) >= maxListKeys {
			return nil, badRequest("more than %d keys under %s: list them page by page with ?limit=10000 and ?after=", maxListKeys, prefix)
		}
	}
	if len(keys) == 0 {
		return nil, notFoundEmpty()
	}
	sort.Strings(keys)
	return &reply{data: map[string]any{"keys": keys}, meta: meta, mountType: "kv"}, nil
}
