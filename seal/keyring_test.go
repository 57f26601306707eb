package seal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func mustKeyring(t testing.TB) *Keyring {
	t.Helper()
	k, err := NewKeyring()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustRotate(t testing.TB, k *Keyring) *Keyring {
	t.Helper()
	next, err := k.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	return next
}

func TestNewKeyring(t *testing.T) {
	k := mustKeyring(t)
	if k.ActiveTerm() != 1 || len(k.keys) != 1 || len(k.keys[1]) != KeySize {
		t.Fatalf("NewKeyring: active %d, %d keys", k.ActiveTerm(), len(k.keys))
	}
	if bytes.Equal(k.keys[1], make([]byte, KeySize)) {
		t.Fatal("key is all zero")
	}
	if bytes.Equal(k.keys[1], mustKeyring(t).keys[1]) {
		t.Fatal("two keyrings have the same key")
	}
}

func TestKeyringRotate(t *testing.T) {
	k1 := mustKeyring(t)
	before := k1.Marshal()
	k2 := mustRotate(t, k1)
	k3 := mustRotate(t, k2)
	if !bytes.Equal(k1.Marshal(), before) {
		t.Fatal("Rotate changed the original keyring")
	}
	if k2.ActiveTerm() != 2 || k3.ActiveTerm() != 3 || len(k3.keys) != 3 {
		t.Fatalf("terms: k2 active %d, k3 active %d with %d keys", k2.ActiveTerm(), k3.ActiveTerm(), len(k3.keys))
	}
	for term := uint32(1); term <= 2; term++ {
		if !bytes.Equal(k3.keys[term], k2.keys[term]) {
			t.Fatalf("term %d differs after rotation", term)
		}
	}
	if bytes.Equal(k3.keys[3], k3.keys[2]) {
		t.Fatal("new term reuses a key")
	}
	// The rotated keyring owns copies: zeroing it leaves the original.
	k2.Zero()
	if bytes.Equal(k3.keys[1], make([]byte, KeySize)) {
		t.Fatal("Zero of one keyring zeroed another")
	}

	last := &Keyring{active: MaxTerm, keys: map[uint32][]byte{MaxTerm: make([]byte, KeySize)}}
	if _, err := last.Rotate(); !errors.Is(err, ErrTermsExhausted) {
		t.Fatalf("Rotate at the last term: %v, want ErrTermsExhausted", err)
	}
}

func TestKeyringMarshalRoundTrip(t *testing.T) {
	k := mustRotate(t, mustRotate(t, mustKeyring(t)))
	b := k.Marshal()
	if want := keyringHeaderSize + 3*keyringEntrySize; len(b) != want {
		t.Fatalf("encoding is %d bytes, want %d", len(b), want)
	}
	got, err := UnmarshalKeyring(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Marshal(), b) || got.ActiveTerm() != 3 {
		t.Fatal("round trip changed the keyring")
	}
	clear(b)
	if bytes.Equal(got.keys[1], make([]byte, KeySize)) {
		t.Fatal("UnmarshalKeyring kept a reference to its input")
	}
}

func TestUnmarshalKeyringErrors(t *testing.T) {
	valid := mustRotate(t, mustKeyring(t)).Marshal()
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	entry := func(i int) int { return keyringHeaderSize + i*keyringEntrySize }
	for _, c := range []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"short header", valid[:keyringHeaderSize-1]},
		{"header only", valid[:keyringHeaderSize]},
		{"wrong version", mutate(func(b []byte) []byte { b[0] = 2; return b })},
		{"truncated key", valid[:len(valid)-1]},
		{"extra byte", append(bytes.Clone(valid), 0)},
		{"count zero", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[5:], 0); return b[:keyringHeaderSize] })},
		{"count too large", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[5:], 3); return b })},
		{"count huge", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[5:], ^uint32(0)); return b })},
		{"term zero", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[entry(0):], 0); return b })},
		{"duplicate term", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[entry(1):], 1); return b })},
		{"unordered terms", mutate(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[entry(0):], 2)
			binary.BigEndian.PutUint32(b[entry(1):], 1)
			return b
		})},
		{"active missing", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[1:], 7); return b })},
		{"active not newest", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[1:], 1); return b })},
		{"active zero", mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[1:], 0); return b })},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := UnmarshalKeyring(c.in)
			if !errors.Is(err, ErrInvalidKeyring) || k != nil {
				t.Fatalf("UnmarshalKeyring: keyring %v, err %v; want ErrInvalidKeyring", k != nil, err)
			}
		})
	}
}

func TestKeyringZero(t *testing.T) {
	k := mustRotate(t, mustKeyring(t))
	held := [][]byte{k.keys[1], k.keys[2]}
	k.Zero()
	k.Zero() // idempotent
	for i, key := range held {
		if !bytes.Equal(key, make([]byte, KeySize)) {
			t.Fatalf("key %d not zeroed", i+1)
		}
	}
	if len(k.keys) != 0 || k.ActiveTerm() != 0 {
		t.Fatal("zeroed keyring still holds keys")
	}
	var nilKeyring *Keyring
	nilKeyring.Zero()
}

// FuzzUnmarshalKeyring checks that UnmarshalKeyring never panics and that
// whatever it accepts re-encodes to the same bytes (the encoding is
// canonical).
func FuzzUnmarshalKeyring(f *testing.F) {
	k := mustKeyring(f)
	f.Add(k.Marshal())
	f.Add(mustRotate(f, mustRotate(f, k)).Marshal())
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := UnmarshalKeyring(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidKeyring) {
				t.Fatalf("error %v does not wrap ErrInvalidKeyring", err)
			}
			return
		}
		if !bytes.Equal(k.Marshal(), b) {
			t.Fatal("accepted encoding does not round trip")
		}
		if _, err := NewBarrier(k); err != nil {
			t.Fatalf("accepted keyring gives no barrier: %v", err)
		}
	})
}
