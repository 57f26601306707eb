// Package route is the one table of coffer's RPCs: for every gRPC method a
// node or an agent serves, whether it needs a token, whether only the
// leader serves it (followers forward it), whether it may be sent again
// after a lost answer, and the policy path and capabilities it needs in
// Vault's terms. The server's interceptor, its forwarding, the agent and
// the client read it; a method with no entry is refused, never routed by
// accident.
//
// Adding an RPC is: the proto, its handler, one line in table.
package route

import (
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "coffer/api/cofferpb"
)

// Access says who may call a method.
type Access uint8

const (
	// Token: a caller with a valid token (the zero value, so that a route
	// written without thought is not public).
	Token Access = iota
	// Public: anyone, also while the node is sealed (seal status, init,
	// unseal, health, reflection).
	Public
	// Peer: another node of the cluster (read index); today with the
	// caller's token, which the leader checks again.
	Peer
	// Login: anyone, without a token, but only while the node is
	// unsealed: the caller exchanges credentials for a token. The call is
	// audited (its credentials hashed); its policy path names the login
	// in Vault's terms and is not checked (there is no token to check).
	Login
)

func (a Access) String() string {
	switch a {
	case Token:
		return "token"
	case Public:
		return "public"
	case Peer:
		return "peer"
	case Login:
		return "login"
	}
	return fmt.Sprintf("access(%d)", uint8(a))
}

// Capability is a set of Vault policy capabilities.
type Capability uint16

// The capabilities of Vault's policy language that routes name.
const (
	Read Capability = 1 << iota
	Create
	Update
	Delete
	List
	Sudo
	// Patch is a partial update (HTTP PATCH).
	Patch
)

// String lists the capabilities, e.g. "create|update".
func (c Capability) String() string {
	var out []string
	for _, n := range []struct {
		c    Capability
		name string
	}{{Read, "read"}, {Create, "create"}, {Update, "update"}, {Delete, "delete"}, {List, "list"}, {Sudo, "sudo"}, {Patch, "patch"}} {
		if c&n.c != 0 {
			out = append(out, n.name)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "|")
}

// Route is what the table says about one method.
type Route struct {
	// Method is the full gRPC method name ("/coffer.v1.KV/Put").
	Method string
	// Access says who may call it.
	Access Access
	// Leader: only the leader serves it; a follower forwards it, one hop,
	// with the caller's token.
	Leader bool
	// Local, when set, names the requests of a leader-only method that
	// any node serves itself because they write nothing (a batch token).
	Local func(req proto.Message) bool
	// Consistent: a follower first learns the leader's commit index and
	// waits until it has applied it (a read index), so that a read of
	// configuration (a policy, a role) sees every write acknowledged
	// before it, as a default KV read does. Without a leader it answers
	// from its own state.
	Consistent bool
	// Idempotent: the request carries a request_id that makes a second
	// send return the first one's result, so a forwarded call whose
	// answer was lost may be sent again (to the next leader).
	Idempotent bool
	// ClientCert: on a node that runs TLS, the caller must present a
	// certificate of the cluster's CA (a client's or a node's), as
	// `cockroach init` demands: whoever reaches a fresh node first must
	// not initialize it.
	ClientCert bool
	// Policy gives the policy path the request touches, in Vault's HTTP
	// terms, and the capabilities it needs there. Create|Update means
	// create for a new secret and update for an existing one. Nil for
	// public routes and peer routes; for a login, the path it logs in at
	// (auth/<method>/login), which is not checked.
	Policy func(req proto.Message) (path string, need Capability)
}

// Forwarded reports whether a follower passes req to the leader.
func (r Route) Forwarded(req proto.Message) bool {
	if r.Leader {
		return r.Local == nil || !r.Local(req)
	}
	return asksLeader(req)
}

// asksLeader reports whether a read asks to be answered by the leader
// (ReadOptions.forward_to_leader).
func asksLeader(req proto.Message) bool {
	r, ok := req.(interface{ GetRead() *pb.ReadOptions })
	return ok && r.GetRead().GetForwardToLeader()
}

// Lookup returns the route of method.
func Lookup(method string) (Route, bool) {
	r, ok := byMethod[method]
	return r, ok
}

// All returns every route, in table order.
func All() []Route { return append([]Route(nil), table...) }

// byMethod indexes table.
var byMethod = func() map[string]Route {
	m := make(map[string]Route, len(table))
	for _, r := range table {
		if _, dup := m[r.Method]; dup {
			panic("route: " + r.Method + " is in the table twice")
		}
		m[r.Method] = r
	}
	return m
}()

// NewResponse returns an empty response message of the route's method (a
// follower decodes the leader's answer into it).
func (r Route) NewResponse() (proto.Message, error) {
	md, err := methodDescriptor(r.Method)
	if err != nil {
		return nil, err
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, fmt.Errorf("route: response type of %s: %w", r.Method, err)
	}
	return mt.New().Interface(), nil
}

// methodDescriptor finds the descriptor of a full method name.
func methodDescriptor(method string) (protoreflect.MethodDescriptor, error) {
	name := strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, fmt.Errorf("route: no descriptor for %s: %w", method, err)
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return nil, fmt.Errorf("route: %s is not a method", method)
	}
	return md, nil
}

// requestIDField is the field of every idempotent request.
const requestIDField = "request_id"

// NewRequestID returns a unique id that makes a write idempotent: the
// current time in nanoseconds (16 hex digits), then 128 random bits. The
// time prefix keeps ids of one period together in the nodes' idempotency
// table, so recording them touches few of its pages (a quarter less state
// machine work per write than wholly random ids, see the fsm's
// BenchmarkApplyWrites); the random part keeps them unique. It is the one
// place request ids are made.
func NewRequestID() string {
	return fmt.Sprintf("%016x", uint64(time.Now().UnixNano())) + rand.Text()
}

// EnsureRequestID gives req a request id when it has a request_id field
// that is empty, and returns the id it carries ("" when it has no such
// field).
func EnsureRequestID(req proto.Message) string {
	m := req.ProtoReflect()
	fd := m.Descriptor().Fields().ByName(requestIDField)
	if fd == nil || fd.Kind() != protoreflect.StringKind {
		return ""
	}
	if id := m.Get(fd).String(); id != "" {
		return id
	}
	id := NewRequestID()
	m.Set(fd, protoreflect.ValueOfString(id))
	return id
}
