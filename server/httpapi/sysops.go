package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"

	pb "coffer/api/cofferpb"
)

// sysOpsRoutes serves the sys/ endpoints of tokens and keys:
// capabilities, audit-hash, rotate, generate-root and rekey.
func (h *Handler) sysOpsRoutes() {
	h.handle("sys/capabilities-self", map[op]endpointFunc{opPost: sysCapabilities(true)})
	h.handle("sys/capabilities", map[op]endpointFunc{opPost: sysCapabilities(false)})
	h.handle("sys/audit-hash/*", map[op]endpointFunc{opPost: sysAuditHash})
	h.handle("sys/rotate", map[op]endpointFunc{opPost: sysRotate})
	h.handle("sys/generate-root/attempt", map[op]endpointFunc{opGet: generateRootStatus, opPost: generateRootInit, opDelete: generateRootCancel})
	h.handle("sys/generate-root/update", map[op]endpointFunc{opPost: generateRootUpdate})
	h.handle("sys/rekey/init", map[op]endpointFunc{opGet: rekeyStatus, opPut: rekeyInit, opDelete: rekeyCancel})
	h.handle("sys/rekey/update", map[op]endpointFunc{opPut: rekeyUpdate})
}

// sysCapabilities answers what a token (self: the caller's own) may do on
// paths, as Vault: each path's capabilities under its name, and, for one
// path, under "capabilities" too.
func sysCapabilities(self bool) endpointFunc {
	return func(ctx context.Context, rq *request) (*reply, error) {
		f, err := rq.fields()
		if err != nil {
			return nil, err
		}
		paths, err := f.list("paths", "path")
		if err != nil {
			return nil, err
		}
		if len(paths) == 0 {
			return nil, badRequest("missing paths: give the path (or paths) to ask about")
		}
		req := &pb.CapabilitiesRequest{Paths: paths}
		if !self {
			if req.Token, err = f.str("token"); err != nil {
				return nil, err
			}
			if req.Token == "" {
				return nil, badRequest("missing token: give the token to ask about, or use sys/capabilities-self for your own")
			}
		}
		out, err := rq.call(ctx, pb.Token_Capabilities_FullMethodName, req)
		if err != nil {
			return nil, err
		}
		data := map[string]any{}
		var all []string
		for _, p := range out.(*pb.CapabilitiesResponse).GetPaths() {
			caps := nonNil(p.GetCapabilities())
			data[p.GetPath()] = caps
			all = append(all, caps...)
		}
		if len(paths) == 1 {
			data["capabilities"] = nonNil(all)
		}
		return withTopLevel(rq, data), nil
	}
}

