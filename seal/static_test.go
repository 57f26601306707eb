package seal

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func staticKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	randRead(k)
	return k
}

func TestParseStaticKey(t *testing.T) {
	key := staticKey(t)
	for name, in := range map[string][]byte{
		"raw":            key,
		"hex":            []byte(hex.EncodeToString(key) + "\n"),
		"base64":         []byte("  " + base64.StdEncoding.EncodeToString(key) + "\n"),
		"base64 raw url": []byte(base64.RawURLEncoding.EncodeToString(key)),
	} {
		got, err := ParseStaticKey(in)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %x, %v", name, got, err)
		}
	}
	secretish := base64.StdEncoding.EncodeToString(key[:31])
	for name, in := range map[string][]byte{
		"empty":     nil,
		"spaces":    []byte(" \n"),
		"31 bytes":  key[:31],
		"33 bytes":  append(bytes.Clone(key), 1),
		"short b64": []byte(secretish),
		"not hex":   []byte(strings.Repeat("zz", 32)),
	} {
		got, err := ParseStaticKey(in)
		if !errors.Is(err, ErrInvalidStaticKey) || got != nil {
			t.Errorf("%s: %x, %v; want ErrInvalidStaticKey", name, got, err)
			continue
		}
		if strings.Contains(err.Error(), secretish) || strings.Contains(err.Error(), hex.EncodeToString(key[:4])) {
			t.Errorf("%s: the error shows the key: %v", name, err)
		}
	}
}

func TestStaticSealUnseal(t *testing.T) {
	key := staticKey(t)
	res, err := InitializeStatic(DefaultConfig(), key)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored.SealType() != TypeStatic {
		t.Fatalf("type %q", res.Stored.SealType())
	}
	back, err := UnmarshalStored(res.Stored.Marshal())
	if err != nil || back.SealType() != TypeStatic || !bytes.Equal(back.StaticWrappedRootKey, res.Stored.StaticWrappedRootKey) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}

	s := New(Options{})
	st, err := s.UnsealStatic(res.Stored, res.WrappedKeyring, key)
	if err != nil || st.Sealed || st.Type != TypeStatic {
		t.Fatalf("UnsealStatic: %+v, %v", st, err)
	}
	checkUnsealed(t, s, 1)

	// A wrong key opens nothing, and says so without the key.
	other := New(Options{})
	wrong := staticKey(t)
	if _, err := other.UnsealStatic(res.Stored, res.WrappedKeyring, wrong); !errors.Is(err, ErrWrongStaticKey) || !other.Sealed() {
		t.Fatalf("wrong key: %v, sealed %v", err, other.Sealed())
	} else if strings.Contains(err.Error(), hex.EncodeToString(wrong)) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(wrong)) {
		t.Fatalf("error shows the key: %v", err)
	}
	// The recovery shares open the root key (generate-root, rekey, and
	// a migration back to the Shamir seal) through the operator key.
	rec := New(Options{})
	submit(t, rec, res, res.Shares[0], res.Shares[1], res.Shares[2])
	checkUnsealed(t, rec, 1)

	// A Shamir record never auto-unseals.
	shamir := mustInit(t, DefaultConfig())
	if _, err := New(Options{}).UnsealStatic(shamir.Stored, shamir.WrappedKeyring, key); !errors.Is(err, ErrInvalidStored) {
		t.Fatalf("static unseal of a Shamir record: %v", err)
	}
}

// TestMigrationRecords: Shamir → static keeps the operator key (the
// unseal shares become recovery shares) and adds the static copy; static
// → Shamir drops it again.
func TestMigrationRecords(t *testing.T) {
	res := mustInit(t, DefaultConfig())
	v1 := res.Stored.Marshal()
	if !bytes.Contains(v1, []byte(`"version":1`)) || bytes.Contains(v1, []byte("type")) {
		t.Fatalf("a Shamir record must keep encoding version 1 without a type: %s", v1)
	}
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1], res.Shares[2])
	key := staticKey(t)
	sw, err := s.WrapRootKeyStatic(key)
	if err != nil {
		t.Fatal(err)
	}
	static := res.Stored.WithStatic(sw)
	if _, err := New(Options{}).UnsealStatic(static, res.WrappedKeyring, key); err != nil {
		t.Fatalf("migrated record does not auto-unseal: %v", err)
	}
	back := static.WithoutStatic()
	if !bytes.Equal(back.Marshal(), v1) {
		t.Fatalf("static → Shamir does not give the Shamir record back:\n%s\n%s", back.Marshal(), v1)
	}
	s.Seal()
	if _, err := s.WrapRootKeyStatic(key); !errors.Is(err, ErrSealed) {
		t.Fatalf("WrapRootKeyStatic sealed: %v", err)
	}
}

