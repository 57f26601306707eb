package server

import (
	"context"
	"errors"
	"strings"

	"github.com/hashicorp/go-hclog"

	"coffer/fsm"
	"coffer/fsm/fsmpb"
)

// sysLister reads the replicated sys table.
type sysLister interface {
	SysGet(key string) ([]byte, error)
	SysList(prefix string) ([]string, error)
}

// entryKeys seals and opens system entries (the barrier).
type entryKeys interface {
	entrySealer
	entryOpener
}

// migrateBatch is the most token records one migration command rewrites.
const migrateBatch = 256

// migrateTokenRecords seals the token records that a version of coffer
// from before records were sealed stored in plaintext, so that after an
// upgrade every record is encrypted and authenticated by the barrier. It
// runs on the ready, unsealed leader (leaderDuties); a record that does
// not decode is left alone and logged. It returns how many it sealed.
func migrateTokenRecords(ctx context.Context, st sysLister, props proposer, keys entryKeys, logger hclog.Logger) (int, error) {
	names, err := st.SysList(sysTokenPref)
	if err != nil {
		return 0, err
	}
	sealed := 0
	var batch []*fsmpb.SysEntry
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := props.propose(ctx, &fsmpb.Command{Op: fsmpb.Op_OP_SYS_PUT, Sys: batch})
		if err == nil {
			sealed += len(batch)
		}
		batch = nil
		return err
	}
	for _, k := range names {
		raw, err := st.SysGet(k)
		if errors.Is(err, fsm.ErrNotFound) || (err == nil && fsm.IsSealedValue(raw)) {
			continue
		}
		if err != nil {
			return sealed, err
		}
		if _, err := openTokenRecord(keys, k, raw); err != nil {
			h := strings.TrimPrefix(k, sysTokenPref)
			logger.Warn("a plaintext token record does not decode; leaving it", "token_hash_prefix", h[:min(8, len(h))], "error", err)
			continue
		}
		// The record is sealed as it was stored: it decodes, and it holds
		// nothing secret (the token's hash and its policies).
		ct, err := keys.SealEntry(k, raw)
		if err != nil {
			return sealed, err
		}
		batch = append(batch, &fsmpb.SysEntry{Key: k, Value: ct})
		if len(batch) == migrateBatch {
			if err := flush(); err != nil {
				return sealed, err
			}
		}
	}
	return sealed, flush()
}
