package seal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func mustBarrier(t testing.TB, k *Keyring) *Barrier {
	t.Helper()
	b, err := NewBarrier(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEncrypt(t testing.TB, b *Barrier, path string, pt []byte) []byte {
	t.Helper()
	ct, err := b.Encrypt(path, 1, pt)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func TestBarrierRoundTrip(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	for _, c := range []struct {
		path string
		pt   []byte
	}{
		{"secret/payments/db", []byte(`{"password":"hunter2"}`)},
		{"", []byte("empty path")},
		{"secret/empty", nil},
		{"secret/big", bytes.Repeat([]byte{0xab}, 1<<16)},
	} {
		ct := mustEncrypt(t, b, c.path, c.pt)
		if len(ct) != headerSize+len(c.pt)+tagSize || cap(ct) != len(ct) {
			t.Fatalf("%q: ciphertext len %d cap %d, want both %d", c.path, len(ct), cap(ct), headerSize+len(c.pt)+tagSize)
		}
		if term, ok := TermOf(ct); !ok || term != 1 {
			t.Fatalf("TermOf = %d, %v; want 1, true", term, ok)
		}
		if len(c.pt) > 8 && bytes.Contains(ct, c.pt[:8]) {
			t.Fatal("ciphertext contains plaintext")
		}
		pt, err := b.Decrypt(c.path, 1, ct)
		if err != nil || !bytes.Equal(pt, c.pt) || cap(pt) != len(pt) {
			t.Fatalf("%q: Decrypt: err %v, equal %v, cap %d len %d", c.path, err, bytes.Equal(pt, c.pt), cap(pt), len(pt))
		}
	}
}

func TestBarrierNonceIsFresh(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	a1 := mustEncrypt(t, b, "p", []byte("same"))
	a2 := mustEncrypt(t, b, "p", []byte("same"))
	if bytes.Equal(a1, a2) {
		t.Fatal("two encryptions of the same value are identical")
	}
}

func TestBarrierWrongPath(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	ct := mustEncrypt(t, b, "secret/a", []byte("value"))
	for _, p := range []string{"secret/b", "secret/a/", "secret/", "", "secret/a\x00"} {
		if _, err := b.Decrypt(p, 1, ct); !errors.Is(err, ErrDecrypt) {
			t.Errorf("Decrypt at %q: %v, want ErrDecrypt", p, err)
		}
	}
}

func TestBarrierWrongKeyring(t *testing.T) {
	ct := mustEncrypt(t, mustBarrier(t, mustKeyring(t)), "p", []byte("value"))
	if _, err := mustBarrier(t, mustKeyring(t)).Decrypt("p", 1, ct); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Decrypt with another keyring's term 1: %v, want ErrDecrypt", err)
	}
}

func TestBarrierTamper(t *testing.T) {
	k := mustRotate(t, mustKeyring(t)) // terms 1 and 2
	b := mustBarrier(t, k)
	ct := mustEncrypt(t, b, "p", []byte("some secret value"))
	for i := range ct {
		for bit := range 8 {
			bad := bytes.Clone(ct)
			bad[i] ^= 1 << bit
			_, err := b.Decrypt("p", 1, bad)
			if !errors.Is(err, ErrDecrypt) && !(i < termSize && errors.Is(err, ErrUnknownTerm)) {
				t.Fatalf("flip byte %d bit %d: %v", i, bit, err)
			}
		}
	}
	// A term flipped to another term the keyring holds is an auth failure.
	bad := bytes.Clone(ct)
	binary.BigEndian.PutUint32(bad, 1)
	if _, err := b.Decrypt("p", 1, bad); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("term changed to 1: %v, want ErrDecrypt", err)
	}
}

func TestBarrierTruncated(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	ct := mustEncrypt(t, b, "p", []byte("value"))
	for n := range len(ct) {
		if _, err := b.Decrypt("p", 1, ct[:n]); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("truncated to %d bytes: %v, want ErrDecrypt", n, err)
		}
		if _, err := b.Decrypt("p", 1, ct[len(ct)-n:]); err == nil {
			t.Fatalf("suffix of %d bytes decrypted", n)
		}
	}
	if _, err := b.Decrypt("p", 1, append(bytes.Clone(ct), 0)); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("extended by one byte: %v, want ErrDecrypt", err)
	}
}

func TestBarrierUnknownTerm(t *testing.T) {
	k1 := mustKeyring(t)
	old := mustBarrier(t, k1)
	next := mustBarrier(t, mustRotate(t, k1))
	ct := mustEncrypt(t, next, "p", []byte("v"))
	if _, err := old.Decrypt("p", 1, ct); !errors.Is(err, ErrUnknownTerm) {
		t.Fatalf("term 2 on a term-1 keyring: %v, want ErrUnknownTerm", err)
	}
	forged := bytes.Clone(ct)
	binary.BigEndian.PutUint32(forged, 99)
	if _, err := next.Decrypt("p", 1, forged); !errors.Is(err, ErrUnknownTerm) {
		t.Fatalf("term 99: %v, want ErrUnknownTerm", err)
	}
}

