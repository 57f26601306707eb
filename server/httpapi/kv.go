package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
)

// kvMount is the KV version 2 mount the HTTP API serves.
const kvMount = "secret/"

// kvRoutes serves KV version 2 at Vault's paths under secret/.
func (h *Handler) kvRoutes() {
	h.handle(kvMount+"data/*", map[op]endpointFunc{opGet: kvGet, opPut: kvPut, opPatch: kvPatch, opDelete: kvDeleteLatest})
	h.handle(kvMount+"subkeys/*", map[op]endpointFunc{opGet: kvSubkeys})
	h.handle(kvMount+"metadata/*", map[op]endpointFunc{opGet: kvReadMetadata, opPut: kvWriteMetadata, opPatch: kvPatchMetadata, opDelete: kvDeleteMetadata, opList: kvList})
	h.handle(kvMount+"metadata", map[op]endpointFunc{opList: kvList})
	h.handle(kvMount+"config", map[op]endpointFunc{opGet: kvReadConfig, opPut: kvWriteConfig})
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

// versionMeta is a version's metadata as Vault's KV v2 shows it, with the
// secret's custom metadata.
func versionMeta(m *pb.VersionMetadata, custom map[string]string) kvVersionMeta {
	if len(custom) == 0 {
		custom = nil // null, as Vault shows none
	}
	return kvVersionMeta{
		CreatedTime:    kvTime(m.GetCreatedTimeUnixNano()),
		CustomMetadata: custom,
		DeletionTime:   kvTime(m.GetDeletionTimeUnixNano()),
		Destroyed:      m.GetDestroyed(),
		Version:        m.GetVersion(),
	}
}

// kvVersionMeta is a version's metadata in Vault's KV v2 answers (a
// struct, not a map: the read path encodes it for every request).
type kvVersionMeta struct {
	CreatedTime    string            `json:"created_time"`
	CustomMetadata map[string]string `json:"custom_metadata"`
	DeletionTime   string            `json:"deletion_time"`
	Destroyed      bool              `json:"destroyed"`
	Version        uint64            `json:"version"`
}

// kvRead is the data of a KV v2 read: null data for a deleted or
// destroyed version.
type kvRead struct {
	Data     map[string]string `json:"data"`
	Metadata kvVersionMeta     `json:"metadata"`
}

// customMeta is custom metadata as Vault shows it: null when there is
// none.
func customMeta(m map[string]string) any {
	if len(m) == 0 {
		return nil
	}
	return m
}

// getVersion reads the version ?version= names (the current one by
// default) with the metadata of a deleted or destroyed one.
func getVersion(ctx context.Context, rq *request, subkeys bool) (*pb.GetResponse, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	req := &pb.GetRequest{Path: path, Read: rq.readOpts(), Subkeys: subkeys, AllowDeleted: true}
	if v := rq.query("version"); v != "" {
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
	return out.(*pb.GetResponse), nil
}

// kvGet reads a version. A deleted or destroyed one is Vault's 404 with
// the version's metadata and null data.
func kvGet(ctx context.Context, rq *request) (*reply, error) {
	resp, err := getVersion(ctx, rq, false)
	if err != nil {
		return nil, err
	}
	meta := versionMeta(resp.GetMetadata(), resp.GetCustomMetadata())
	if resp.GetDeleted() {
		return &reply{status: http.StatusNotFound, data: kvRead{Metadata: meta}, meta: resp.GetReadMeta(), mountType: "kv"}, nil
	}
	data := resp.GetData()
	if data == nil {
		data = map[string]string{} // a version with no keys is {}, not null
	}
	return &reply{data: kvRead{Data: data, Metadata: meta}, meta: resp.GetReadMeta(), mountType: "kv"}, nil
}

// kvSubkeys answers secret/subkeys/PATH: the version's keys, each with a
// null value (coffer's values are strings, leaves at every ?depth=).
func kvSubkeys(ctx context.Context, rq *request) (*reply, error) {
	if v := rq.r.URL.Query().Get("depth"); v != "" {
		if _, err := strconv.ParseUint(v, 10, 32); err != nil {
			return nil, badRequest("depth %q is not a number: give 0 (no limit) or a depth such as 1", v)
		}
	}
	resp, err := getVersion(ctx, rq, true)
	if err != nil {
		return nil, err
	}
	meta := versionMeta(resp.GetMetadata(), resp.GetCustomMetadata())
	if resp.GetDeleted() {
		return &reply{status: http.StatusNotFound, data: map[string]any{"subkeys": nil, "metadata": meta}, meta: resp.GetReadMeta(), mountType: "kv"}, nil
	}
	keys := make(map[string]any, len(resp.GetSubkeys()))
	for _, k := range resp.GetSubkeys() {
		keys[k] = nil
	}
	return &reply{data: map[string]any{"subkeys": keys, "metadata": meta}, meta: resp.GetReadMeta(), mountType: "kv"}, nil
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
	if req.Cas, err = casOption(body.Options.CAS); err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.KV_Put_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	return writtenVersion(out.(*pb.PutResponse)), nil
}

// writtenVersion is Vault's answer to a write of a version: its metadata.
func writtenVersion(resp *pb.PutResponse) *reply {
	return &reply{
		data: versionMeta(&pb.VersionMetadata{
			Version:              resp.GetVersion(),
			CreatedTimeUnixNano:  resp.GetCreatedTimeUnixNano(),
			DeletionTimeUnixNano: resp.GetDeletionTimeUnixNano(),
		}, resp.GetCustomMetadata()),
		index:     resp.GetIndex(),
		mountType: "kv",
	}
}

// mergePatchType is the content type Vault requires of a PATCH.
const mergePatchType = "application/merge-patch+json"

// checkMergePatch refuses a PATCH that is not a JSON merge patch, as
// Vault does (415).
func (rq *request) checkMergePatch() error {
	mt, _, err := mime.ParseMediaType(rq.r.Header.Get("Content-Type"))
	if err != nil || mt != mergePatchType {
		return &httpError{status: http.StatusUnsupportedMediaType, msgs: []string{fmt.Sprintf("PATCH requires Content-Type %s, not %q", mergePatchType, rq.r.Header.Get("Content-Type"))}}
	}
	return nil
}

// kvPatch serves PATCH secret/data/PATH: a JSON merge patch of the current
// version's data ({"data": {...}, "options": {"cas": N}}) written as a
// new version; a null value removes its key.
func kvPatch(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	if err := rq.checkMergePatch(); err != nil {
		return nil, err
	}
	var body kvWrite
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if body.Data == nil {
		return nil, badRequest("no data provided: send {\"data\": {\"key\": \"value\", \"removed\": null}}")
	}
	req := &pb.PatchRequest{Path: path, Data: make(map[string]string, len(body.Data)), RequestId: rq.r.Header.Get(headerRequestID)}
	for k, v := range body.Data {
		if v == nil {
			req.Remove = append(req.Remove, k)
			delete(body.Data, k)
		}
	}
	sort.Strings(req.Remove)
	if req.Data, err = stringData(body.Data); err != nil {
		return nil, err
	}
	if req.Cas, err = casOption(body.Options.CAS); err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.KV_Patch_FullMethodName, req)
	if err != nil {
		if isReason(err, pb.ErrorReason_NOT_FOUND) {
			return nil, notFoundEmpty()
		}
		return nil, err
	}
	return writtenVersion(out.(*pb.PutResponse)), nil
}

// casOption is options.cas of a write, nil when absent.
func casOption(n *json.Number) (*uint64, error) {
	if n == nil {
		return nil, nil
	}
	v, err := strconv.ParseUint(n.String(), 10, 64)
	if err != nil {
		return nil, badRequest("options.cas %q is not a version: give 0 (only if the secret does not exist) or the current version", n.String())
	}
	return &v, nil
}

// headerRequestID lets a client make a write idempotent across its own
// retries (coffer's request_id); without it each request is a new write.
const headerRequestID = "X-Coffer-Request-Id"

func kvDeleteLatest(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	return written(rq.call(ctx, pb.KV_Delete_FullMethodName, &pb.VersionsRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID)}))
}

