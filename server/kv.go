package server

import (
	"context"
	"errors"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
)

// beginWrite admits a write on this node: unsealed and leader.
func (s *Server) beginWrite() error {
	if s.seal.Sealed() {
		return seal.ErrSealed
	}
	if !s.raft.IsLeader() {
		return s.notLeaderError()
	}
	return nil
}

// Put encrypts the data for its path and proposes a new version.
func (s *Server) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateData(req.Data); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := s.beginWrite(); err != nil {
		return nil, err
	}
	pt := encodeData(req.Data)
	ct, err := s.seal.Encrypt(req.Path, pt)
	clear(pt)
	if err != nil {
		return nil, err
	}
	cmd := &fsmCommand{
		Op:         fsmpb.Op_OP_PUT,
		Path:       req.Path,
		Ciphertext: ct,
		HasCas:     req.Cas != nil,
		Cas:        req.GetCas(),
		RequestId:  req.RequestId,
	}
	r, err := s.apply(ctx, cmd)
	if err != nil {
		return nil, s.explainWrite(err, req.Path, req.Cas)
	}
	// The version was created at the leader time of the command that took
	// effect (the first one, for a deduplicated retry): the result says.
	return &pb.PutResponse{Version: r.Version, Index: r.Index, CreatedTimeUnixNano: r.LeaderTimeUnixNano}, nil
}

// explainWrite turns a deterministic write failure into a message that says
// what to do.
func (s *Server) explainWrite(err error, path string, cas *uint64) error {
	switch {
	case errors.Is(err, fsm.ErrCASMismatch):
		cur := uint64(0)
		if md, merr := s.fsm.Metadata(path); merr == nil {
			cur = md.CurrentVersion
		}
		if cas != nil && *cas == 0 {
			return withMessage(err, "check-and-set failed: %s already exists (version %d) and -cas=0 writes only new secrets: read it and retry with -cas=%d", path, cur, cur)
		}
		return withMessage(err, "check-and-set failed: %s is at version %d, not %d: read it again and retry with -cas=%d", path, cur, deref(cas), cur)
	case errors.Is(err, fsm.ErrCASRequired):
		return withMessage(err, "check-and-set required: %s only accepts writes with -cas=<current version>", path)
	case errors.Is(err, fsm.ErrNotFound):
		if _, merr := s.fsm.Metadata(path); merr == nil {
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
func (s *Server) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	meta, err := s.beginRead(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	v, err := s.fsm.Get(req.Path, req.Version)
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
	pt, err := s.decrypt(req.Path, v.Ciphertext)
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
		ReadMeta: s.afterRead(meta),
	}, nil
}

// List returns the keys directly under a prefix.
func (s *Server) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	prefix, err := validatePrefix(req.Path)
	if err != nil {
		return nil, err
	}
	meta, err := s.beginRead(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	keys, err := s.fsm.List(prefix)
	if err != nil {
		return nil, err
	}
	return &pb.ListResponse{Keys: keys, ReadMeta: s.afterRead(meta)}, nil
}

// Delete soft-deletes versions (the current one when none are given).
func (s *Server) Delete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return s.versionsOp(ctx, req, fsmpb.Op_OP_DELETE, false, "delete")
}

// Undelete restores soft-deleted versions.
func (s *Server) Undelete(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return s.versionsOp(ctx, req, fsmpb.Op_OP_UNDELETE, true, "undelete")
}

// Destroy removes versions' data for good.
func (s *Server) Destroy(ctx context.Context, req *pb.VersionsRequest) (*pb.WriteResponse, error) {
	return s.versionsOp(ctx, req, fsmpb.Op_OP_DESTROY, true, "destroy")
}

func (s *Server) versionsOp(ctx context.Context, req *pb.VersionsRequest, op fsmpb.Op, required bool, verb string) (*pb.WriteResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateVersions(req.Versions, required, verb); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := s.beginWrite(); err != nil {
		return nil, err
	}
	r, err := s.apply(ctx, &fsmCommand{Op: op, Path: req.Path, Versions: req.Versions, RequestId: req.RequestId})
	if err != nil {
		return nil, s.explainWrite(err, req.Path, nil)
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}

// ReadMetadata returns a secret's versions with their times and states.
func (s *Server) ReadMetadata(ctx context.Context, req *pb.ReadMetadataRequest) (*pb.ReadMetadataResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	meta, err := s.beginRead(ctx, req.Read)
	if err != nil {
		return nil, err
	}
	md, err := s.fsm.Metadata(req.Path)
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
		ReadMeta:            s.afterRead(meta),
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
func (s *Server) WriteMetadata(ctx context.Context, req *pb.WriteMetadataRequest) (*pb.WriteResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := s.beginWrite(); err != nil {
		return nil, err
	}
	r, err := s.apply(ctx, &fsmCommand{
		Op:          fsmpb.Op_OP_PUT_METADATA,
		Path:        req.Path,
		MaxVersions: req.MaxVersions,
		CasRequired: req.CasRequired,
		RequestId:   req.RequestId,
	})
	if err != nil {
		return nil, s.explainWrite(err, req.Path, nil)
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}

// DeleteMetadata removes a secret and all its versions.
func (s *Server) DeleteMetadata(ctx context.Context, req *pb.DeleteMetadataRequest) (*pb.WriteResponse, error) {
	if err := validatePath(req.Path); err != nil {
		return nil, err
	}
	if err := validateRequestID(req.RequestId); err != nil {
		return nil, err
	}
	if err := s.beginWrite(); err != nil {
		return nil, err
	}
	r, err := s.apply(ctx, &fsmCommand{Op: fsmpb.Op_OP_DELETE_METADATA, Path: req.Path, RequestId: req.RequestId})
	if err != nil {
		return nil, s.explainWrite(err, req.Path, nil)
	}
	return &pb.WriteResponse{Index: r.Index}, nil
}