func TestUnmarshalStoredTyped(t *testing.T) {
	wk := `"` + strings.Repeat("A", 80) + `"`
	for _, in := range []string{
		`{"version":1,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"type":"static","static_wrapped_root_key":` + wk + `}`,
		`{"version":2,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"type":"shamir"}`,
		`{"version":2,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"type":"static"}`,
		`{"version":2,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"type":"static","static_wrapped_root_key":"AAAA"}`,
		`{"version":2,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"type":"awskms","static_wrapped_root_key":` + wk + `}`,
		`{"version":1,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"static_wrapped_root_key":` + wk + `}`,
	} {
		if _, err := UnmarshalStored([]byte(in)); !errors.Is(err, ErrInvalidStored) {
			t.Errorf("UnmarshalStored(%s): %v, want ErrInvalidStored", in, err)
		}
	}
	ok := `{"version":2,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `,"type":"static","static_wrapped_root_key":` + wk + `}`
	if s, err := UnmarshalStored([]byte(ok)); err != nil || s.SealType() != TypeStatic {
		t.Fatalf("UnmarshalStored(%s): %v", ok, err)
	}
}

func TestRekey(t *testing.T) {
	for _, typ := range []string{TypeShamir, TypeStatic} {
		t.Run(typ, func(t *testing.T) {
			key := staticKey(t)
			res := mustInit(t, DefaultConfig())
			if typ == TypeStatic {
				var err error
				if res, err = InitializeStatic(DefaultConfig(), key); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := NewRekey(res.Stored, Config{Shares: 3, Threshold: 4}); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("invalid new config: %v", err)
			}
			r, err := NewRekey(res.Stored, Config{Shares: 4, Threshold: 2})
			if err != nil {
				t.Fatal(err)
			}
			// A wrong share makes the threshold fail, and drops the rest.
			bad := bytes.Clone(res.Shares[2])
			bad[0] ^= 1
			for _, sh := range [][]byte{res.Shares[0], res.Shares[1]} {
				if out, err := r.Add(sh); out != nil || err != nil {
					t.Fatalf("early Add: %v, %v", out, err)
				}
			}
			if out, err := r.Add(bad); !errors.Is(err, ErrWrongShares) || out != nil || r.Progress() != 0 {
				t.Fatalf("bad share: %v, %v, progress %d", out, err, r.Progress())
			}
			var out *RekeyResult
			for _, sh := range res.Shares[2:] {
				if out, err = r.Add(sh); err != nil {
					t.Fatal(err)
				}
			}
			if out == nil || len(out.Shares) != 4 || out.Stored.Shares != 4 || out.Stored.Threshold != 2 || out.Stored.SealType() != typ {
				t.Fatalf("rekey result: %+v", out)
			}
			if typ == TypeStatic && !bytes.Equal(out.Stored.StaticWrappedRootKey, res.Stored.StaticWrappedRootKey) {
				t.Fatal("rekey changed the static copy of the root key")
			}
			next := &InitResult{Stored: out.Stored, WrappedKeyring: res.WrappedKeyring}
			// Old shares open nothing under the new record.
			old := New(Options{})
			var uerr error
			for _, sh := range res.Shares[:3] {
				if _, uerr = old.Unseal(next.Stored, next.WrappedKeyring, sh); uerr != nil {
					break
				}
			}
			if !errors.Is(uerr, ErrInvalidShare) && !errors.Is(uerr, ErrWrongShares) || !old.Sealed() {
				t.Fatalf("old shares after rekey: %v, sealed %v", uerr, old.Sealed())
			}
			// The new shares open the same root key and keyring.
			s := New(Options{})
			submit(t, s, next, out.Shares[3], out.Shares[1])
			checkUnsealed(t, s, 1)
			s0 := New(Options{})
			submit(t, s0, res, res.Shares[:3]...)
			f0, _ := s0.Fingerprint()
			f1, _ := s.Fingerprint()
			if f0 == "" || f0 != f1 {
				t.Fatalf("fingerprint changed with the rekey: %q %q", f0, f1)
			}
			if f2, _ := New(Options{}).Fingerprint(); f2 != "" {
				t.Fatal("a sealed node has a fingerprint")
			}
		})
	}
}

// TestForgedRecordsOpenNothing: a peer that can write the replicated seal
// record (a compromised node) forges one, to let its own shares or its
// own static key in. The keyring is sealed by the real root key, so a
// forged operator key or static key opens only a forged root key, and no
// node unseals with it: the attacker's shares (or key) get nowhere, and a
// node with the real static key refuses the forged copy too.
func TestForgedRecordsOpenNothing(t *testing.T) {
	key := staticKey(t)
	real, err := InitializeStatic(DefaultConfig(), key)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := InitializeStatic(DefaultConfig(), staticKey(t))
	if err != nil {
		t.Fatal(err)
	}
	// The attacker's operator key in the real record: its shares open the
	// attacker's root key, which does not open the real keyring.
	forged := real.Stored.Clone()
	forged.WrappedRootKey = evil.Stored.WrappedRootKey
	s := New(Options{})
	var uerr error
	for _, sh := range evil.Shares[:3] {
		if _, uerr = s.Unseal(forged, real.WrappedKeyring, sh); uerr != nil {
			break
		}
	}
	if !errors.Is(uerr, ErrInvalidKeyring) || !s.Sealed() {
		t.Fatalf("attacker's shares on a forged record: %v, sealed %v", uerr, s.Sealed())
	}
	// The attacker's static copy in the real record: the real static key
	// does not open it, nor does the attacker's own key open the keyring.
	forged = real.Stored.Clone()
	forged.StaticWrappedRootKey = evil.Stored.StaticWrappedRootKey
	if _, err := New(Options{}).UnsealStatic(forged, real.WrappedKeyring, key); !errors.Is(err, ErrWrongStaticKey) {
		t.Fatalf("real key on a forged static copy: %v", err)
	}
	// A Shamir record turned static with the attacker's copy: same.
	shamir := mustInit(t, DefaultConfig())
	forged = shamir.Stored.WithStatic(evil.Stored.StaticWrappedRootKey)
	if _, err := New(Options{}).UnsealStatic(forged, shamir.WrappedKeyring, key); !errors.Is(err, ErrWrongStaticKey) {
		t.Fatalf("forged migration: %v", err)
	}
}