func TestBarrierRotation(t *testing.T) {
	k1 := mustKeyring(t)
	b1 := mustBarrier(t, k1)
	oldCT := mustEncrypt(t, b1, "p", []byte("old"))
	k2 := mustRotate(t, k1)
	b2 := mustBarrier(t, k2)
	newCT := mustEncrypt(t, b2, "p", []byte("new"))
	if term, _ := TermOf(newCT); term != 2 || b2.ActiveTerm() != 2 {
		t.Fatalf("after rotation new writes use term %d (active %d), want 2", term, b2.ActiveTerm())
	}
	if pt, err := b2.Decrypt("p", 1, oldCT); err != nil || string(pt) != "old" {
		t.Fatalf("old ciphertext after rotation: %q, %v", pt, err)
	}
	// The barrier does not depend on the keyring's bytes.
	k2.Zero()
	if pt, err := b2.Decrypt("p", 1, newCT); err != nil || string(pt) != "new" {
		t.Fatalf("after zeroing the keyring: %q, %v", pt, err)
	}
}

func TestNewBarrierErrors(t *testing.T) {
	for name, k := range map[string]*Keyring{
		"nil":            nil,
		"empty":          {active: 1, keys: map[uint32][]byte{}},
		"active missing": {active: 2, keys: map[uint32][]byte{1: make([]byte, KeySize)}},
		"short key":      {active: 1, keys: map[uint32][]byte{1: make([]byte, 16)}},
	} {
		if _, err := NewBarrier(k); !errors.Is(err, ErrInvalidKeyring) {
			t.Errorf("%s: %v, want ErrInvalidKeyring", name, err)
		}
	}
}

func TestTermOf(t *testing.T) {
	if _, ok := TermOf(nil); ok {
		t.Error("TermOf(nil) ok")
	}
	if _, ok := TermOf(make([]byte, minCiphertext-1)); ok {
		t.Error("TermOf(short) ok")
	}
	if _, ok := TermOf(make([]byte, minCiphertext)); ok {
		t.Error("TermOf(term 0) ok")
	}
	ct := make([]byte, minCiphertext)
	binary.BigEndian.PutUint32(ct, 0x01020304)
	if term, ok := TermOf(ct); !ok || term != 0x01020304 || IsBound(ct) {
		t.Errorf("TermOf = %#x, %v (bound %v)", term, ok, IsBound(ct))
	}
	binary.BigEndian.PutUint32(ct, 0x01020304|boundFlag)
	if term, ok := TermOf(ct); !ok || term != 0x01020304 || !IsBound(ct) {
		t.Errorf("bound: TermOf = %#x, %v (bound %v)", term, ok, IsBound(ct))
	}
}

func TestWrapUnwrap(t *testing.T) {
	key := randomSecret(t, KeySize)
	pt := randomSecret(t, KeySize)
	w, err := wrap(key, pt, aadRootKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != wrappedKeySize {
		t.Fatalf("wrapped key is %d bytes, want %d", len(w), wrappedKeySize)
	}
	if got, err := unwrap(key, w, aadRootKey); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := unwrap(key, w, aadKeyring); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("unwrap with the other label: %v, want ErrDecrypt", err)
	}
	if _, err := unwrap(randomSecret(t, KeySize), w, aadRootKey); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("unwrap with another key: %v, want ErrDecrypt", err)
	}
	for n := range len(w) {
		if _, err := unwrap(key, w[:n], aadRootKey); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("unwrap of %d bytes: %v, want ErrDecrypt", n, err)
		}
	}
	if _, err := wrap(key[:16], pt, aadRootKey); err == nil {
		t.Fatal("wrap with a 16-byte key succeeded")
	}
	if _, err := unwrap(nil, w, aadRootKey); err == nil {
		t.Fatal("unwrap with no key succeeded")
	}
}

