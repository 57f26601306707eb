package server

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/fsm"
	"coffer/fsm/fsmpb"
	"coffer/seal"
	"coffer/server/audit"
)

// sysAuditSaltKey holds the cluster's audit salt (sealed): every node
// HMACs sensitive values under it, so one value hashes alike in every
// node's log and `coffer audit hash` finds it everywhere.
const sysAuditSaltKey = "audit/salt"

// auditSaltSize is the salt's length in bytes.
const auditSaltSize = 32

// errAudit refuses a call no audit device of this node could record.
var errAudit = errors.New("server: this node cannot write its audit log, so it refuses calls (fail closed): see the node's log, or use another node")

// auditor records every call a node serves in its audit devices (none:
// auditing is off and costs nothing), hashing sensitive values under the
// cluster's salt once the node is unsealed and the salt exists.
type auditor struct {
	broker *audit.Broker
	state  sysStore
	keys   interface {
		Sealed() bool
		entryOpener
	}
	logger hclog.Logger

	// mu orders loading and dropping the salt; loaded says (without the
	// lock, on every call) that hasher holds it — the broker's, when it
	// has devices.
	mu     sync.Mutex
	loaded atomic.Bool
	hasher *audit.Hasher
}

// openAudit opens the node's audit devices; a path that cannot be opened
// stops the node from starting, with the reason.
func openAudit(cfg Config, state sysStore, keys *keys) (*auditor, error) {
	a := &auditor{state: state, keys: keys, logger: cfg.Logger.Named("audit")}
	if len(cfg.AuditFiles) == 0 {
		return a, nil
	}
	var devs []audit.Device
	for _, path := range cfg.AuditFiles {
		d, err := audit.OpenFile(path)
		if err != nil {
			for _, o := range devs {
				o.Close()
			}
			return nil, fmt.Errorf("server: %w", err)
		}
		devs = append(devs, d)
	}
	timeout := cfg.AuditTimeout
	if timeout == 0 {
		timeout = audit.DefaultTimeout
	}
	a.broker = audit.NewBroker(cfg.NodeID, timeout, devs...)
	a.logger.Info("auditing every call", "files", len(devs), "timeout", timeout)
	return a, nil
}

// close closes the devices.
func (a *auditor) close() error {
	if !a.on() {
		return nil
	}
	return a.broker.Close()
}

// on reports whether the node audits at all.
func (a *auditor) on() bool { return a != nil && a.broker != nil }

// audited: calls with a token, logins, and the public calls that carry
// secrets (init, unseal, generate-root, rekey). Health checks, status and
// node-to-node calls are not.
func audited(r route.Route) bool {
	switch r.Access {
	case route.Token, route.Login:
		return true
	}
	return r.Method == pb.Sys_Init_FullMethodName || r.Method == pb.Sys_Unseal_FullMethodName || r.Method == pb.Sys_GenerateRoot_FullMethodName ||
		r.Method == pb.Sys_Rekey_FullMethodName
}

