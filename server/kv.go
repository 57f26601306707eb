package server

import (
	"context"
	"errors"

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
}

// kvStore reads the replicated KV state.
type kvStore interface {
	Get(path string, version uint64) (*fsm.Version, error)
	Metadata(path string) (*fsm.Metadata, error)
	CurrentVersion(path string) (uint64, error)
	ListPage(prefix, after string, limit int) ([]string, bool, error)
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
	ChangesSince(from uint64, prefix string, max int) ([]fsm.Change, error)
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
	// The version was created at the leader time of the command that took
	// effect (the first one, for a deduplicated retry): the result says.
	return &pb.PutResponse{Version: r.Version, Index: r.Index, CreatedTimeUnixNano: r.LeaderTimeUnixNano}, nil
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
	if v.Destroyed {
		return nil, withMessage(ErrDestroyed, "version %d of %s is destroyed: its data is gone for good", v.Version, req.Path)
	}
	if !v.DeletedTime.IsZero() {
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
	return &pb.GetResponse{
		Data: data,
		Metadata: &pb.VersionMetadata{
			Version:             v.Version,
			CreatedTimeUnixNano: unixNano(v.CreatedTime),
		},
		ReadMeta: k.reads.finish(meta),
	}, nil
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
		Path:                md.Path,
		CurrentVersion:      md.CurrentVersion,
		OldestVersion:       md.OldestVersion,
		MaxVersions:         md.MaxVersions,
		CasRequired:         md.CASRequired,
		CreatedTimeUnixNano: unixNano(md.CreatedTime),
		UpdatedTimeUnixNano: unixNano(md.UpdatedTime),
		ReadMeta:            k.reads.finish(meta),
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

// WriteMetadata sets max_versions and cas_required of a secret.
func (k *kvServer) WriteMetadata(ctx context.Context, req *pb.WriteMetadataRequest) (*pb.WriteResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if req.MaxVersions > MaxVersionsLimit {
		return nil, invalidf("max_versions %d is over the limit of %d: keep fewer versions (older ones can be destroyed)", req.MaxVersions, MaxVersionsLimit)
	}
	if err := k.beginWrite(); err != nil {
		return nil, err
	}
	r, err := k.props.propose(ctx, &fsmpb.Command{
		Op:          fsmpb.Op_OP_PUT_METADATA,
		Path:        req.Path,
		MaxVersions: req.MaxVersions,
		CasRequired: req.CasRequired,
		RequestId:   req.RequestId,
	})
	if err != nil {
		return nil, k.explainWrite(err, req.Path, nil)
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
