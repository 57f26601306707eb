package server

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// The plaintext of a secret version, before encryption. Versions written by
// earlier builds are a JSON object (they start with '{'); this build writes
// a binary form, which is read back without reflection or escaping (the
// JSON decode was a tenth of a follower's CPU under reads):
//
//	dataFormatBinary, uvarint(n), then n times
//	uvarint(len(key)), key, uvarint(len(value)), value
//
// with the keys in order, so equal data encodes equally. Both forms stay
// readable for as long as old versions may exist.
const dataFormatBinary = 0x01

// errBadData is what a stored plaintext that decodes to nothing sensible
// reports. It names no byte of the plaintext.
var errBadData = errors.New("server: stored secret data is malformed: restore the secret from a snapshot or write it again")

// encodeData returns the binary plaintext form of data.
func encodeData(data map[string]string) []byte {
	keys := make([]string, 0, len(data))
	size := 1 + binary.MaxVarintLen64
	for k, v := range data {
		keys = append(keys, k)
		size += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	slices.Sort(keys)
	b := make([]byte, 0, size)
	b = append(b, dataFormatBinary)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		v := data[k]
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// decodeData reads either plaintext form. The strings it returns are copies:
// the caller may clear b afterwards.
func decodeData(b []byte) (map[string]string, error) {
	if len(b) > 0 && b[0] == '{' {
		var m map[string]string
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("server: stored secret is not valid JSON: %w", err)
		}
		return m, nil
	}
	if len(b) == 0 || b[0] != dataFormatBinary {
		return nil, errBadData
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	// Every entry takes at least two bytes, which bounds n before any
	// allocation is sized by it.
	if k <= 0 || n > uint64(len(b)-k)/2 {
		return nil, errBadData
	}
	b = b[k:]
	m := make(map[string]string, n)
	for range n {
		key, rest, ok := cutField(b)
		if !ok {
			return nil, errBadData
		}
		value, rest, ok := cutField(rest)
		if !ok {
			return nil, errBadData
		}
		if _, dup := m[key]; dup {
			return nil, errBadData
		}
		m[key] = value
		b = rest
	}
	if len(b) != 0 {
		return nil, errBadData
	}
	return m, nil
}

// cutField reads one length-prefixed string off the front of b.
func cutField(b []byte) (field string, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, false
	}
	end := k + int(n)
	return string(b[k:end]), b[end:], true
}