// ensureSalt gives the broker the cluster's salt once the node can open
// it; until then sensitive values are written redacted.
func (a *auditor) ensureSalt() {
	if a.loaded.Load() {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loaded.Load() || a.keys.Sealed() {
		return
	}
	raw, err := a.state.SysGet(sysAuditSaltKey)
	if err != nil {
		return
	}
	salt, err := a.keys.OpenEntry(sysAuditSaltKey, raw)
	if err != nil {
		a.logger.Warn("the audit salt does not open with this node's keys: audit lines are redacted instead of hashed", "error", err)
		return
	}
	h, err := audit.NewHasher(salt) // it keeps a copy
	clear(salt)
	if err != nil {
		return
	}
	if a.broker != nil {
		a.broker.SetHasher(h)
	}
	a.hasher = h
	a.loaded.Store(true)
}

// forget drops the salt (the node seals).
func (a *auditor) forget() {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.loaded.Store(false)
	if a.broker != nil {
		a.broker.SetHasher(nil) // destroys the hasher it held
	}
	a.hasher.Destroy()
	a.hasher = nil
}

// hash is `coffer audit hash`: value as the audit log writes it.
func (a *auditor) hash(value string) (string, error) {
	a.ensureSalt()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.loaded.Load() {
		return "", withMessage(seal.ErrSealed, "the audit salt is not available on this node yet (sealed, or the leader has not made it): try again shortly")
	}
	return a.hasher.HMAC(value), nil
}

// ensureClusterSalt makes the cluster's salt once (leader duty).
func ensureClusterSalt(ctx context.Context, st sysStore, keys entrySealer, props proposer) error {
	if _, err := st.SysGet(sysAuditSaltKey); err == nil || !errors.Is(err, fsm.ErrNotFound) {
		return err
	}
	salt := make([]byte, auditSaltSize)
	rand.Read(salt)
	defer clear(salt)
	sealed, err := keys.SealEntry(sysAuditSaltKey, salt)
	if err != nil {
		return err
	}
	_, err = props.propose(ctx, &fsmpb.Command{
		Op: fsmpb.Op_OP_SYS_PUT, Sys: []*fsmpb.SysEntry{{Key: sysAuditSaltKey, Value: sealed}}, SysRequireAbsent: sysAuditSaltKey,
	})
	if errors.Is(err, fsm.ErrAlreadyExists) {
		return nil
	}
	return err
}

// auditCall is one call's pair of records.
type auditCall struct {
	a      *auditor
	header audit.Header
}

// begin starts the records of a call by method with the caller's token
// record (nil before or without authentication).
func (a *auditor) begin(ctx context.Context, r route.Route, rec *tokenRecord) *auditCall {
	a.ensureSalt()
	c := &auditCall{a: a, header: audit.Header{RequestID: rand.Text(), Method: r.Method}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.header.RemoteAddress = p.Addr.String()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) == 1 {
			c.header.Auth.ClientToken = trimBearer(v[0])
		}
	}
	if rec != nil {
		c.header.Auth.Accessor = rec.Accessor
		c.header.Auth.Policies = rec.Policies
		c.header.Auth.DisplayName = rec.DisplayName
		c.header.Auth.TokenType = rec.tokenType()
	}
	return c
}

// request records the request msg (nil for a stream's start) on the
// route's policy path.
func (c *auditCall) request(ctx context.Context, r route.Route, msg proto.Message) error {
	if r.Policy != nil {
		path, need := r.Policy(msg)
		c.header.Path, c.header.Operation = path, operation(need)
	}
	err := c.a.broker.LogRequest(ctx, &audit.Request{Header: c.header, Data: protoData(msg)})
	if err != nil {
		c.a.logger.Error("audit: the request could not be recorded; refusing it", "method", c.header.Method, "error", err)
		return errAudit
	}
	return nil
}

// response records the outcome: resp (nil on error) and err.
func (c *auditCall) response(ctx context.Context, resp proto.Message, callErr error) error {
	rec := &audit.Response{Header: c.header, ResultCode: "OK"}
	if callErr != nil {
		st := withReason(toStatus(callErr))
		s, _ := status.FromError(st)
		rec.ResultCode, rec.Error = s.Code().String(), s.Message()
		rec.Reason = reasonOf(callErr).String()
	} else {
		rec.Data = protoData(resp)
	}
	err := c.a.broker.LogResponse(context.WithoutCancel(ctx), rec)
	if err != nil {
		c.a.logger.Error("audit: the response could not be recorded; failing the call", "method", c.header.Method, "error", err)
		return errAudit
	}
	return nil
}

// operation names what need asks, as Vault's audit log does.
func operation(need route.Capability) string {
	switch {
	case need&(route.Create|route.Update) != 0:
		return "update"
	case need&route.Delete != 0:
		return "delete"
	case need&route.List != 0:
		return "list"
	}
	return "read"
}

// protoData is msg's fields as JSON values (the audit package hashes every
// string in them).
func protoData(msg proto.Message) map[string]any {
	if msg == nil {
		return nil
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
	if err != nil {
		return map[string]any{"unencodable": true}
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return map[string]any{"unencodable": true}
	}
	return m
}

func trimBearer(v string) string {
	const p = "Bearer "
	if len(v) > len(p) && v[:len(p)] == p {
		return v[len(p):]
	}
	return v
}
