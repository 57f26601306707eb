package audit

import (
	"bytes"
	"errors"
	"regexp"
	"sync"
	"testing"
)

func TestHasherMatchesHMACSHA256(t *testing.T) {
	h := newHasher(t)
	for _, v := range []string{"s.client-token", "hunter2", "ünïcødé", "a\nb", ""} {
		if got, want := h.HMAC(v), expectHMAC(testSalt, v); got != want {
			t.Errorf("HMAC(%q) = %s, want %s", v, got, want)
		}
		got, err := HashForSearch(testSalt, v)
		if err != nil {
			t.Fatalf("HashForSearch: %v", err)
		}
		if want := expectHMAC(testSalt, v); got != want {
			t.Errorf("HashForSearch(%q) = %s, want %s", v, got, want)
		}
	}
	if !regexp.MustCompile(`^hmac-sha256:[0-9a-f]{64}$`).MatchString(h.HMAC("x")) {
		t.Errorf("HMAC has the wrong shape: %s", h.HMAC("x"))
	}
	other := bytes.Repeat([]byte{7}, 32)
	if got, _ := HashForSearch(other, "x"); got == h.HMAC("x") {
		t.Error("two salts give the same HMAC")
	}
}

func TestHasherRejectsShortSalt(t *testing.T) {
	for _, n := range []int{0, 1, 31} {
		if _, err := NewHasher(make([]byte, n)); !errors.Is(err, ErrShortSalt) {
			t.Errorf("NewHasher(%d bytes) = %v, want ErrShortSalt", n, err)
		}
		if _, err := HashForSearch(make([]byte, n), "x"); !errors.Is(err, ErrShortSalt) {
			t.Errorf("HashForSearch(%d bytes) = %v, want ErrShortSalt", n, err)
		}
	}
}

func TestHasherCopiesAndZeroesItsSalt(t *testing.T) {
	salt := bytes.Clone(testSalt)
	h, err := NewHasher(salt)
	if err != nil {
		t.Fatal(err)
	}
	want := expectHMAC(testSalt, "v")
	clear(salt) // the caller zeroes its own copy
	if got := h.HMAC("v"); got != want {
		t.Fatalf("HMAC after the caller zeroed its salt = %s, want %s", got, want)
	}
	inner := h.salt
	h.Destroy()
	if !bytes.Equal(inner, make([]byte, len(inner))) {
		t.Error("Destroy left the salt's bytes in memory")
	}
	if got := h.HMAC("v"); got != RedactedSealed {
		t.Errorf("HMAC after Destroy = %q, want %q", got, RedactedSealed)
	}
	h.Destroy() // idempotent
	var nilHasher *Hasher
	if got := nilHasher.HMAC("v"); got != RedactedSealed {
		t.Errorf("nil Hasher HMAC = %q, want %q", got, RedactedSealed)
	}
}

// Destroy racing with HMAC gives either the right HMAC or the sealed
// marker, never anything else (and no data race).
func TestHasherDestroyWhileHashing(t *testing.T) {
	h := newHasher(t)
	want := expectHMAC(testSalt, "v")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				if got := h.HMAC("v"); got != want && got != RedactedSealed {
					t.Errorf("HMAC during Destroy = %q", got)
					return
				}
			}
		})
	}
	h.Destroy()
	wg.Wait()
}