// kvVersions serves secret/delete|undelete|destroy/PATH {versions: [...]}.
func kvVersions(method string) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		path, err := rq.secretPath()
		if err != nil {
			return nil, err
		}
		var body struct {
			Versions any `json:"versions"`
		}
		if err := rq.decode(&body); err != nil {
			return nil, err
		}
		versions, err := versionList(body.Versions)
		if err != nil {
			return nil, err
		}
		if len(versions) == 0 {
			return nil, badRequest("no version number provided: send {\"versions\": [1, 2]}")
		}
		return written(rq.call(ctx, method, &pb.VersionsRequest{Path: path, Versions: versions, RequestId: rq.r.Header.Get(headerRequestID)}))
	}
}

// versionList reads versions as Vault takes them: an array of numbers or
// of numeric strings (vault/api sends strings), or one string "1,2".
func versionList(v any) ([]uint64, error) {
	var items []any
	switch t := v.(type) {
	case nil:
		return nil, nil
	case []any:
		items = t
	case string:
		for _, s := range strings.Split(t, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
	case json.Number:
		items = []any{t}
	default:
		return nil, badRequest("versions must be a list of version numbers such as [1, 2], not %s", jsonText(v))
	}
	out := make([]uint64, 0, len(items))
	for _, it := range items {
		var s string
		switch t := it.(type) {
		case json.Number:
			s = t.String()
		case string:
			s = t
		default:
			return nil, badRequest("versions must be a list of version numbers such as [1, 2], not a list of %s", jsonText(it))
		}
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, badRequest("version %q is not a number: give versions such as [1, 2]", s)
		}
		out = append(out, n)
	}
	return out, nil
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
		"custom_metadata":      customMeta(m.GetCustomMetadata()),
		"delete_version_after": time.Duration(m.GetDeleteVersionAfterNanos()).String(),
		"max_versions":         m.GetMaxVersions(),
		"oldest_version":       m.GetOldestVersion(),
		"updated_time":         kvTime(m.GetUpdatedTimeUnixNano()),
		"versions":             versions,
	}, meta: m.GetReadMeta(), mountType: "kv"}, nil
}