// sysAuditHash answers the HMAC the audit log writes input as. The path
// names an audit device in Vault; coffer's devices share one key, so any
// device name answers the same hash.
func sysAuditHash(ctx context.Context, rq *request) (*reply, error) {
	if strings.Trim(rq.rest, "/") == "" {
		return nil, badRequest("name the audit device: sys/audit-hash/NAME")
	}
	var body struct {
		Input *string `json:"input"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if body.Input == nil {
		return nil, badRequest("missing input: give the value to hash as \"input\"")
	}
	out, err := rq.call(ctx, pb.Sys_AuditHash_FullMethodName, &pb.AuditHashRequest{Input: *body.Input, Device: strings.Trim(rq.rest, "/")})
	if err != nil {
		return nil, err
	}
	return withTopLevel(rq, map[string]any{"hash": out.(*pb.AuditHashResponse).GetHash()}), nil
}

// sysRotate adds a data-key term: 204.
func sysRotate(ctx context.Context, rq *request) (*reply, error) {
	out, err := rq.call(ctx, pb.Sys_Rotate_FullMethodName, &pb.RotateRequest{})
	if err != nil {
		return nil, err
	}
	return indexed(out.(*pb.RotateResponse).GetIndex()), nil
}

// Generate-root, in Vault's form. Vault's OTP is a string of otp_length
// characters, and the encoded token is base64 (unpadded) of the token's
// bytes XOR the OTP's; coffer's RPC takes the OTP's bytes in base64 and
// answers the XOR in padded base64. The handlers convert between the
// two, so a Vault client decodes the token as it decodes Vault's.

// otpAlphabet is the characters of an OTP the node makes (Vault's
// base62).
const otpAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newOTP makes an OTP of n base62 characters.
func newOTP(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = otpAlphabet[randIndex(len(otpAlphabet))]
	}
	return string(b)
}

// randIndex is a uniform random number below n (n ≤ 256), by rejection.
func randIndex(n int) int {
	limit := 256 - 256%n
	var b [1]byte
	for {
		_, _ = rand.Read(b[:])
		if int(b[0]) < limit {
			return int(b[0]) % n
		}
	}
}

// generateRootReply is Vault's generate-root status body.
func generateRootReply(st *pb.GenerateRootStatus, otp string) *reply {
	enc := st.GetEncodedToken()
	if enc != "" {
		if b, err := base64.StdEncoding.DecodeString(enc); err == nil {
			enc = base64.RawStdEncoding.EncodeToString(b)
		}
	}
	progress := st.GetProgress()
	if st.GetComplete() {
		progress = st.GetRequired() // Vault shows a finished round as full
	}
	return &reply{raw: map[string]any{
		"started":            st.GetStarted(),
		"nonce":              st.GetNonce(),
		"progress":           progress,
		"required":           st.GetRequired(),
		"complete":           st.GetComplete(),
		"encoded_token":      enc,
		"encoded_root_token": enc,
		"pgp_fingerprint":    "",
		"otp":                otp,
		"otp_length":         st.GetOtpLength(),
	}}
}

func generateRoot(ctx context.Context, rq *request, req *pb.GenerateRootRequest) (*pb.GenerateRootStatus, error) {
	out, err := rq.call(ctx, pb.Sys_GenerateRoot_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	return out.(*pb.GenerateRootStatus), nil
}

func generateRootStatus(ctx context.Context, rq *request) (*reply, error) {
	st, err := generateRoot(ctx, rq, &pb.GenerateRootRequest{Action: "status"})
	if err != nil {
		return nil, err
	}
	return generateRootReply(st, ""), nil
}

// generateRootInit starts an attempt with the body's OTP, or, without
// one, with an OTP the node makes and answers once (as Vault does).
func generateRootInit(ctx context.Context, rq *request) (*reply, error) {
	var body struct {
		OTP    string `json:"otp"`
		PGPKey string `json:"pgp_key"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if body.PGPKey != "" {
		return nil, badRequest("coffer does not encrypt the root token with a PGP key: leave pgp_key out and give an otp (or none, and keep the one answered)")
	}
	st, err := generateRoot(ctx, rq, &pb.GenerateRootRequest{Action: "status"})
	if err != nil {
		return nil, err
	}
	n := int(st.GetOtpLength())
	otp, made := strings.TrimSpace(body.OTP), ""
	if otp == "" {
		otp = newOTP(n)
		made = otp
	}
	var pad []byte
	switch b, err := base64.StdEncoding.DecodeString(otp); {
	case len(otp) == n:
		pad = []byte(otp) // Vault's form: the characters are the pad
	case err == nil && len(b) == n:
		pad = b // coffer's form: base64 of the pad
	default:
		return nil, badRequest("the otp must be %d characters (Vault's form, as GET sys/generate-root/attempt's otp_length says), or base64 of %d random bytes; or leave it out and keep the one answered", n, n)
	}
	st, err = generateRoot(ctx, rq, &pb.GenerateRootRequest{Action: "init", Otp: base64.StdEncoding.EncodeToString(pad)})
	clear(pad)
	if err != nil {
		return nil, err
	}
	return generateRootReply(st, made), nil
}

// generateRootCancel cancels the attempt in progress. Vault's DELETE
// carries no nonce, and the status answers it to anyone, so the handler
// cancels the attempt the status names (a nonce in the body is used
// instead when given).
func generateRootCancel(ctx context.Context, rq *request) (*reply, error) {
	return cancelAttempt(rq, func() (string, error) {
		st, err := generateRoot(ctx, rq, &pb.GenerateRootRequest{Action: "status"})
		return st.GetNonce(), err
	}, func(nonce string) error {
		_, err := generateRoot(ctx, rq, &pb.GenerateRootRequest{Action: "cancel", Nonce: nonce})
		return err
	})
}

// cancelAttempt is the DELETE of generate-root and rekey: Vault's carries
// no nonce, so the attempt the status names is cancelled (a nonce in the
// body is used instead when given).
func cancelAttempt(rq *request, current func() (string, error), cancel func(nonce string) error) (*reply, error) {
	var body struct {
		Nonce string `json:"nonce"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if body.Nonce == "" {
		nonce, err := current()
		if err != nil {
			return nil, err
		}
		body.Nonce = nonce
	}
	if err := cancel(body.Nonce); err != nil {
		return nil, err
	}
	return noContent(), nil
}

// shareUpdate decodes the body of a generate-root or rekey update: one
// share (hex or base64) and the attempt's nonce, which statusPath names.
// The caller clears the share.
func shareUpdate(rq *request, statusPath string) (key []byte, nonce string, err error) {
	var body struct {
		Key   string `json:"key"`
		Nonce string `json:"nonce"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, "", err
	}
	if body.Key == "" {
		return nil, "", badRequest("'key' must be specified in request body as JSON")
	}
	if body.Nonce == "" {
		return nil, "", badRequest("'nonce' must be specified in request body as JSON: the nonce of the attempt (GET %s)", statusPath)
	}
	key, ok := decodeShare(body.Key)
	if !ok {
		return nil, "", badRequest("'key' must be a valid hex or base64 string")
	}
	return key, body.Nonce, nil
}

// generateRootUpdate submits one unseal key share (hex or base64) with
// the attempt's nonce.
func generateRootUpdate(ctx context.Context, rq *request) (*reply, error) {
	key, nonce, err := shareUpdate(rq, "sys/generate-root/attempt")
	if err != nil {
		return nil, err
	}
	st, err := generateRoot(ctx, rq, &pb.GenerateRootRequest{Action: "update", Nonce: nonce, Key: key})
	clear(key)
	if err != nil {
		return nil, err
	}
	return generateRootReply(st, ""), nil
}

// Rekey, in Vault's form (sys/rekey/init and sys/rekey/update). The
// shares (new ones in the last answer) are in hex and base64, as Vault
// gives them; PGP encryption and the verification round are not served.

// rekeyReply is Vault's rekey status body, with the new shares once
// complete.
func rekeyReply(st *pb.RekeyStatus) *reply {
	hexKeys, b64Keys := encodeShares(st.GetKeys())
	progress := st.GetProgress()
	if st.GetComplete() {
		progress = st.GetRequired()
	}
	body := map[string]any{
		"nonce":                 st.GetNonce(),
		"started":               st.GetStarted(),
		"t":                     st.GetT(),
		"n":                     st.GetN(),
		"progress":              progress,
		"required":              st.GetRequired(),
		"complete":              st.GetComplete(),
		"pgp_fingerprints":      nil,
		"backup":                false,
		"verification_required": false,
		"verification_nonce":    "",
	}
	if st.GetComplete() || st.GetOutcomeUnknown() {
		body["keys"], body["keys_base64"] = hexKeys, b64Keys
	}
	if st.GetOutcomeUnknown() {
		// Not Vault's: the new shares may or may not be in force.
		body["outcome_unknown"], body["key_id"] = true, st.GetKeyId()
	}
	return &reply{raw: body}
}

func rekey(ctx context.Context, rq *request, req *pb.RekeyRequest) (*pb.RekeyStatus, error) {
	out, err := rq.call(ctx, pb.Sys_Rekey_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	return out.(*pb.RekeyStatus), nil
}

func rekeyStatus(ctx context.Context, rq *request) (*reply, error) {
	st, err := rekey(ctx, rq, &pb.RekeyRequest{Action: "status"})
	if err != nil {
		return nil, err
	}
	return rekeyReply(st), nil
}

// rekeyInit starts a rekey to secret_shares and secret_threshold.
func rekeyInit(ctx context.Context, rq *request) (*reply, error) {
	var body struct {
		SecretShares        uint32   `json:"secret_shares"`
		SecretThreshold     uint32   `json:"secret_threshold"`
		PGPKeys             []string `json:"pgp_keys"`
		Backup              bool     `json:"backup"`
		RequireVerification bool     `json:"require_verification"`
	}
	if err := rq.decode(&body); err != nil {
		return nil, err
	}
	if len(body.PGPKeys) > 0 || body.Backup {
		return nil, badRequest("coffer does not encrypt the new shares with PGP keys nor back them up: leave pgp_keys and backup out, and hand each share to its holder over a secure channel")
	}
	if body.RequireVerification {
		return nil, badRequest("coffer has no rekey verification round: leave require_verification out (the new shares take effect when the last current share is given)")
	}
	st, err := rekey(ctx, rq, &pb.RekeyRequest{Action: "init", SecretShares: body.SecretShares, SecretThreshold: body.SecretThreshold})
	if err != nil {
		return nil, err
	}
	return rekeyReply(st), nil
}

// rekeyCancel cancels the rekey in progress. Vault's DELETE carries no
// nonce: the handler cancels the attempt the status names (a nonce in
// the body is used instead when given).
func rekeyCancel(ctx context.Context, rq *request) (*reply, error) {
	return cancelAttempt(rq, func() (string, error) {
		st, err := rekey(ctx, rq, &pb.RekeyRequest{Action: "status"})
		return st.GetNonce(), err
	}, func(nonce string) error {
		_, err := rekey(ctx, rq, &pb.RekeyRequest{Action: "cancel", Nonce: nonce})
		return err
	})
}

// rekeyUpdate submits one current share (hex or base64) with the
// attempt's nonce; the last one answers the new shares.
func rekeyUpdate(ctx context.Context, rq *request) (*reply, error) {
	key, nonce, err := shareUpdate(rq, "sys/rekey/init")
	if err != nil {
		return nil, err
	}
	st, err := rekey(ctx, rq, &pb.RekeyRequest{Action: "update", Nonce: nonce, Key: key})
	clear(key)
	if err != nil {
		return nil, err
	}
	return rekeyReply(st), nil
}
