package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	pb "coffer/api/cofferpb"
)

// generateRootJSON is the JSON output of `coffer operator generate-root`,
// with Vault's field names.
type generateRootJSON struct {
	Started          bool   `json:"started"`
	Nonce            string `json:"nonce"`
	Progress         uint32 `json:"progress"`
	Required         uint32 `json:"required"`
	Complete         bool   `json:"complete"`
	EncodedToken     string `json:"encoded_token"`
	EncodedRootToken string `json:"encoded_root_token"`
	OTP              string `json:"otp,omitempty"`
	OTPLength        uint32 `json:"otp_length"`
}

func cmdOperatorGenerateRoot(e *env, args []string) error {
	f := newFlags("coffer operator generate-root", "[flags] [SHARE]", `
Make a new root token from a threshold of unseal key shares, so that the
initial root token can be revoked and a root token made only when needed
(Vault's flow):

    coffer operator generate-root -init            # prints a nonce and an OTP
    coffer operator generate-root -nonce=NONCE      # once per key holder (share hidden)
    coffer operator generate-root -decode=ENCODED -otp=OTP

The token comes back XORed with the OTP: only whoever holds the OTP can
read it. -status shows the attempt, -cancel -nonce=NONCE drops it. The attempt lives on
the leader; a new leader starts without one.`).withClient()
	initF := f.fs.Bool("init", false, "start an attempt (with -otp, or a fresh OTP that is printed)")
	otp := f.fs.String("otp", "", "the one-time pad: with -init, use this one; with -decode, the one of the attempt")
	nonce := f.fs.String("nonce", "", "the attempt's nonce, to submit a share")
	status := f.fs.Bool("status", false, "show the attempt in progress")
	cancel := f.fs.Bool("cancel", false, "drop the attempt in progress (with its -nonce)")
	decode := f.fs.String("decode", "", "decode this encoded token with -otp and print the root token")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	modes := 0
	for _, on := range []bool{*initF, *status, *cancel, *decode != "", *nonce != "" && !*cancel} {
		if on {
			modes++
		}
	}
	if modes != 1 {
		return usageErrorf(f.name, "give one of -init, -nonce, -status, -cancel or -decode")
	}
	if len(args) > 0 && *nonce == "" {
		return usageErrorf(f.name, "a SHARE goes with -nonce")
	}
	if *decode != "" {
		return decodeRoot(e, f, *decode, *otp)
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	req := &pb.GenerateRootRequest{Action: "status"}
	switch {
	case *initF:
		if *otp == "" {
			// The pad is as long as a token: the cluster says how long.
			st, err := c.GenerateRoot(context.Background(), req)
			if err != nil {
				return callError(err, c.Endpoints(), 0)
			}
			pad := make([]byte, st.GetOtpLength())
			rand.Read(pad)
			*otp = base64.StdEncoding.EncodeToString(pad)
		}
		req = &pb.GenerateRootRequest{Action: "init", Otp: *otp}
	case *cancel:
		req = &pb.GenerateRootRequest{Action: "cancel", Nonce: *nonce}
	case *nonce != "":
		if len(args) > 1 {
			return usageErrorf(f.name, "too many arguments: want at most one SHARE")
		}
		key, err := shareArg(e, args)
		if err != nil {
			return err
		}
		req = &pb.GenerateRootRequest{Action: "update", Nonce: *nonce, Key: key}
	}
	st, err := c.GenerateRoot(context.Background(), req)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	out := generateRootJSON{
		Started: st.GetStarted(), Nonce: st.GetNonce(), Progress: st.GetProgress(), Required: st.GetRequired(),
		Complete: st.GetComplete(), EncodedToken: st.GetEncodedToken(), EncodedRootToken: st.GetEncodedToken(), OTPLength: st.GetOtpLength(),
	}
	if *initF {
		out.OTP = *otp
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, out)
	}
	rows := []row{
		{"Nonce", orNA(out.Nonce)},
		{"Started", fmt.Sprint(out.Started)},
		{"Progress", fmt.Sprintf("%d/%d", out.Progress, out.Required)},
		{"Complete", fmt.Sprint(out.Complete)},
	}
	if out.OTP != "" {
		rows = append(rows, row{"OTP", out.OTP}, row{"OTP Length", fmt.Sprint(out.OTPLength)})
	}
	if out.EncodedToken != "" {
		rows = append(rows, row{"Encoded Token", out.EncodedToken})
	}
	printKV(e.stdout, rows)
	return nil
}

// decodeRoot XORs an encoded root token with the OTP.
func decodeRoot(e *env, f *cmdFlags, encoded, otp string) error {
	enc, err1 := base64.StdEncoding.DecodeString(encoded)
	pad, err2 := base64.StdEncoding.DecodeString(otp)
	if err1 != nil || err2 != nil || len(enc) != len(pad) || len(pad) == 0 {
		return &cliError{code: 1, msg: "cannot decode: give -decode=ENCODED and -otp=OTP exactly as generate-root printed them"}
	}
	tok := make([]byte, len(enc))
	for i := range enc {
		tok[i] = enc[i] ^ pad[i]
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, map[string]string{"token": string(tok)})
	}
	fmt.Fprintln(e.stdout, string(tok))
	return nil
}
