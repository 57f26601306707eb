package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{1, 1}, {2, 2}, {5, 3}, {255, 2}, {255, 255}, DefaultConfig()} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, c := range []struct {
		cfg     Config
		mention string
	}{
		{Config{}, "-key-shares"},
		{Config{-1, 1}, "-key-shares"},
		{Config{256, 3}, "-key-shares"},
		{Config{5, 0}, "-key-threshold"},
		{Config{5, -2}, "-key-threshold"},
		{Config{5, 6}, "-key-threshold"},
		{Config{1, 2}, "-key-threshold"},
		{Config{5, 1}, "threshold 1 requires a single share"},
		{Config{2, 1}, "threshold 1 requires a single share"},
	} {
		err := c.cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", c.cfg, err)
			continue
		}
		if !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%+v: %q does not mention %q", c.cfg, err, c.mention)
		}
	}
}

func TestInitialize(t *testing.T) {
	for _, cfg := range []Config{{5, 3}, {3, 3}, {2, 2}, {1, 1}, {10, 7}} {
		res, err := Initialize(cfg)
		if err != nil {
			t.Fatalf("%+v: %v", cfg, err)
		}
		if res.Stored.Shares != cfg.Shares || res.Stored.Threshold != cfg.Threshold || len(res.Shares) != cfg.Shares {
			t.Fatalf("%+v: stored %d/%d with %d shares", cfg, res.Stored.Shares, res.Stored.Threshold, len(res.Shares))
		}
		if err := res.Stored.validate(); err != nil {
			t.Fatalf("%+v: stored is invalid: %v", cfg, err)
		}
		for _, s := range res.Shares {
			if len(s) != cfg.shareSize() {
				t.Fatalf("%+v: share is %d bytes, want %d", cfg, len(s), cfg.shareSize())
			}
		}
		// White box: the shares open the root key, which opens term 1.
		unsealKey := res.Shares[0]
		if cfg.Shares > 1 {
			if unsealKey, err = Combine(res.Shares[:cfg.Threshold]); err != nil {
				t.Fatal(err)
			}
		}
		rootKey, err := unwrap(unsealKey, res.Stored.WrappedRootKey, aadRootKey)
		if err != nil {
			t.Fatalf("%+v: shares do not open the root key: %v", cfg, err)
		}
		kr, _, err := openKeyring(rootKey, res.WrappedKeyring)
		if err != nil || kr.ActiveTerm() != 1 {
			t.Fatalf("%+v: keyring: %v", cfg, err)
		}
	}
	if _, err := Initialize(Config{5, 1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Initialize(5/1): %v, want ErrInvalidConfig", err)
	}
}

func TestInitializeIsRandom(t *testing.T) {
	a, err := Initialize(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Initialize(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Stored.WrappedRootKey, b.Stored.WrappedRootKey) || bytes.Equal(a.Shares[0], b.Shares[0]) {
		t.Fatal("two clusters share key material")
	}
}

func TestStoredMarshalRoundTrip(t *testing.T) {
	res, err := Initialize(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	b := res.Stored.Marshal()
	if !bytes.Equal(b, res.Stored.Marshal()) {
		t.Fatal("Marshal is not stable")
	}
	got, err := UnmarshalStored(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Shares != 5 || got.Threshold != 3 || !bytes.Equal(got.WrappedRootKey, res.Stored.WrappedRootKey) {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestUnmarshalStoredErrors(t *testing.T) {
	wk := `"` + strings.Repeat("A", 80) + `"` // 60 bytes of base64
	for _, in := range []string{
		``,
		`null`,
		`{}`,
		`[]`,
		`{"version":1,"shares":5,"threshold":3}`,
		`{"version":2,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `}`,
		`{"version":1,"shares":5,"threshold":1,"wrapped_root_key":` + wk + `}`,
		`{"version":1,"shares":0,"threshold":0,"wrapped_root_key":` + wk + `}`,
		`{"version":1,"shares":5,"threshold":3,"wrapped_root_key":"AAAA"}`,
		`{"version":1,"shares":5,"threshold":3,"wrapped_root_key":"not base64!"}`,
		`{"version":1,"shares":"5","threshold":3,"wrapped_root_key":` + wk + `}`,
		`{"version":1,"shares":5,"threshold":3,"wrapped_root_key":` + wk,
	} {
		if s, err := UnmarshalStored([]byte(in)); !errors.Is(err, ErrInvalidStored) || s != nil {
			t.Errorf("UnmarshalStored(%s): %v, want ErrInvalidStored", in, err)
		}
	}
	ok := `{"version":1,"shares":5,"threshold":3,"wrapped_root_key":` + wk + `}`
	if _, err := UnmarshalStored([]byte(ok)); err != nil {
		t.Fatalf("UnmarshalStored(%s): %v", ok, err)
	}
}

// FuzzUnmarshalStored checks that UnmarshalStored never panics and that
// what it accepts is valid and round-trips.
func FuzzUnmarshalStored(f *testing.F) {
	for _, cfg := range []Config{{5, 3}, {1, 1}} {
		res, err := Initialize(cfg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(res.Stored.Marshal())
	}
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := UnmarshalStored(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidStored) {
				t.Fatalf("error %v does not wrap ErrInvalidStored", err)
			}
			return
		}
		if err := s.validate(); err != nil {
			t.Fatalf("accepted an invalid Stored: %v", err)
		}
		again, err := UnmarshalStored(s.Marshal())
		if err != nil || again.Shares != s.Shares || again.Threshold != s.Threshold || !bytes.Equal(again.WrappedRootKey, s.WrappedRootKey) {
			t.Fatalf("accepted Stored does not round trip: %v", err)
		}
	})
}
