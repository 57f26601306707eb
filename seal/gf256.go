package seal

// Arithmetic in GF(2^8) with the AES reduction polynomial
// x^8 + x^4 + x^3 + x + 1 (0x11b).
//
// Every operation runs in constant time with respect to its operands: no
// table lookups indexed by data and no data-dependent branches. Addition
// and subtraction are both XOR.

// gfMul returns a·b in GF(2^8).
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		// -(b&1) is 0xff when the low bit of b is set, else 0x00.
		p ^= a & -(b & 1)
		// Multiply a by x, reducing by 0x11b when the high bit falls off.
		carry := -(a >> 7)
		a = a<<1 ^ 0x1b&carry
		b >>= 1
	}
	return p
}

// gfInv returns the multiplicative inverse of a, computed as a^254 with a
// fixed square-and-multiply chain. gfInv(0) is 0.
func gfInv(a byte) byte {
	// 254 = 2 + 4 + 8 + 16 + 32 + 64 + 128.
	sq, r := a, byte(1)
	for range 7 {
		sq = gfMul(sq, sq)
		r = gfMul(r, sq)
	}
	return r
}

// gfDiv returns a/b in GF(2^8); b must be nonzero.
func gfDiv(a, b byte) byte {
	return gfMul(a, gfInv(b))
}