// metadataBody is the body of a metadata write or patch: the settings it
// names, as JSON values (a null custom_metadata clears it).
type metadataBody map[string]any

func (rq *request) metadataBody() (metadataBody, error) {
	var body metadataBody
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	for k := range body {
		switch k {
		case "max_versions", "cas_required", "custom_metadata", "delete_version_after":
		default:
			return nil, badRequest("%q is not a setting of a secret's metadata: give max_versions, cas_required, custom_metadata or delete_version_after", k)
		}
	}
	return body, nil
}

func (b metadataBody) maxVersions() (*uint32, error) {
	v, ok := b["max_versions"]
	if !ok {
		return nil, nil
	}
	n, isNum := v.(json.Number)
	var u uint64
	var err error
	if isNum {
		u, err = strconv.ParseUint(n.String(), 10, 32)
	}
	if !isNum || err != nil {
		return nil, badRequest("max_versions must be a whole number (0: the mount's default), not %s", jsonText(v))
	}
	m := uint32(u)
	return &m, nil
}

func (b metadataBody) casRequired() (*bool, error) {
	v, ok := b["cas_required"]
	if !ok {
		return nil, nil
	}
	t, isBool := v.(bool)
	if !isBool {
		return nil, badRequest("cas_required must be true or false, not %s", jsonText(v))
	}
	return &t, nil
}

