package server

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// kvServer is the KV service: secrets of the KV mounts. It depends only on
// the narrow interfaces below, so its handlers run in tests over a real
// state machine without Raft.
type kvServer struct {
	pb.UnimplementedKVServer
	nodeID string
	store  kvStore
	props  proposer
	keys   barrier
	reads  reader
	leader leaderCheck
	// paths serialises this leader's writes to each path (see Put).
	paths pathLocks
	// stopCtx ends when the node stops (ends watches).
	stopCtx context.Context
	// feed is the node's change feed for watches (see watchFeed).
	feedOnce sync.Once
	feed     *watchFeed
}

// kvStore reads the replicated KV state.
type kvStore interface {
	Get(path string, version uint64) (*fsm.Version, error)
	VersionInfo(path string, version uint64) (*fsm.Version, error)
	Metadata(path string) (*fsm.Metadata, error)
	CurrentVersion(path string) (uint64, error)
	ListPage(prefix, after string, limit int) ([]string, bool, error)
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
	ChangesSince(from uint64, prefix string, max int) ([]fsm.Change, error)
	KVConfig(mount string) (*fsm.KVConfig, error)
}

// proposer proposes a command through Raft and returns the state
// machine's result; a deterministic failure (CAS mismatch, not found)
// comes back as the error, with the result still set.
type proposer interface {
	propose(ctx context.Context, cmd *fsmpb.Command) (*fsm.Result, error)
}

// barrier seals a secret's value for its path and version, and opens it
// again.
type barrier interface {
	Sealed() bool
	Encrypt(path string, version uint64, plaintext []byte) ([]byte, error)
	Decrypt(path string, version uint64, ciphertext []byte) ([]byte, error)
}

// reader admits a read at the consistency it asks for and describes the
// answer.
type reader interface {
	begin(ctx context.Context, opts *pb.ReadOptions) (*pb.ReadMeta, error)
	finish(meta *pb.ReadMeta) *pb.ReadMeta
}

// leaderCheck says whether this node leads, and why not.
type leaderCheck interface {
	IsLeader() bool
	notLeaderError() error
}

// beginWrite admits a write on this node: unsealed and leader.
func (k *kvServer) beginWrite() error {
	if k.keys.Sealed() {
		return seal.ErrSealed
	}
	if !k.leader.IsLeader() {
		return k.leader.notLeaderError()
	}
	return nil
}

// Put encrypts the data for its path and proposes a new version.
func (k *kvServer) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateData(req.Data); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	pt := encodeData(req.Data)
	defer clear(pt)
	// The value is sealed for the version it will become, so that no stored
	// ciphertext can be replayed as another version. The leader predicts
	// that version from its state: its writes to one path go one at a time,
	// so the prediction holds unless a write of an earlier leader commits
	// in between, which the state machine refuses as a version conflict
	// (writing nothing); the value is then sealed again for the new next
	// version, under the same request id.
	unlock, err := k.paths.lock(ctx, req.Path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var r *fsm.Result
	for attempt := 1; ; attempt++ {
		current, err := k.store.CurrentVersion(req.Path)
		if err != nil {
			return nil, err
		}
		next := current + 1
		ct, err := k.keys.Encrypt(req.Path, next, pt)
		if err != nil {
			return nil, err
		}
		r, err = k.props.propose(ctx, &fsmpb.Command{
			Op:         fsmpb.Op_OP_PUT,
			Path:       req.Path,
			Ciphertext: ct,
			Version:    next,
			HasCas:     req.Cas != nil,
			Cas:        req.GetCas(),
			RequestId:  req.RequestId,
		})
		if errors.Is(err, fsm.ErrVersionConflict) && attempt < maxVersionConflicts {
			continue
		}
		if err != nil {
			return nil, k.explainWrite(err, req.Path, req.Cas)
		}
		break
	}
	return k.putResponse(req.Path, r), nil
}

