package seal

import "testing"

// refMul multiplies in GF(2^8) the schoolbook way: carry-less product, then
// reduction modulo x^8 + x^4 + x^3 + x + 1.
func refMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b&(1<<i) != 0 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p&(1<<i) != 0 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

// logExpTables builds log/exp tables from the generator 3 using refMul.
func logExpTables(t *testing.T) (logT [256]int, expT [255]byte) {
	t.Helper()
	x := byte(1)
	seen := map[byte]bool{}
	for i := range 255 {
		expT[i] = x
		logT[x] = i
		seen[x] = true
		x = refMul(x, 3)
	}
	if len(seen) != 255 || x != 1 {
		t.Fatalf("3 does not generate GF(2^8)*: %d elements, 3^255 = %#x", len(seen), x)
	}
	return logT, expT
}

func TestGFMulExhaustive(t *testing.T) {
	logT, expT := logExpTables(t)
	for a := range 256 {
		for b := range 256 {
			got := gfMul(byte(a), byte(b))
			if want := refMul(byte(a), byte(b)); got != want {
				t.Fatalf("gfMul(%#x, %#x) = %#x, want %#x", a, b, got, want)
			}
			var viaLog byte
			if a != 0 && b != 0 {
				viaLog = expT[(logT[a]+logT[b])%255]
			}
			if got != viaLog {
				t.Fatalf("gfMul(%#x, %#x) = %#x, log/exp tables say %#x", a, b, got, viaLog)
			}
		}
	}
}

func TestGFMulKnownValues(t *testing.T) {
	// FIPS-197 §4.2 examples.
	for _, c := range []struct{ a, b, want byte }{
		{0x57, 0x83, 0xc1},
		{0x57, 0x13, 0xfe},
		{0x53, 0xca, 0x01},
	} {
		if got := gfMul(c.a, c.b); got != c.want {
			t.Errorf("gfMul(%#x, %#x) = %#x, want %#x", c.a, c.b, got, c.want)
		}
	}
}

func TestGFInvExhaustive(t *testing.T) {
	logT, expT := logExpTables(t)
	if got := gfInv(0); got != 0 {
		t.Fatalf("gfInv(0) = %#x, want 0", got)
	}
	for a := 1; a < 256; a++ {
		inv := gfInv(byte(a))
		if want := expT[(255-logT[a])%255]; inv != want {
			t.Fatalf("gfInv(%#x) = %#x, want %#x", a, inv, want)
		}
		if p := refMul(byte(a), inv); p != 1 {
			t.Fatalf("%#x · gfInv(%#x) = %#x, want 1", a, a, p)
		}
	}
}

func TestGFDivExhaustive(t *testing.T) {
	for a := range 256 {
		for b := 1; b < 256; b++ {
			q := gfDiv(byte(a), byte(b))
			if got := refMul(q, byte(b)); got != byte(a) {
				t.Fatalf("gfDiv(%#x, %#x) = %#x, but %#x · %#x = %#x", a, b, q, q, b, got)
			}
		}
	}
}
