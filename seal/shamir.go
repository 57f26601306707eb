package seal

import (
	"crypto/rand"
	"fmt"
)

// maxParts is the largest number of shares: x coordinates are the nonzero
// elements of GF(2^8).
const maxParts = 255

// Split divides secret into parts shares of which any threshold recover it
// (Shamir's scheme over GF(2^8)); fewer reveal nothing about it.
//
// Each share is len(secret)+1 bytes: the polynomial values for every secret
// byte followed by the share's x coordinate. The x coordinates are distinct,
// nonzero and chosen at random. It requires a non-empty secret and
// 2 <= threshold <= parts <= 255, and returns an error wrapping
// ErrInvalidSplit naming the bad argument otherwise. The caller owns the
// shares and should zero them once they are handed out.
func Split(secret []byte, parts, threshold int) ([][]byte, error) {
	switch {
	case len(secret) == 0:
		return nil, fmt.Errorf("%w: secret is empty", ErrInvalidSplit)
	case threshold < 2:
		return nil, fmt.Errorf("%w: threshold is %d, it must be at least 2", ErrInvalidSplit, threshold)
	case parts > maxParts:
		return nil, fmt.Errorf("%w: parts is %d, it must be at most %d", ErrInvalidSplit, parts, maxParts)
	case parts < threshold:
		return nil, fmt.Errorf("%w: parts is %d, it must be at least threshold (%d)", ErrInvalidSplit, parts, threshold)
	}

	xs := randomXs(parts)

	// coeffs holds, for each secret byte, the threshold-1 random
	// coefficients of degree 1 and up; the constant term is the secret byte.
	deg := threshold - 1
	coeffs := make([]byte, len(secret)*deg)
	defer clear(coeffs)
	randRead(coeffs)

	shares := make([][]byte, parts)
	for i, x := range xs {
		share := make([]byte, len(secret)+1)
		for j, s := range secret {
			c := coeffs[j*deg : (j+1)*deg]
			// Horner's rule: ((c[deg-1]·x + c[deg-2])·x + … + c[0])·x + s.
			y := c[deg-1]
			for k := deg - 2; k >= 0; k-- {
				y = gfMul(y, x) ^ c[k]
			}
			share[j] = gfMul(y, x) ^ s
		}
		share[len(secret)] = x
		shares[i] = share
	}
	return shares, nil
}

// Combine recovers the secret from shares produced by Split by Lagrange
// interpolation at zero. Given at least the threshold of shares it returns
// the secret; given fewer it returns unrelated bytes (it cannot tell).
//
// It requires at least two shares, all of the same length of at least two
// bytes, no zero x coordinate (ErrInvalidShare) and no two shares with the
// same x coordinate (ErrDuplicateShare). The caller owns the returned secret
// and should zero it after use.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) < 2 {
		return nil, fmt.Errorf("%w: %d share(s) given, at least 2 are needed", ErrInvalidShare, len(shares))
	}
	n := len(shares[0])
	if n < 2 {
		return nil, fmt.Errorf("%w: share 0 is %d byte(s), at least 2 are needed", ErrInvalidShare, n)
	}
	xs := make([]byte, len(shares))
	var seen [256]int // 1 + index of the share holding each x; x is public
	for i, s := range shares {
		if len(s) != n {
			return nil, fmt.Errorf("%w: share %d is %d bytes but share 0 is %d", ErrInvalidShare, i, len(s), n)
		}
		x := s[n-1]
		if x == 0 {
			return nil, fmt.Errorf("%w: share %d has index 0", ErrInvalidShare, i)
		}
		if j := seen[x]; j != 0 {
			return nil, fmt.Errorf("%w: shares %d and %d have the same index", ErrDuplicateShare, j-1, i)
		}
		seen[x] = i + 1
		xs[i] = x
	}

	// Lagrange basis at zero: l_i = Π_{j≠i} x_j / (x_i - x_j), where
	// subtraction is XOR. It depends only on the public x coordinates.
	basis := make([]byte, len(xs))
	for i, xi := range xs {
		l := byte(1)
		for j, xj := range xs {
			if i != j {
				l = gfMul(l, gfDiv(xj, xi^xj))
			}
		}
		basis[i] = l
	}

	secret := make([]byte, n-1)
	for i, s := range shares {
		l := basis[i]
		for j := range secret {
			secret[j] ^= gfMul(l, s[j])
		}
	}
	return secret, nil
}

// randomXs returns n distinct random x coordinates in 1..255: the first n
// entries of a Fisher–Yates shuffle driven by crypto/rand.
func randomXs(n int) []byte {
	var all [maxParts]byte
	for i := range all {
		all[i] = byte(i + 1)
	}
	r := byteSource{}
	for i := range n {
		j := i + r.uniform(maxParts-i)
		all[i], all[j] = all[j], all[i]
	}
	return append([]byte(nil), all[:n]...)
}

// byteSource draws unbiased small integers from crypto/rand, buffering the
// random bytes.
type byteSource struct {
	buf [64]byte
	off int
	ok  bool
}

// uniform returns an integer uniformly distributed in [0, m) for
// 1 <= m <= 256, by rejection sampling of random bytes.
func (r *byteSource) uniform(m int) int {
	limit := 256 - 256%m // largest multiple of m not above 256
	for {
		if !r.ok || r.off == len(r.buf) {
			randRead(r.buf[:])
			r.off, r.ok = 0, true
		}
		b := int(r.buf[r.off])
		r.off++
		if b < limit {
			return b % m
		}
	}
}

// randRead fills b from crypto/rand. Since Go 1.24 crypto/rand.Read never
// returns an error: it crashes the program if the system source fails,
// which is the only safe behaviour for key generation.
func randRead(b []byte) {
	_, _ = rand.Read(b)
}
