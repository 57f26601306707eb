package httpapi

import (
	"context"
	"encoding/base64"
	"strings"
	"unicode/utf8"

	pb "coffer/api/cofferpb"
)

// policyRoutes serves ACL policies at sys/policies/acl/NAME (what
// vault/api's Sys().PutPolicy, GetPolicy, ListPolicies and DeletePolicy
// call) and at the older sys/policy/NAME (what older clients call).
func (h *Handler) policyRoutes() {
	h.handle("sys/policies/acl", map[op]endpointFunc{opList: policyList(false)})
	h.handle("sys/policies/acl/", map[op]endpointFunc{opList: policyList(false)})
	h.handle("sys/policies/acl/*", map[op]endpointFunc{opGet: policyRead(false), opPut: policyWrite, opDelete: policyDelete})
	h.handle("sys/policy", map[op]endpointFunc{opGet: policyList(true), opList: policyList(false)})
	h.handle("sys/policy/*", map[op]endpointFunc{opGet: policyRead(true), opPut: policyWrite, opDelete: policyDelete})
}

// policyName is the name the request's path ends in.
func (rq *request) policyName() (string, error) {
	name := strings.TrimSuffix(rq.rest, "/")
	if name == "" || strings.Contains(name, "/") {
		return "", badRequest("name one policy: %sNAME", strings.TrimSuffix(rq.path, rq.rest))
	}
	return name, nil
}

// policyList answers the policies' names: data.keys (sys/policies/acl,
// LIST), or, legacy, data.policies and data.keys (GET sys/policy).
func policyList(legacy bool) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		out, err := rq.call(ctx, pb.Policy_List_FullMethodName, &pb.ListPoliciesRequest{})
		if err != nil {
			return nil, err
		}
		names := nonNil(out.(*pb.ListPoliciesResponse).GetNames())
		if legacy {
			return withTopLevel(rq, map[string]any{"policies": names, "keys": names}), nil
		}
		return withTopLevel(rq, map[string]any{"keys": names}), nil
	}
}

// policyRead answers a policy's text: data.name and data.policy, or,
// legacy, data.name and data.rules. A missing policy is 404.
func policyRead(legacy bool) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		name, err := rq.policyName()
		if err != nil {
			return nil, err
		}
		out, err := rq.call(ctx, pb.Policy_Read_FullMethodName, &pb.ReadPolicyRequest{Name: name})
		if err != nil {
			if isReason(err, pb.ErrorReason_NOT_FOUND) {
				return nil, notFoundEmpty()
			}
			return nil, err
		}
		p := out.(*pb.PolicyInfo)
		field := "policy"
		if legacy {
			field = "rules"
		}
		return withTopLevel(rq, map[string]any{"name": p.GetName(), field: p.GetPolicy()}), nil
	}
}

// policyWrite creates or replaces a policy: 204. The text comes as
// "policy" (or the older "rules"), plain or base64-encoded as Vault
// takes it.
func policyWrite(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.policyName()
	if err != nil {
		return nil, err
	}
	var body struct {
		Policy string `json:"policy"`
		Rules  string `json:"rules"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	text := body.Policy
	if text == "" {
		text = body.Rules
	}
	if strings.TrimSpace(text) == "" {
		return nil, badRequest("missing policy: give its text (HCL or JSON) as \"policy\" in the body")
	}
	// HCL and JSON policies have spaces, quotes or braces, which base64
	// has not: a text that decodes is the encoded form.
	if dec, err := base64.StdEncoding.DecodeString(text); err == nil && utf8.Valid(dec) && len(dec) > 0 {
		text = string(dec)
	}
	out, err := rq.call(ctx, pb.Policy_Write_FullMethodName, &pb.WritePolicyRequest{Name: name, Policy: text})
	if err != nil {
		return nil, err
	}
	return indexed(out.(*pb.WritePolicyResponse).GetRaftIndex()), nil
}

// policyDelete removes a policy: 204 (also when there was none, as in
// Vault).
func policyDelete(ctx context.Context, rq *request) (*reply, error) {
	name, err := rq.policyName()
	if err != nil {
		return nil, err
	}
	out, err := rq.call(ctx, pb.Policy_Delete_FullMethodName, &pb.DeletePolicyRequest{Name: name})
	if err != nil {
		if isReason(err, pb.ErrorReason_NOT_FOUND) {
			return noContent(), nil
		}
		return nil, err
	}
	return indexed(out.(*pb.DeletePolicyResponse).GetRaftIndex()), nil
}