// FuzzBarrierDecrypt checks that Decrypt never panics, fails only with
// ErrDecrypt or ErrUnknownTerm, and that Encrypt/Decrypt round-trip any
// path and value.
func FuzzBarrierDecrypt(f *testing.F) {
	k := mustRotate(f, mustKeyring(f))
	b := mustBarrier(f, k)
	f.Add("secret/a", mustEncrypt(f, b, "secret/a", []byte("value")))
	f.Add("", mustEncrypt(f, b, "", nil))
	f.Add("p", []byte{0, 0, 0, 1})
	f.Add("p", make([]byte, minCiphertext))
	f.Fuzz(func(t *testing.T, path string, data []byte) {
		if _, err := b.OpenEntry(path, data); err != nil && !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrUnknownTerm) {
			t.Fatalf("OpenEntry: unexpected error %v", err)
		}
		pt, err := b.Decrypt(path, 1, data)
		if err != nil {
			if !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrUnknownTerm) {
				t.Fatalf("unexpected error %v", err)
			}
		} else if len(pt) != len(data)-minCiphertext {
			t.Fatalf("plaintext is %d bytes from %d bytes of ciphertext", len(pt), len(data))
		}
		ct, err := b.Encrypt(path, 1, data)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := b.Decrypt(path, 1, ct); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

// encryptLegacy seals plaintext as coffer did before versions were bound:
// additional data of the path only, term without the bound flag.
func encryptLegacy(t testing.TB, b *Barrier, path string, plaintext []byte) []byte {
	t.Helper()
	ct := make([]byte, headerSize, headerSize+len(plaintext)+tagSize)
	binary.BigEndian.PutUint32(ct, b.active)
	randRead(ct[termSize:headerSize])
	return b.aeads[b.active].Seal(ct, ct[termSize:headerSize], plaintext, appendLegacyAAD(nil, b.active, path))
}

// TestBarrierBindsVersion: a secret's ciphertext opens only as the version
// it was sealed for, so a stored ciphertext replayed as a newer version (by
// a forged log entry) does not decrypt.
func TestBarrierBindsVersion(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	ct, err := b.Encrypt("secret/a", 3, []byte("v3"))
	if err != nil {
		t.Fatal(err)
	}
	if !IsBound(ct) {
		t.Fatal("Encrypt made an unbound ciphertext")
	}
	if pt, err := b.Decrypt("secret/a", 3, ct); err != nil || string(pt) != "v3" {
		t.Fatalf("Decrypt as version 3: %q, %v", pt, err)
	}
	for _, v := range []uint64{0, 1, 2, 4, 1 << 32, 3 << 32} {
		if _, err := b.Decrypt("secret/a", v, ct); !errors.Is(err, ErrDecrypt) {
			t.Errorf("version 3 opened as version %d: %v, want ErrDecrypt", v, err)
		}
	}
	if _, err := b.OpenEntry("secret/a", ct); !errors.Is(err, ErrDecrypt) {
		t.Errorf("a secret's value opened as a system entry: %v", err)
	}
	if _, err := b.Encrypt("secret/a", 0, []byte("x")); err == nil {
		t.Error("Encrypt for version 0 succeeded")
	}
}

// TestBarrierEntries: a system entry opens only at its key, never as a
// secret's version, and nothing unbound (a plaintext record, a value sealed
// before entries were sealed) opens as an entry.
func TestBarrierEntries(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	ct, err := b.SealEntry("token/ab", []byte(`{"policies":["root"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.OpenEntry("token/ab", ct); err != nil || string(pt) != `{"policies":["root"]}` {
		t.Fatalf("OpenEntry: %q, %v", pt, err)
	}
	if _, err := b.OpenEntry("token/ac", ct); !errors.Is(err, ErrDecrypt) {
		t.Errorf("entry opened at another key: %v", err)
	}
	for v := range uint64(3) {
		if _, err := b.Decrypt("token/ab", v, ct); !errors.Is(err, ErrDecrypt) {
			t.Errorf("entry opened as version %d of a secret: %v", v, err)
		}
	}
	legacy := encryptLegacy(t, b, "token/ab", []byte("x"))
	if _, err := b.OpenEntry("token/ab", legacy); !errors.Is(err, ErrDecrypt) {
		t.Errorf("unbound ciphertext opened as an entry: %v", err)
	}
	if _, err := b.OpenEntry("token/ab", []byte(`{"policies":["root"]}`)); !errors.Is(err, ErrDecrypt) {
		t.Errorf("plaintext opened as an entry: %v", err)
	}
}

// TestBarrierLegacyValues: values sealed before versions were bound still
// open, for their path only and whatever version is asked.
func TestBarrierLegacyValues(t *testing.T) {
	b := mustBarrier(t, mustKeyring(t))
	old := encryptLegacy(t, b, "secret/a", []byte("old"))
	if IsBound(old) {
		t.Fatal("legacy ciphertext reads as bound")
	}
	for _, v := range []uint64{1, 7} {
		if pt, err := b.Decrypt("secret/a", v, old); err != nil || string(pt) != "old" {
			t.Fatalf("legacy value as version %d: %q, %v", v, pt, err)
		}
	}
	if _, err := b.Decrypt("secret/b", 1, old); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("legacy value at another path: %v", err)
	}
	// Setting the bound flag on a legacy ciphertext does not make it open
	// as a bound one: the flag is part of the authenticated term.
	flagged := bytes.Clone(old)
	flagged[0] |= 0x80
	if _, err := b.Decrypt("secret/a", 1, flagged); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("legacy value with the bound flag set: %v", err)
	}
}
