package fsm

import (
	"errors"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of fsmpb.SecretMeta and fsmpb.VersionMeta that a read needs.
const (
	fieldSecretCurrentVersion = 1
	fieldSecretVersions       = 7
	fieldSecretCustomMetadata = 8

	fieldVersionVersion   = 1
	fieldVersionCreated   = 2
	fieldVersionDeleted   = 3
	fieldVersionDestroyed = 4
	fieldVersionValueIdx  = 5
)

var errCorruptMeta = errors.New("malformed protobuf")

// skipField is what an eachField callback returns to have a field skipped.
const skipField = math.MinInt

// versionInfo is one retained version's metadata, as a read needs it.
type versionInfo struct {
	version   uint64
	created   int64
	deleted   int64
	destroyed bool
	// valueIndex locates the value (see valueKeyOf); 0 for a version
	// written by a state of format 1.
	valueIndex uint64
}

// lookupVersion finds in a secret's encoded fsmpb.SecretMeta the version a
// read asks for (0: the current one) without decoding the rest. A Get used
// to decode every retained version's metadata (ten messages by default),
// about 8 % of a follower's CPU under reads. found is false when the
// version is not retained. It reads the wire format as proto.Unmarshal
// does: the last of a repeated scalar wins, fields of an unexpected wire
// type are skipped like unknown ones.
func lookupVersion(raw []byte, version uint64) (info versionInfo, found bool, err error) {
	if version == 0 {
		if version, err = currentVersion(raw); err != nil {
			return versionInfo{}, false, err
		}
	}
	err = eachField(raw, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if found || num != fieldSecretVersions || typ != protowire.BytesType {
			return skipField, nil
		}
		msg, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return n, nil
		}
		vi, err := parseVersionMeta(msg)
		if err != nil {
			return 0, err
		}
		if vi.version == version {
			info, found = vi, true
		}
		return n, nil
	})
	if err != nil {
		return versionInfo{}, false, err
	}
	return info, found, nil
}

// currentVersion reads current_version from a secret's encoded
// fsmpb.SecretMeta without decoding the rest.
func currentVersion(raw []byte) (version uint64, err error) {
	err = eachField(raw, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if num == fieldSecretCurrentVersion && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			version = v
			return n, nil
		}
		return skipField, nil
	})
	return version, err
}

// customMetadata reads custom_metadata from a secret's encoded
// fsmpb.SecretMeta without decoding the rest; nil when it has none.
func customMetadata(raw []byte) (map[string]string, error) {
	var out map[string]string
	err := eachField(raw, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if num != fieldSecretCustomMetadata || typ != protowire.BytesType {
			return skipField, nil
		}
		entry, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return n, nil
		}
		var k, v string
		err := eachField(entry, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
			if typ != protowire.BytesType || (num != 1 && num != 2) {
				return skipField, nil
			}
			s, n := protowire.ConsumeBytes(b)
			if n >= 0 && num == 1 {
				k = string(s)
			} else if n >= 0 {
				v = string(s)
			}
			return n, nil
		})
		if err != nil {
			return 0, err
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[k] = v
		return n, nil
	})
	return out, err
}

// parseVersionMeta decodes one encoded fsmpb.VersionMeta.
func parseVersionMeta(msg []byte) (versionInfo, error) {
	var vi versionInfo
	err := eachField(msg, func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if typ != protowire.VarintType || num < fieldVersionVersion || num > fieldVersionValueIdx {
			return skipField, nil
		}
		v, n := protowire.ConsumeVarint(b)
		switch num {
		case fieldVersionVersion:
			vi.version = v
		case fieldVersionCreated:
			vi.created = int64(v)
		case fieldVersionDeleted:
			vi.deleted = int64(v)
		case fieldVersionDestroyed:
			vi.destroyed = v != 0
		case fieldVersionValueIdx:
			vi.valueIndex = v
		}
		return n, nil
	})
	return vi, err
}

// eachField walks the fields of an encoded message. fn gets each field's
// number, wire type and the bytes from its value on; it returns how many
// bytes it consumed (negative: malformed), or skipField.
func eachField(b []byte, fn func(protowire.Number, protowire.Type, []byte) (int, error)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errCorruptMeta
		}
		b = b[n:]
		n, err := fn(num, typ, b)
		if err != nil {
			return err
		}
		if n == skipField {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errCorruptMeta
		}
		b = b[n:]
	}
	return nil
}