// deleteVersionAfter reads delete_version_after as Vault takes it: a
// duration ("1h30m") or a number of seconds.
func (b metadataBody) deleteVersionAfter() (*int64, error) {
	v, ok := b["delete_version_after"]
	if !ok {
		return nil, nil
	}
	var d time.Duration
	switch t := v.(type) {
	case json.Number:
		n, err := strconv.ParseInt(t.String(), 10, 64)
		if err != nil || n > int64(time.Duration(math.MaxInt64)/time.Second) || n < 0 {
			return nil, badRequest("delete_version_after %s is not a number of seconds: give a duration such as \"720h\", or 0 for never", t)
		}
		d = time.Duration(n) * time.Second
	case string:
		var err error
		if d, err = parseDuration(t); err != nil {
			return nil, badRequest("delete_version_after %q is not a duration: give one such as \"720h\" or \"30m\", or \"0s\" for never", t)
		}
	default:
		return nil, badRequest("delete_version_after must be a duration such as \"720h\", not %s", jsonText(v))
	}
	n := int64(d)
	return &n, nil
}

// parseDuration is Go's duration syntax, plus a bare number of seconds
// and "" for 0, as Vault takes them.
func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 && n <= int64(time.Duration(math.MaxInt64)/time.Second) {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

// customMetadata reads custom_metadata: an object of strings; a null
// value (in a patch) removes its key. present is false when the body
// does not name it; a null custom_metadata is present and empty.
func (b metadataBody) customMetadata() (set map[string]string, remove []string, present bool, err error) {
	v, ok := b["custom_metadata"]
	if !ok {
		return nil, nil, false, nil
	}
	if v == nil {
		return nil, nil, true, nil
	}
	obj, isObj := v.(map[string]any)
	if !isObj {
		return nil, nil, true, badRequest("custom_metadata must be an object of strings, not %s", jsonText(v))
	}
	set = make(map[string]string, len(obj))
	for k, e := range obj {
		switch t := e.(type) {
		case string:
			set[k] = t
		case nil:
			remove = append(remove, k)
		default:
			return nil, nil, true, badRequest("custom_metadata.%s must be a string, not %s", k, jsonKind(e))
		}
	}
	sort.Strings(remove)
	return set, remove, true, nil
}

// jsonText names a JSON value's kind for an error, without its content
// when it is text.
func jsonText(v any) string {
	switch t := v.(type) {
	case json.Number:
		return t.String()
	case bool:
		return strconv.FormatBool(t)
	case string:
		return "a string"
	}
	return jsonKind(v)
}

// kvWriteMetadata serves POST secret/metadata/PATH: the settings the body
// names are set (a null or absent custom_metadata in the body clears it),
// the others keep their values, as in Vault.
func kvWriteMetadata(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	body, err := rq.metadataBody()
	if err != nil {
		return nil, err
	}
	req := &pb.WriteMetadataRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID), OnlyFields: true}
	if mv, err := body.maxVersions(); err != nil {
		return nil, err
	} else if mv != nil {
		req.MaxVersions, req.Fields = *mv, append(req.Fields, "max_versions")
	}
	if cr, err := body.casRequired(); err != nil {
		return nil, err
	} else if cr != nil {
		req.CasRequired, req.Fields = *cr, append(req.Fields, "cas_required")
	}
	if dva, err := body.deleteVersionAfter(); err != nil {
		return nil, err
	} else if dva != nil {
		req.DeleteVersionAfterNanos, req.Fields = *dva, append(req.Fields, "delete_version_after")
	}
	set, remove, present, err := body.customMetadata()
	if err != nil {
		return nil, err
	}
	if len(remove) > 0 {
		return nil, badRequest("custom_metadata.%s is null: a metadata write sets every key; leave the key out (or PATCH with null to remove it)", remove[0])
	}
	if present {
		req.CustomMetadata, req.Fields = set, append(req.Fields, "custom_metadata")
	}
	return written(rq.call(ctx, pb.KV_WriteMetadata_FullMethodName, req))
}

