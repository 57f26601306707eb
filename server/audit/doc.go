// Package audit records every request a coffer node serves, and every
// response, as one JSON line per record on the node's own audit devices.
//
// It follows Vault's audit semantics so that Vault users read the log the
// way they are used to:
//
//   - Fail closed. A record counts as audited when at least one device
//     recorded it; when none could, [Broker.LogRequest] and
//     [Broker.LogResponse] return [ErrAuditFailed] and the server refuses the
//     call. A broker without devices audits nothing and never fails
//     (auditing is opt-in).
//   - No secret in clear. The client token and its accessor, and every
//     string anywhere inside a record's data, are written as
//     "hmac-sha256:<hex>" under a salt the whole cluster shares, so an
//     operator who knows a value can find it ([HashForSearch]) but a reader
//     of the log learns nothing else. Numbers and booleans stay as they are;
//     the server names the few data keys that are safe in clear, per record.
//     A sealed node knows no salt yet: it writes "[redacted: sealed]"
//     instead.
//   - A hung device must not hang the cluster. Each device has one writer
//     goroutine fed by a small bounded queue. A record that the device does
//     not confirm within the broker's timeout counts as failed on that
//     device; a device stuck in one write longer than the timeout is skipped
//     without waiting until it moves again. Memory and goroutines stay
//     bounded however long a device hangs, and the device carries on when it
//     unblocks.
//
// Devices are made only from the node's configuration ([OpenFile] takes the
// path of -audit-file); no API call creates one. The file device appends
// with one write per line, creates the file 0600, and reopens its path on
// [Broker.Reopen] (SIGHUP after logrotate).
//
// audit imports nothing of coffer.
package audit
