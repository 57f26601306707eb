package seal

import (
	"fmt"
	"testing"
)

func BenchmarkBarrierEncrypt(b *testing.B) {
	barrier := mustBarrier(b, mustKeyring(b))
	for _, size := range []int{256, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			pt := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := barrier.Encrypt("secret/payments/db", 1, pt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBarrierDecrypt(b *testing.B) {
	barrier := mustBarrier(b, mustKeyring(b))
	for _, size := range []int{256, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			ct := mustEncrypt(b, barrier, "secret/payments/db", make([]byte, size))
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := barrier.Decrypt("secret/payments/db", 1, ct); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSealEncrypt measures the hot path through Seal's read lock.
func BenchmarkSealEncrypt(b *testing.B) {
	res := mustInit(b, DefaultConfig())
	s := New(Options{})
	for _, share := range res.Shares[:3] {
		if _, err := s.Unseal(res.Stored, res.WrappedKeyring, share); err != nil {
			b.Fatal(err)
		}
	}
	pt := make([]byte, 256)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Encrypt("secret/payments/db", 1, pt); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkSplit(b *testing.B) {
	secret := randomSecret(b, KeySize)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Split(secret, 5, 3); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCombine(b *testing.B) {
	shares, err := Split(randomSecret(b, KeySize), 5, 3)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Combine(shares[:3]); err != nil {
			b.Fatal(err)
		}
	}
}
