package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"math/bits"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

// randomSecret returns n random bytes.
func randomSecret(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// pick returns the shares selected by the bits of mask, shuffled.
func pick(rng *mrand.Rand, shares [][]byte, mask uint64) [][]byte {
	var out [][]byte
	for i, s := range shares {
		if mask&(1<<i) != 0 {
			out = append(out, s)
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// checkSubsets combines every subset of shares selected by a mask with at
// least minSize bits and checks that subsets of at least k shares recover
// secret and smaller ones do not.
func checkSubsets(t *testing.T, rng *mrand.Rand, secret []byte, shares [][]byte, k, minSize int) {
	t.Helper()
	n := len(shares)
	for mask := uint64(1); mask < 1<<n; mask++ {
		size := bits.OnesCount64(mask)
		if size < minSize {
			continue
		}
		subset := pick(rng, shares, mask)
		got, err := Combine(subset)
		switch {
		case size < 2:
			if !errors.Is(err, ErrInvalidShare) {
				t.Fatalf("n=%d k=%d mask=%b: Combine of one share: err = %v, want ErrInvalidShare", n, k, mask, err)
			}
		case err != nil:
			t.Fatalf("n=%d k=%d mask=%b: Combine: %v", n, k, mask, err)
		case size >= k && !bytes.Equal(got, secret):
			t.Fatalf("n=%d k=%d mask=%b: %d shares did not recover the secret", n, k, mask, size)
		case size < k && bytes.Equal(got, secret):
			t.Fatalf("n=%d k=%d mask=%b: %d shares (below threshold) recovered the secret", n, k, mask, size)
		}
	}
}

func TestSplitCombineEverySubset(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	for n := 2; n <= 6; n++ {
		for k := 2; k <= n; k++ {
			secret := randomSecret(t, 32)
			shares, err := Split(secret, n, k)
			if err != nil {
				t.Fatalf("Split(n=%d, k=%d): %v", n, k, err)
			}
			checkSubsets(t, rng, secret, shares, k, 1)
		}
	}
}

func TestSplitCombineTenOfSeven(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(3, 4))
	secret := randomSecret(t, 32)
	shares, err := Split(secret, 10, 7)
	if err != nil {
		t.Fatal(err)
	}
	// Every subset of 6 (below threshold) to 10 shares.
	checkSubsets(t, rng, secret, shares, 7, 6)
}

func TestSplitCombineLargeSampled(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(5, 6))
	for _, c := range []struct{ n, k int }{{255, 2}, {255, 128}, {255, 255}, {50, 17}} {
		secret := randomSecret(t, 32)
		shares, err := Split(secret, c.n, c.k)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			perm := rng.Perm(c.n)
			subset := make([][]byte, 0, c.k)
			for _, i := range perm[:c.k] {
				subset = append(subset, shares[i])
			}
			got, err := Combine(subset)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d: %d random shares did not recover the secret (err %v)", c.n, c.k, c.k, err)
			}
			if c.k > 2 {
				got, err := Combine(subset[:c.k-1])
				if err != nil || bytes.Equal(got, secret) {
					t.Fatalf("n=%d k=%d: k-1 shares: err %v, recovered the secret: %v", c.n, c.k, err, bytes.Equal(got, secret))
				}
			}
		}
	}
}

func TestSplitSecretLengths(t *testing.T) {
	for _, n := range []int{1, 2, 3, 31, 32, 33, 1000} {
		secret := randomSecret(t, n)
		orig := bytes.Clone(secret)
		shares, err := Split(secret, 5, 3)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(secret, orig) {
			t.Fatal("Split modified the secret")
		}
		got, err := Combine(shares[1:4])
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("len %d: round trip failed (err %v)", n, err)
		}
	}
}

