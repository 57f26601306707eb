package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	pb "coffer/api/cofferpb"
)

// rekeyJSON is the JSON output of `coffer operator rekey`, with Vault's
// field names (keys in hex, keys_base64 in base64, as Vault prints them).
type rekeyJSON struct {
	Nonce                string   `json:"nonce"`
	Started              bool     `json:"started"`
	T                    uint32   `json:"t"`
	N                    uint32   `json:"n"`
	Progress             uint32   `json:"progress"`
	Required             uint32   `json:"required"`
	Complete             bool     `json:"complete"`
	Keys                 []string `json:"keys,omitempty"`
	KeysB64              []string `json:"keys_base64,omitempty"`
	PGPFingerprints      []string `json:"pgp_fingerprints"`
	Backup               bool     `json:"backup"`
	VerificationRequired bool     `json:"verification_required"`
	// OutcomeUnknown: the new shares came back but whether the cluster
	// stored them is unknown; KeyID names them (and, in a status, the
	// cluster's current shares) so the two can be compared.
	OutcomeUnknown bool   `json:"outcome_unknown,omitempty"`
	KeyID          string `json:"key_id,omitempty"`
}

func cmdOperatorRekey(e *env, args []string) error {
	f := newFlags("coffer operator rekey", "[flags] [SHARE]", `
Replace the cluster's key shares (Vault's rekey): a threshold of the
current holders approve, and new shares under a new share count and
threshold come back once. The data and its keys stay as they are; the old
shares open nothing afterwards, on every node, including nodes that were
down during the rekey (they catch up before they take a share). Under the
static seal the shares are the recovery shares.

    coffer operator rekey -init -key-shares=5 -key-threshold=3   # prints a nonce
    coffer operator rekey -nonce=NONCE                            # once per current holder (share hidden)

The holder of the last share sees the new shares: hand them out and keep
them apart. -status shows the attempt, -cancel drops it. The attempt lives
on the leader; a new leader starts without one.`).withClient()
	initF := f.fs.Bool("init", false, "start a rekey with -key-shares and -key-threshold")
	shares := f.fs.Uint("key-shares", 5, "with -init: number of new shares")
	threshold := f.fs.Uint("key-threshold", 3, "with -init: number of new shares needed")
	nonce := f.fs.String("nonce", "", "the rekey's nonce, to submit a current share (or to -cancel)")
	status := f.fs.Bool("status", false, "show the rekey in progress")
	cancel := f.fs.Bool("cancel", false, "drop the rekey in progress")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	modes := 0
	for _, on := range []bool{*initF, *status, *cancel, *nonce != "" && !*cancel} {
		if on {
			modes++
		}
	}
	if modes != 1 {
		return usageErrorf(f.name, "give one of -init, -nonce, -status or -cancel")
	}
	if len(args) > 0 && (*nonce == "" || *cancel) {
		return usageErrorf(f.name, "a SHARE goes with -nonce")
	}
	if len(args) > 1 {
		return usageErrorf(f.name, "too many arguments: want at most one SHARE")
	}
	if !*initF && (f.isSet("key-shares") || f.isSet("key-threshold")) {
		return usageErrorf(f.name, "-key-shares and -key-threshold go with -init")
	}
	if *shares > 255 || *threshold > 255 {
		return &cliError{code: 1, msg: fmt.Sprintf("invalid -key-shares=%d -key-threshold=%d: both must be at most 255", *shares, *threshold)}
	}
	var req *pb.RekeyRequest
	switch {
	case *initF:
		req = &pb.RekeyRequest{Action: "init", SecretShares: uint32(*shares), SecretThreshold: uint32(*threshold)}
	case *status:
		req = &pb.RekeyRequest{Action: "status"}
	case *cancel:
		req = &pb.RekeyRequest{Action: "cancel", Nonce: *nonce}
	default:
		key, err := shareArg(e, args)
		if err != nil {
			return err
		}
		req = &pb.RekeyRequest{Action: "update", Nonce: *nonce, Key: key}
	}
	c, err := f.client(e)
	if err != nil {
		return err
	}
	defer c.Close()
	if req.Action == "cancel" && req.Nonce == "" {
		// As Vault's -cancel: the attempt the leader names.
		st, err := c.Rekey(context.Background(), &pb.RekeyRequest{Action: "status"})
		if err != nil {
			return callError(err, c.Endpoints(), 0)
		}
		req.Nonce = st.GetNonce()
	}
	st, err := c.Rekey(context.Background(), req)
	clear(req.Key)
	if err != nil {
		return callError(err, c.Endpoints(), 0)
	}
	out := rekeyJSON{
		Nonce: st.GetNonce(), Started: st.GetStarted(), T: st.GetT(), N: st.GetN(),
		Progress: st.GetProgress(), Required: st.GetRequired(), Complete: st.GetComplete(),
		PGPFingerprints: nil, OutcomeUnknown: st.GetOutcomeUnknown(), KeyID: st.GetKeyId(),
	}
	for _, k := range st.GetKeys() {
		out.Keys = append(out.Keys, hex.EncodeToString(k))
		out.KeysB64 = append(out.KeysB64, base64.StdEncoding.EncodeToString(k))
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, out)
	}
	word := "Key"
	if st.GetRecovery() {
		word = "Recovery Key"
	}
	if out.OutcomeUnknown {
		for i, k := range out.KeysB64 {
			fmt.Fprintf(e.stdout, "%s %d: %s\n", word, i+1, k)
		}
		fmt.Fprintf(e.stdout, `
WARNING: the leader changed while the new seal record was being stored, and
whether it was stored is unknown. Keep BOTH the old shares and the new ones
printed above (Key ID %s). Run "coffer operator rekey -status": when its
Key ID is %s the new shares are in force, otherwise the old ones still are.
`, out.KeyID, out.KeyID)
		return nil
	}
	if out.Complete {
		for i, k := range out.KeysB64 {
			fmt.Fprintf(e.stdout, "%s %d: %s\n", word, i+1, k)
		}
		fmt.Fprintf(e.stdout, `
Coffer rekeyed with %d key shares and a key threshold of %d. Please securely
distribute the key shares printed above. They are shown this once. The old
shares no longer open anything: destroy them.
`, out.N, out.T)
		return nil
	}
	if *cancel {
		fmt.Fprintln(e.stdout, "Success! Canceled rekeying (if it was started)")
		return nil
	}
	rows := []row{
		{"Nonce", orNA(out.Nonce)},
		{"Started", fmt.Sprint(out.Started)},
		{"Rekey Progress", fmt.Sprintf("%d/%d", out.Progress, out.Required)},
		{"Key ID", orNA(out.KeyID)},
	}
	if out.Started {
		rows = append(rows, row{"New Shares", fmt.Sprint(out.N)}, row{"New Threshold", fmt.Sprint(out.T)})
	}
	printKV(e.stdout, rows)
	return nil
}