// putResponse describes the version a put or patch wrote: its creation
// time is the leader time of the command that took effect (the first one,
// for a deduplicated retry), and the secret's custom metadata and the
// version's deletion time to come are read back from the applied state.
func (k *kvServer) putResponse(path string, r *fsm.Result) *pb.PutResponse {
	resp := &pb.PutResponse{Version: r.Version, Index: r.Index, CreatedTimeUnixNano: r.LeaderTimeUnixNano}
	if v, err := k.store.VersionInfo(path, r.Version); err == nil {
		resp.CustomMetadata = v.CustomMetadata
		resp.DeletionTimeUnixNano = unixNano(v.DeletedTime)
	}
	return resp
}

// Patch merges req into the current version's data and writes the result
// as the next version. It runs on the leader under the path's lock (no
// other write of this leader to the path comes in between) and proposes
// the put sealed for the version after the one it read: a version an
// earlier leader committed meanwhile makes the state machine refuse it
// (VERSION_CONFLICT, writing nothing), and Patch reads and merges again.
// So no update is lost between the read and the write.
func (k *kvServer) Patch(ctx context.Context, req *pb.PatchRequest) (*pb.PutResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if len(req.Data) == 0 && len(req.Remove) == 0 {
		return nil, invalidf("patch of %s changes nothing: give keys to set or to remove", req.Path)
	}
	if len(req.Data) > MaxKeys || len(req.Remove) > MaxKeys {
		return nil, tooLargef("patch has %d keys to set and %d to remove, over the limit of %d each: split the secret", len(req.Data), len(req.Remove), MaxKeys)
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	unlock, err := k.paths.lock(ctx, req.Path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	for attempt := 1; ; attempt++ {
		md, err := k.store.Metadata(req.Path)
		if errors.Is(err, fsm.ErrNotFound) {
			return nil, withMessage(err, "no secret at %s: patch changes an existing secret; write it first with put", req.Path)
		}
		if err != nil {
			return nil, err
		}
		cfg, err := k.store.KVConfig(req.Path)
		if err != nil {
			return nil, err
		}
		if (md.CASRequired || cfg.CASRequired) && req.Cas == nil {
			return nil, k.explainWrite(fsm.ErrCASRequired, req.Path, nil)
		}
		v, err := k.store.Get(req.Path, md.CurrentVersion)
		if errors.Is(err, fsm.ErrNotFound) {
			return nil, withMessage(err, "%s has no current version to patch: write it with put", req.Path)
		}
		if err != nil {
			return nil, err
		}
		if v.Destroyed || v.Deleted(time.Now()) {
			return nil, withMessage(fsm.ErrNotFound, "the current version %d of %s is deleted or destroyed: undelete it or write a new one with put", v.Version, req.Path)
		}
		if req.Cas != nil && *req.Cas != v.Version {
			return nil, k.explainWrite(fsm.ErrCASMismatch, req.Path, req.Cas)
		}
		pt, err := k.keys.Decrypt(req.Path, v.Version, v.Ciphertext)
		if err != nil {
			return nil, err
		}
		data, err := decodeData(pt)
		clear(pt)
		if err != nil {
			return nil, err
		}
		maps.Copy(data, req.Data)
		for _, key := range req.Remove {
			delete(data, key)
		}
		if err := validateData(data); err != nil {
			return nil, err
		}
		pt = encodeData(data)
		next := v.Version + 1
		ct, err := k.keys.Encrypt(req.Path, next, pt)
		clear(pt)
		if err != nil {
			return nil, err
		}
		r, err := k.props.propose(ctx, &fsmpb.Command{
			Op:         fsmpb.Op_OP_PUT,
			Path:       req.Path,
			Ciphertext: ct,
			Version:    next,
			HasCas:     req.Cas != nil,
			Cas:        req.GetCas(),
			RequestId:  req.RequestId,
		})
		if errors.Is(err, fsm.ErrVersionConflict) && attempt < maxVersionConflicts {
			continue
		}
		if err != nil {
			return nil, k.explainWrite(err, req.Path, req.Cas)
		}
		return k.putResponse(req.Path, r), nil
	}
}

// maxVersionConflicts bounds how often one put is sealed again after a
// version conflict; each conflict needs a write of another leader to commit
// in between, so more than one is already rare.
const maxVersionConflicts = 5

// explainWrite turns a deterministic write failure into a message that says
// what to do.
func (k *kvServer) explainWrite(err error, path string, cas *uint64) error {
	switch {
	case errors.Is(err, fsm.ErrCASMismatch):
		cur := uint64(0)
		if md, merr := k.store.Metadata(path); merr == nil {
			cur = md.CurrentVersion
		}
		if cas != nil && *cas == 0 {
			return withMessage(err, "check-and-set failed: %s already exists (version %d) and -cas=0 writes only new secrets: read it and retry with -cas=%d", path, cur, cur)
		}
		return withMessage(err, "check-and-set failed: %s is at version %d, not %d: read it again and retry with -cas=%d", path, cur, deref(cas), cur)
	case errors.Is(err, fsm.ErrCASRequired):
		return withMessage(err, "check-and-set required: %s only accepts writes with -cas=<current version>", path)
	case errors.Is(err, fsm.ErrNotFound):
		if _, merr := k.store.Metadata(path); merr == nil {
			return withMessage(err, "%s has none of the versions given: list its versions with `coffer kv metadata get %s`", path, path)
		}
		return withMessage(err, "no secret at %s: check the path with `coffer kv list`", path)
	}
	return err
}

func deref(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}

// Get reads and decrypts one version of a secret.
func (k *kvServer) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	meta, err := k.reads.begin(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	v, err := k.store.Get(req.Path, req.Version)
	if errors.Is(err, fsm.ErrNotFound) {
		if req.Version == 0 {
			return nil, withMessage(err, "no secret at %s", req.Path)
		}
		return nil, withMessage(err, "%s has no version %d: list its versions with `coffer kv metadata get %s`", req.Path, req.Version, req.Path)
	}
	if err != nil {
		return nil, err
	}
	md := &pb.VersionMetadata{
		Version:              v.Version,
		CreatedTimeUnixNano:  unixNano(v.CreatedTime),
		DeletionTimeUnixNano: unixNano(v.DeletedTime),
		Destroyed:            v.Destroyed,
	}
	deleted := v.Deleted(time.Now())
	if (v.Destroyed || deleted) && req.AllowDeleted {
		return &pb.GetResponse{Metadata: md, CustomMetadata: v.CustomMetadata, Deleted: true, ReadMeta: k.reads.finish(meta)}, nil
	}
	if v.Destroyed {
		return nil, withMessage(ErrDestroyed, "version %d of %s is destroyed: its data is gone for good", v.Version, req.Path)
	}
	if deleted {
		return nil, withMessage(ErrDeleted, "version %d of %s is deleted: restore it with `coffer kv undelete -versions=%d %s`", v.Version, req.Path, v.Version, req.Path)
	}
	pt, err := k.keys.Decrypt(req.Path, v.Version, v.Ciphertext)
	if err != nil {
		return nil, err
	}
	data, err := decodeData(pt)
	clear(pt)
	if err != nil {
		return nil, err
	}
	if req.Subkeys {
		// The keys only: no value leaves the node on this path.
		keys := slices.Sorted(maps.Keys(data))
		clear(data)
		return &pb.GetResponse{Subkeys: keys, Metadata: md, CustomMetadata: v.CustomMetadata, ReadMeta: k.reads.finish(meta)}, nil
	}
	return &pb.GetResponse{Data: data, Metadata: md, CustomMetadata: v.CustomMetadata, ReadMeta: k.reads.finish(meta)}, nil
}

// List returns the keys directly under a prefix.
func (k *kvServer) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	prefix, err := validatePrefix(req.Path)
	if err != nil {
		return nil, err
	}
	limit, err := validateListPage(req.Limit, req.After)
	if err != nil {
		return nil, err
	}
	meta, err := k.reads.begin(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	keys, more, err := k.store.ListPage(prefix, req.After, limit)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListResponse{Keys: keys, ReadMeta: k.reads.finish(meta)}
	if more && len(keys) > 0 {
		resp.NextAfter = keys[len(keys)-1]
	}
	return resp, nil
}

// Delete soft-deletes versions (the current one when none are given).
func (k *kvServer) Delete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return k.versionsOp(ctx, req, fsmpb.Op_OP_DELETE, false, "delete")
}

// Undelete restores soft-deleted versions.
func (k *kvServer) Undelete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return k.versionsOp(ctx, req, fsmpb.Op_OP_UNDELETE, true, "undelete")
}

