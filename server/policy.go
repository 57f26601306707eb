package server

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/server/acl"
)

// sysPolicyPref keys the replicated policies: policy/<name> → the policy's
// text, sealed by the barrier for its key.
const sysPolicyPref = "policy/"

// defaultPolicy is attached to every token but root unless asked
// otherwise; it grants a token's self-service paths. It may be rewritten,
// not removed.
const defaultPolicy = "default"

// policyState reads the replicated policies.
type policyState interface {
	SysGet(key string) ([]byte, error)
	SysList(prefix string) ([]string, error)
	SysGeneration() uint64
}

// policyStore compiles a token's policies into one ACL, from the node's
// own replicated state, and keeps the result while the system entries are
// unchanged (fsm.SysGeneration): any write of a policy, token or key, or a
// restored snapshot, starts the cache over.
type policyStore struct {
	state  policyState
	keys   entryOpener
	logger hclog.Logger

	mu   sync.Mutex
	gen  uint64
	acls map[string]*acl.ACL
}

// policyCacheMax bounds the compiled ACLs kept (one per set of policies).
const policyCacheMax = 512

// aclFor returns the ACL of a token with policies. A policy that does not
// exist is skipped, as in Vault; one that does not open or parse is
// skipped with a warning (only a damaged state stores one: writes parse
// first).
func (p *policyStore) aclFor(policies []string) (*acl.ACL, error) {
	if slices.Contains(policies, rootPolicy) {
		return acl.Root(), nil
	}
	key := strings.Join(policies, "\x00")
	gen := p.state.SysGeneration()
	p.mu.Lock()
	if p.gen == gen && p.acls != nil {
		if a := p.acls[key]; a != nil {
			p.mu.Unlock()
			return a, nil
		}
	}
	p.mu.Unlock()

	var compiled []*acl.Policy
	for _, name := range policies {
		pol, err := p.load(name)
		if errors.Is(err, fsm.ErrNotFound) {
			continue
		}
		if err != nil {
			p.logger.Warn("a stored policy cannot be used: skipping it", "policy", name, "error", err)
			continue
		}
		compiled = append(compiled, pol)
	}
	a, err := acl.NewACL(compiled...)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen >= p.gen {
		if gen != p.gen || p.acls == nil || len(p.acls) >= policyCacheMax {
			p.gen, p.acls = gen, make(map[string]*acl.ACL)
		}
		p.acls[key] = a
	}
	return a, nil
}

// source returns a policy's text: the stored one, or the built-in text of
// default while it was never rewritten.
func (p *policyStore) source(name string) (string, error) {
	raw, err := p.state.SysGet(sysPolicyPref + name)
	if errors.Is(err, fsm.ErrNotFound) && name == defaultPolicy {
		return acl.DefaultPolicySource, nil
	}
	if err != nil {
		return "", err
	}
	pt, err := p.keys.OpenEntry(sysPolicyPref+name, raw)
	if err != nil {
		return "", err
	}
	defer clear(pt)
	return string(pt), nil
}

// load parses a stored policy.
func (p *policyStore) load(name string) (*acl.Policy, error) {
	src, err := p.source(name)
	if err != nil {
		return nil, err
	}
	return acl.Parse(name, []byte(src))
}

// names lists every policy: root, default and the stored ones.
func (p *policyStore) names() ([]string, error) {
	keys, err := p.state.SysList(sysPolicyPref)
	if err != nil {
		return nil, err
	}
	out := []string{defaultPolicy, rootPolicy}
	for _, k := range keys {
		if n := strings.TrimPrefix(k, sysPolicyPref); n != defaultPolicy {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// exists reports whether a policy is stored (for create versus update).
func (p *policyStore) exists(name string) bool {
	_, err := p.state.SysGet(sysPolicyPref + name)
	return err == nil
}

// policyServer is the Policy service.
type policyServer struct {
	pb.UnimplementedPolicyServer
	store  *policyStore
	keys   entrySealer
	props  proposer
	logger hclog.Logger
}

// Write parses the policy (refusing it with its line and column when it
// does not) and stores its text sealed by the barrier.
func (s *policyServer) Write(ctx context.Context, req *pb.WritePolicyRequest) (*pb.WritePolicyResponse, error) {
	name := req.GetName()
	if name == rootPolicy {
		return nil, invalidf("the root policy cannot be changed: write a policy under another name")
	}
	if _, err := acl.Parse(name, []byte(req.GetPolicy())); err != nil {
		return nil, invalidf("%v", err)
	}
	key := sysPolicyPref + name
	sealed, err := s.keys.SealEntry(key, []byte(req.GetPolicy()))
	if err != nil {
		return nil, err
	}
	res, err := s.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: key, Value: sealed}}})
	if err != nil {
		return nil, err
	}
	s.logger.Info("policy written", "policy", name)
	return &pb.WritePolicyResponse{RaftIndex: res.Index}, nil
}

// Read returns a policy's text as written.
func (s *policyServer) Read(_ context.Context, req *pb.ReadPolicyRequest) (*pb.PolicyInfo, error) {
	name := req.GetName()
	if name == rootPolicy {
		return &pb.PolicyInfo{Name: rootPolicy, Policy: "# root: every capability on every path (built in)\n"}, nil
	}
	src, err := s.store.source(name)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, withMessage(fsm.ErrNotFound, "no policy named %q: list them with `coffer policy list`", name)
	}
	if err != nil {
		return nil, err
	}
	return &pb.PolicyInfo{Name: name, Policy: src}, nil
}

// List returns every policy's name.
func (s *policyServer) List(context.Context, *pb.ListPoliciesRequest) (*pb.ListPoliciesResponse, error) {
	names, err := s.store.names()
	if err != nil {
		return nil, err
	}
	return &pb.ListPoliciesResponse{Names: names}, nil
}

// Delete removes a stored policy. Tokens that name it keep their other
// policies.
func (s *policyServer) Delete(ctx context.Context, req *pb.DeletePolicyRequest) (*pb.DeletePolicyResponse, error) {
	name := req.GetName()
	if name == rootPolicy || name == defaultPolicy {
		return nil, invalidf("the %s policy cannot be deleted", name)
	}
	if !s.store.exists(name) {
		return nil, withMessage(fsm.ErrNotFound, "no policy named %q: list them with `coffer policy list`", name)
	}
	res, err := s.props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_DELETE, SysKeys: []string{sysPolicyPref + name}})
	if err != nil {
		return nil, err
	}
	s.logger.Info("policy deleted", "policy", name)
	return &pb.DeletePolicyResponse{RaftIndex: res.Index}, nil
}