// kvPatchMetadata serves PATCH secret/metadata/PATH: a JSON merge patch of
// the settings of an existing secret (404 when there is none).
func kvPatchMetadata(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	if err := rq.checkMergePatch(); err != nil {
		return nil, err
	}
	body, err := rq.metadataBody()
	if err != nil {
		return nil, err
	}
	req := &pb.PatchMetadataRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID)}
	if req.MaxVersions, err = body.maxVersions(); err != nil {
		return nil, err
	}
	if req.CasRequired, err = body.casRequired(); err != nil {
		return nil, err
	}
	if req.DeleteVersionAfterNanos, err = body.deleteVersionAfter(); err != nil {
		return nil, err
	}
	set, remove, present, err := body.customMetadata()
	if err != nil {
		return nil, err
	}
	req.CustomMetadata, req.RemoveCustomMetadata = set, remove
	req.ClearCustomMetadata = present && set == nil
	out, err := rq.call(ctx, pb.KV_PatchMetadata_FullMethodName, req)
	if err != nil {
		if isReason(err, pb.ErrorReason_NOT_FOUND) {
			return nil, notFoundEmpty()
		}
		return nil, err
	}
	return &reply{status: http.StatusNoContent, index: out.(*pb.WriteResponse).GetIndex()}, nil
}

// kvReadConfig serves GET secret/config: the mount's settings.
func kvReadConfig(ctx context.Context, rq *request) (*reply, error) {
	out, err := rq.call(ctx, pb.KV_ReadConfig_FullMethodName, &pb.ReadConfigRequest{Mount: kvMount, Read: rq.readOpts()})
	if err != nil {
		return nil, err
	}
	cfg := out.(*pb.KVConfig)
	return &reply{data: map[string]any{
		"cas_required":         cfg.GetCasRequired(),
		"delete_version_after": time.Duration(cfg.GetDeleteVersionAfterNanos()).String(),
		"max_versions":         cfg.GetMaxVersions(),
	}, meta: cfg.GetReadMeta(), mountType: "kv"}, nil
}

// kvWriteConfig serves POST secret/config: the settings the body names
// are set, the others keep their values.
func kvWriteConfig(ctx context.Context, rq *request) (*reply, error) {
	body, err := rq.metadataBody()
	if err != nil {
		return nil, err
	}
	if _, ok := body["custom_metadata"]; ok {
		return nil, badRequest("custom_metadata is a setting of a secret, not of the mount: set it at secret/metadata/PATH")
	}
	req := &pb.WriteConfigRequest{Mount: kvMount, RequestId: rq.r.Header.Get(headerRequestID)}
	if req.MaxVersions, err = body.maxVersions(); err != nil {
		return nil, err
	}
	if req.CasRequired, err = body.casRequired(); err != nil {
		return nil, err
	}
	if req.DeleteVersionAfterNanos, err = body.deleteVersionAfter(); err != nil {
		return nil, err
	}
	return written(rq.call(ctx, pb.KV_WriteConfig_FullMethodName, req))
}

func kvDeleteMetadata(ctx context.Context, rq *request) (*reply, error) {
	path, err := rq.secretPath()
	if err != nil {
		return nil, err
	}
	return written(rq.call(ctx, pb.KV_DeleteMetadata_FullMethodName, &pb.DeleteMetadataRequest{Path: path, RequestId: rq.r.Header.Get(headerRequestID)}))
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
		// The keys gathered take the node's budget as a body does: many
		// concurrent lists of large folders are refused, not held.
		var size int64
		for _, k := range resp.GetKeys() {
			size += int64(len(k)) + 16
		}
		if size > 0 {
			release, err := rq.h.cfg.Backend.Reserve(ctx, size)
			if err != nil {
				return nil, err
			}
			rq.releases = append(rq.releases, release)
		}
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

// written answers a KV write that returns nothing but its index: 204 with
// X-Vault-Index.
func written(out proto.Message, err error) (*reply, error) {
	if err != nil {
		return nil, err
	}
	resp, ok := out.(*pb.WriteResponse)
	if !ok {
		return nil, fmt.Errorf("httpapi: a KV write answered %T", out)
	}
	return &reply{status: http.StatusNoContent, index: resp.GetIndex()}, nil
}