// Destroy removes versions' data for good.
func (k *kvServer) Destroy(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return k.versionsOp(ctx, req, fsmpb.Op_OP_DESTROY, true, "destroy")
}

func (k *kvServer) versionsOp(ctx context.Context, req *pb.VersionsRequest, op fsmpb.Op, required bool, verb string) (*pb.WriteResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateVersions(req.Versions, required, verb); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	r, err := k.props.propose(ctx, &fsmpb.Command{Op: op, Path: req.Path, Versions: req.Versions, RequestId: req.RequestId})
	if err != nil {
		return nil, k.explainWrite(err, req.Path, nil)
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}

// ReadMetadata returns a secret's versions with their times and states.
func (k *kvServer) ReadMetadata(ctx context.Context, req *pb.ReadMetadataRequest) (*pb.ReadMetadataResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	meta, err := k.reads.begin(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	md, err := k.store.Metadata(req.Path)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, withMessage(err, "no secret at %s", req.Path)
	}
	if err != nil {
		return nil, err
	}
	resp := &pb.ReadMetadataResponse{
		Path:                    md.Path,
		CurrentVersion:          md.CurrentVersion,
		OldestVersion:           md.OldestVersion,
		MaxVersions:             md.MaxVersions,
		CasRequired:             md.CASRequired,
		CreatedTimeUnixNano:     unixNano(md.CreatedTime),
		UpdatedTimeUnixNano:     unixNano(md.UpdatedTime),
		ReadMeta:                k.reads.finish(meta),
		CustomMetadata:          md.CustomMetadata,
		DeleteVersionAfterNanos: int64(md.DeleteVersionAfter),
	}
	for _, v := range md.Versions {
		resp.Versions = append(resp.Versions, &pb.VersionMetadata{
			Version:              v.Version,
			CreatedTimeUnixNano:  unixNano(v.CreatedTime),
			DeletionTimeUnixNano: unixNano(v.DeletedTime),
			Destroyed:            v.Destroyed,
		})
	}
	return resp, nil
}

// WriteMetadata sets a secret's settings: those req.Fields names, or
// max_versions (unless 0) and cas_required when it names none.
func (k *kvServer) WriteMetadata(ctx context.Context, req *pb.WriteMetadataRequest) (*pb.WriteResponse, error) {
	cmd := &fsmpb.Command{
		Op:          fsmpb.Op_OP_PUT_METADATA,
		Path:        req.Path,
		MaxVersions: req.MaxVersions,
		CasRequired: req.CasRequired,
		RequestId:   req.RequestId,
	}
	if req.OnlyFields || len(req.Fields) > 0 {
		u := &fsmpb.MetadataUpdate{}
		for _, f := range req.Fields {
			switch f {
			case "max_versions":
				u.MaxVersions = &req.MaxVersions
			case "cas_required":
				u.CasRequired = &req.CasRequired
			case "custom_metadata":
				u.ClearCustomMetadata, u.CustomMetadata = true, req.CustomMetadata
			case "delete_version_after":
				u.DeleteVersionAfterNanos = &req.DeleteVersionAfterNanos
			default:
				return nil, invalidf("fields: %q is not a setting: give max_versions, cas_required, custom_metadata or delete_version_after", printable(f))
			}
		}
		cmd.Metadata = u
	} else if len(req.CustomMetadata) > 0 || req.DeleteVersionAfterNanos != 0 {
		return nil, invalidf("custom_metadata and delete_version_after are set only when fields names them")
	}
	return k.writeMetadata(ctx, cmd)
}

// PatchMetadata changes the settings req holds of an existing secret.
func (k *kvServer) PatchMetadata(ctx context.Context, req *pb.PatchMetadataRequest) (*pb.WriteResponse, error) {
	return k.writeMetadata(ctx, &fsmpb.Command{
		Op:        fsmpb.Op_OP_PUT_METADATA,
		Path:      req.Path,
		RequestId: req.RequestId,
		Metadata: &fsmpb.MetadataUpdate{
			MaxVersions:             req.MaxVersions,
			CasRequired:             req.CasRequired,
			DeleteVersionAfterNanos: req.DeleteVersionAfterNanos,
			ClearCustomMetadata:     req.ClearCustomMetadata,
			CustomMetadata:          req.CustomMetadata,
			RemoveCustomMetadata:    req.RemoveCustomMetadata,
			MustExist:               true,
		},
	})
}

// writeMetadata validates and proposes a metadata change.
func (k *kvServer) writeMetadata(ctx context.Context, cmd *fsmpb.Command) (*pb.WriteResponse, error) {
	if err := validatePath(cmd.Path); err != nil {
		return nil, err
	}
	if err := validateRequestID(cmd.RequestId); err != nil {
		return nil, err
	}
	mv := cmd.MaxVersions
	if u := cmd.Metadata; u != nil {
		mv = u.GetMaxVersions()
		if err := validateCustomMetadata(u.CustomMetadata, u.RemoveCustomMetadata); err != nil {
			return nil, err
		}
		if err := validateDeleteVersionAfter(u.GetDeleteVersionAfterNanos()); err != nil {
			return nil, err
		}
	}
	if mv > MaxVersionsLimit {
		return nil, invalidf("max_versions %d is over the limit of %d: keep fewer versions (older ones can be destroyed)", mv, MaxVersionsLimit)
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	r, err := k.props.propose(ctx, cmd)
	if err != nil {
		return nil, k.explainWrite(err, cmd.Path, nil)
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}

// configMount checks a KV mount's name and returns it with its slash.
func configMount(mount string) (string, error) {
	if mount == "" {
		return DefaultMount, nil
	}
	m := strings.TrimSuffix(mount, "/") + "/"
	if !slices.Contains(mounts, m) {
		return "", invalidf("mount %q is not a KV mount: the KV mounts are %s", printable(mount), strings.Join(mounts, ", "))
	}
	return m, nil
}

// ReadConfig returns a KV mount's configuration.
func (k *kvServer) ReadConfig(ctx context.Context, req *pb.ReadConfigRequest) (*pb.KVConfig, error) {
	mount, err := configMount(req.Mount)
	if err != nil {
		return nil, err
	}
	meta, err := k.reads.begin(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	cfg, err := k.store.KVConfig(mount)
	if err != nil {
		return nil, err
	}
	return &pb.KVConfig{
		MaxVersions:             cfg.MaxVersions,
		CasRequired:             cfg.CASRequired,
		DeleteVersionAfterNanos: int64(cfg.DeleteVersionAfter),
		ReadMeta:                k.reads.finish(meta),
	}, nil
}

// WriteConfig sets the settings req holds of a KV mount.
func (k *kvServer) WriteConfig(ctx context.Context, req *pb.WriteConfigRequest) (*pb.WriteResponse, error) {
	mount, err := configMount(req.Mount)
	if err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if req.GetMaxVersions() > MaxVersionsLimit {
		return nil, invalidf("max_versions %d is over the limit of %d: keep fewer versions", req.GetMaxVersions(), MaxVersionsLimit)
	}
	if err := validateDeleteVersionAfter(req.GetDeleteVersionAfterNanos()); err != nil {
		return nil, err
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	r, err := k.props.propose(ctx, &fsmpb.Command{
		Op:        fsmpb.Op_OP_PUT_KV_CONFIG,
		Path:      mount,
		RequestId: req.RequestId,
		Metadata: &fsmpb.MetadataUpdate{
			MaxVersions:             req.MaxVersions,
			CasRequired:             req.CasRequired,
			DeleteVersionAfterNanos: req.DeleteVersionAfterNanos,
		},
	})
	if err != nil {
		return nil, err
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}

// DeleteMetadata removes a secret and all its versions.
func (k *kvServer) DeleteMetadata(ctx context.Context, req *pb.DeleteMetadataRequest) (*pb.WriteResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	r, err := k.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_DELETE_METADATA, Path: req.Path, RequestId: req.RequestId})
	if err != nil {
		return nil, k.explainWrite(err, req.Path, nil)
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}