func TestSplitShareShape(t *testing.T) {
	sets := map[string]bool{}
	for range 20 {
		shares, err := Split(randomSecret(t, 16), 5, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(shares) != 5 {
			t.Fatalf("got %d shares, want 5", len(shares))
		}
		var xs []byte
		seen := map[byte]bool{}
		for _, s := range shares {
			if len(s) != 17 {
				t.Fatalf("share is %d bytes, want 17", len(s))
			}
			x := s[16]
			if x == 0 || seen[x] {
				t.Fatalf("bad or repeated x coordinate %d", x)
			}
			seen[x] = true
			xs = append(xs, x)
		}
		sets[string(xs)] = true
	}
	// 20 random draws of 5 ordered distinct x coordinates from 255
	// essentially never repeat; a fixed assignment always would.
	if len(sets) < 2 {
		t.Fatal("x coordinates are not random")
	}
}

func TestSplitErrors(t *testing.T) {
	secret := []byte("secret")
	for _, c := range []struct {
		name             string
		secret           []byte
		parts, threshold int
		mention          string
	}{
		{"nil secret", nil, 5, 3, "secret"},
		{"empty secret", []byte{}, 5, 3, "secret"},
		{"threshold 1", secret, 5, 1, "threshold"},
		{"threshold 0", secret, 5, 0, "threshold"},
		{"negative threshold", secret, 5, -1, "threshold"},
		{"parts below threshold", secret, 2, 3, "parts"},
		{"parts 256", secret, 256, 3, "parts"},
		{"parts huge", secret, 1 << 20, 3, "parts"},
		{"negative parts", secret, -5, 3, "parts"},
	} {
		t.Run(c.name, func(t *testing.T) {
			shares, err := Split(c.secret, c.parts, c.threshold)
			if !errors.Is(err, ErrInvalidSplit) || shares != nil {
				t.Fatalf("Split: shares %v, err %v; want ErrInvalidSplit", shares != nil, err)
			}
			if !strings.Contains(err.Error(), c.mention) {
				t.Errorf("error %q does not name %q", err, c.mention)
			}
		})
	}
}

func TestCombineErrors(t *testing.T) {
	shares, err := Split([]byte("0123456789"), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	zeroX := bytes.Clone(shares[1])
	zeroX[len(zeroX)-1] = 0
	sameX := bytes.Clone(shares[1])
	sameX[len(sameX)-1] = shares[0][len(shares[0])-1]
	for _, c := range []struct {
		name   string
		shares [][]byte
		want   error
	}{
		{"nil", nil, ErrInvalidShare},
		{"one share", shares[:1], ErrInvalidShare},
		{"empty shares", [][]byte{{}, {}}, ErrInvalidShare},
		{"one-byte shares", [][]byte{{1}, {2}}, ErrInvalidShare},
		{"nil share", [][]byte{shares[0], nil}, ErrInvalidShare},
		{"length mismatch", [][]byte{shares[0], shares[1][1:]}, ErrInvalidShare},
		{"x is zero", [][]byte{shares[0], zeroX}, ErrInvalidShare},
		{"same share twice", [][]byte{shares[0], shares[2], shares[0]}, ErrDuplicateShare},
		{"same x", [][]byte{shares[0], sameX}, ErrDuplicateShare},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Combine(c.shares)
			if !errors.Is(err, c.want) || got != nil {
				t.Fatalf("Combine: got %v, err %v; want %v", got != nil, err, c.want)
			}
		})
	}
}

// FuzzCombine checks that Combine never panics on arbitrary shares, and that
// Split followed by Combine of any subset of at least the threshold recovers
// the secret.
func FuzzCombine(f *testing.F) {
	f.Add([]byte{3, 1, 2, 3, 4, 5, 6}, []byte("secret"), uint8(5), uint8(3), uint64(0b10101))
	f.Add([]byte{}, []byte{0}, uint8(2), uint8(2), uint64(3))
	f.Add([]byte{0, 0, 0}, []byte{0xff, 0x00}, uint8(255), uint8(7), ^uint64(0))
	f.Fuzz(func(t *testing.T, data, secret []byte, parts, threshold uint8, mask uint64) {
		// Arbitrary input: data[0] picks a share length, the rest is cut
		// into shares of that length (the last may be shorter).
		if len(data) > 0 {
			size := int(data[0] % 40)
			var shares [][]byte
			for rest := data[1:]; len(rest) > 0; {
				n := min(size, len(rest))
				if n == 0 {
					n = len(rest)
				}
				shares = append(shares, rest[:n])
				rest = rest[n:]
			}
			if got, err := Combine(shares); err == nil && len(got) != len(shares[0])-1 {
				t.Fatalf("Combine returned %d bytes for %d-byte shares", len(got), len(shares[0]))
			}
		}

		// Valid input: shares from Split.
		if len(secret) == 0 || len(secret) > 256 {
			return
		}
		n := 2 + int(parts)%63 // 2..64, so mask covers every share
		k := 2 + int(threshold)%(n-1)
		shares, err := Split(secret, n, k)
		if err != nil {
			t.Fatalf("Split(n=%d, k=%d): %v", n, k, err)
		}
		var subset [][]byte
		for i, s := range shares {
			if mask&(1<<i) != 0 {
				subset = append(subset, s)
			}
		}
		got, err := Combine(subset)
		if len(subset) >= k && (err != nil || !bytes.Equal(got, secret)) {
			t.Fatalf("n=%d k=%d: %d shares did not recover the secret (err %v)", n, k, len(subset), err)
		}
	})
}
