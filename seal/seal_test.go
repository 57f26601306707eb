package seal

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock is a manually advanced clock for Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func mustInit(t testing.TB, cfg Config) *InitResult {
	t.Helper()
	res, err := Initialize(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// submit unseals s with shares, failing the test on any error, and returns
// the last status.
func submit(t *testing.T, s *Seal, res *InitResult, shares ...[]byte) Status {
	t.Helper()
	var st Status
	for i, share := range shares {
		var err error
		if st, err = s.Unseal(res.Stored, res.WrappedKeyring, share); err != nil {
			t.Fatalf("share %d: %v", i, err)
		}
	}
	return st
}

// checkUnsealed checks that s is unsealed at term and can encrypt and
// decrypt.
func checkUnsealed(t *testing.T, s *Seal, term uint32) {
	t.Helper()
	if s.Sealed() || s.Term() != term {
		t.Fatalf("sealed %v term %d, want unsealed at term %d", s.Sealed(), s.Term(), term)
	}
	ct, err := s.Encrypt("secret/x", 1, []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := s.Decrypt("secret/x", 1, ct); err != nil || string(pt) != "v" {
		t.Fatalf("Decrypt: %q, %v", pt, err)
	}
}

func TestUnsealProgress(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	want := Status{Initialized: true, Sealed: true, Shares: 5, Threshold: 3, Type: TypeShamir}
	if st := s.Status(res.Stored); st != want {
		t.Fatalf("initial status %+v, want %+v", st, want)
	}
	st := submit(t, s, res, res.Shares[0], res.Shares[1])
	want.Progress = 2
	if st != want || s.Status(res.Stored) != want || !s.Sealed() {
		t.Fatalf("after 2 shares: %+v, want %+v", st, want)
	}
	st = submit(t, s, res, res.Shares[2])
	want = Status{Initialized: true, Shares: 5, Threshold: 3, Term: 1, Type: TypeShamir}
	if st != want || s.Status(res.Stored) != want {
		t.Fatalf("after 3 shares: %+v, want %+v", st, want)
	}
	checkUnsealed(t, s, 1)

	// More shares on an unsealed node are accepted silently.
	if st, err := s.Unseal(res.Stored, res.WrappedKeyring, res.Shares[3]); err != nil || st != want {
		t.Fatalf("share on an unsealed node: %+v, %v", st, err)
	}
	if st, err := s.Unseal(res.Stored, res.WrappedKeyring, []byte("garbage")); err != nil || st != want {
		t.Fatalf("garbage on an unsealed node: %+v, %v", st, err)
	}
}

func TestUnsealAnyThreeOfFive(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	n := 0
	for a := range 5 {
		for b := a + 1; b < 5; b++ {
			for c := b + 1; c < 5; c++ {
				s := New(Options{})
				// Submit in a varying order.
				submit(t, s, res, res.Shares[c], res.Shares[a], res.Shares[b])
				checkUnsealed(t, s, 1)
				n++
			}
		}
	}
	if n != 10 {
		t.Fatalf("tried %d subsets, want 10", n)
	}
}

func TestUnsealNotInitialized(t *testing.T) {
	s := New(Options{})
	if st := s.Status(nil); st != (Status{Sealed: true}) {
		t.Fatalf("Status(nil) = %+v", st)
	}
	if _, err := s.Unseal(nil, nil, make([]byte, 33)); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Unseal(nil): %v, want ErrNotInitialized", err)
	}
}

func TestUnsealInvalidStored(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	bad := *res.Stored
	bad.WrappedRootKey = bad.WrappedRootKey[:10]
	if _, err := New(Options{}).Unseal(&bad, res.WrappedKeyring, res.Shares[0]); !errors.Is(err, ErrInvalidStored) {
		t.Fatalf("Unseal with a truncated root key: %v, want ErrInvalidStored", err)
	}
}

func TestUnsealInvalidShare(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0])
	zeroX := bytes.Clone(res.Shares[1])
	zeroX[KeySize] = 0
	for name, share := range map[string][]byte{
		"nil":      nil,
		"empty":    {},
		"32 bytes": res.Shares[1][:32],
		"34 bytes": append(bytes.Clone(res.Shares[1]), 0),
		"index 0":  zeroX,
	} {
		st, err := s.Unseal(res.Stored, res.WrappedKeyring, share)
		if !errors.Is(err, ErrInvalidShare) || st.Progress != 1 || !st.Sealed {
			t.Errorf("%s: %+v, %v; want ErrInvalidShare with progress 1", name, st, err)
		}
	}
}

func TestUnsealDuplicateShare(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1])
	st, err := s.Unseal(res.Stored, res.WrappedKeyring, bytes.Clone(res.Shares[0]))
	if !errors.Is(err, ErrDuplicateShare) || st.Progress != 2 || !st.Sealed {
		t.Fatalf("same share again: %+v, %v; want ErrDuplicateShare with progress 2", st, err)
	}
	// A different share claiming an index already held is kept as a
	// candidate: progress counts indexes, so it stays 2.
	sameIndex := bytes.Clone(res.Shares[2])
	sameIndex[KeySize] = res.Shares[1][KeySize]
	st, err = s.Unseal(res.Stored, res.WrappedKeyring, sameIndex)
	if err != nil || st.Progress != 2 {
		t.Fatalf("same index: %+v, %v; want it held as a candidate, progress 2", st, err)
	}
	submit(t, s, res, res.Shares[4])
	checkUnsealed(t, s, 1)
}

// TestUnsealGarbageFirstCannotBlock: garbage sent first under the index of
// a real share (an attacker racing the operator) does not get the real
// share refused; the node unseals with the real shares. A fourth
// different share for one index is refused.
func TestUnsealGarbageFirstCannotBlock(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	garbage := randomSecret(t, KeySize+1)
	garbage[KeySize] = res.Shares[0][KeySize]
	submit(t, s, res, garbage)
	st, err := s.Unseal(res.Stored, res.WrappedKeyring, res.Shares[0])
	if err != nil || st.Progress != 1 {
		t.Fatalf("the real share after garbage with its index: %+v, %v", st, err)
	}
	submit(t, s, res, res.Shares[1], res.Shares[2])
	checkUnsealed(t, s, 1)

	// Bounded: three candidates for one index, no more.
	s2 := New(Options{})
	for i := range maxCandidatesPerIndex {
		g := randomSecret(t, KeySize+1)
		g[KeySize] = res.Shares[0][KeySize]
		if _, err := s2.Unseal(res.Stored, res.WrappedKeyring, g); err != nil {
			t.Fatalf("candidate %d: %v", i, err)
		}
	}
	if _, err := s2.Unseal(res.Stored, res.WrappedKeyring, res.Shares[0]); !errors.Is(err, ErrDuplicateShare) {
		t.Fatalf("a fourth share for one index: %v, want ErrDuplicateShare", err)
	}
}

// foreignShare returns a share of other whose index differs from the indexes
// of held.
func foreignShare(t *testing.T, other *InitResult, held ...[]byte) []byte {
	t.Helper()
next:
	for _, s := range other.Shares {
		for _, h := range held {
			if s[KeySize] == h[KeySize] {
				continue next
			}
		}
		return s
	}
	t.Fatal("no foreign share with a free index")
	return nil
}

func TestUnsealWrongShares(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	other := mustInit(t, Config{5, 3})
	s := New(Options{})

	// A full set from another cluster.
	submit(t, s, res, other.Shares[0], other.Shares[1])
	st, err := s.Unseal(res.Stored, res.WrappedKeyring, other.Shares[2])
	if !errors.Is(err, ErrWrongShares) || !st.Sealed || st.Progress != 0 {
		t.Fatalf("other cluster's shares: %+v, %v; want ErrWrongShares, sealed, progress 0", st, err)
	}

	// Two of ours and one of theirs.
	submit(t, s, res, res.Shares[0], res.Shares[1])
	st, err = s.Unseal(res.Stored, res.WrappedKeyring, foreignShare(t, other, res.Shares[0], res.Shares[1]))
	if !errors.Is(err, ErrWrongShares) || !st.Sealed || st.Progress != 0 {
		t.Fatalf("one foreign share: %+v, %v; want ErrWrongShares, sealed, progress 0", st, err)
	}

	// Not wedged: a correct set unseals.
	submit(t, s, res, res.Shares[2], res.Shares[3], res.Shares[4])
	checkUnsealed(t, s, 1)
}

func TestUnsealCorruptShare(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	for i := range KeySize + 1 {
		for bit := range 8 {
			s := New(Options{})
			bad := bytes.Clone(res.Shares[2])
			bad[i] ^= 1 << bit
			var err error
			for _, share := range [][]byte{res.Shares[0], res.Shares[1], bad} {
				if _, err = s.Unseal(res.Stored, res.WrappedKeyring, share); err != nil {
					break
				}
			}
			if !s.Sealed() {
				t.Fatalf("byte %d bit %d: corrupt share unsealed (err %v)", i, bit, err)
			}
			// A flipped index byte may name the index of a share already
			// held: then it is kept as a candidate and the node waits for
			// more shares (no error); anything else is refused.
			if err == nil && i < KeySize {
				t.Fatalf("byte %d bit %d: a corrupt share was accepted without error", i, bit)
			}
			if i < KeySize && !errors.Is(err, ErrWrongShares) {
				t.Fatalf("byte %d bit %d: %v, want ErrWrongShares", i, bit, err)
			}
			// Not wedged: whatever happened, a reset and a correct set
			// unseal.
			s.ResetProgress()
			submit(t, s, res, res.Shares[0], res.Shares[1], res.Shares[2])
			checkUnsealed(t, s, 1)
		}
	}
}

func TestUnsealCorruptKeyring(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	other := mustInit(t, Config{5, 3})
	for name, kr := range map[string][]byte{
		"nil":           nil,
		"other cluster": other.WrappedKeyring,
		"truncated":     res.WrappedKeyring[:len(res.WrappedKeyring)-1],
	} {
		s := New(Options{})
		submit(t, s, res, res.Shares[0], res.Shares[1])
		st, err := s.Unseal(res.Stored, kr, res.Shares[2])
		if !errors.Is(err, ErrInvalidKeyring) || !st.Sealed || st.Progress != 0 {
			t.Errorf("%s: %+v, %v; want ErrInvalidKeyring, sealed, progress 0", name, st, err)
		}
		if s.rootKey != nil || s.keyring != nil || s.barrier != nil {
			t.Errorf("%s: keys left in memory after a failed unseal", name)
		}
	}
}

func TestUnsealProgressTimeout(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	clock := newFakeClock()
	s := New(Options{Now: clock.Now, ProgressTimeout: time.Minute})
	submit(t, s, res, res.Shares[0])
	clock.Advance(59 * time.Second)
	submit(t, s, res, res.Shares[1]) // the timeout counts from the last share
	clock.Advance(59 * time.Second)
	if st := s.Status(res.Stored); st.Progress != 2 {
		t.Fatalf("progress %d before the timeout, want 2", st.Progress)
	}
	clock.Advance(time.Second)
	if st := s.Status(res.Stored); st.Progress != 0 {
		t.Fatalf("progress %d after the timeout, want 0", st.Progress)
	}
	// The old shares are gone: share 0 counts again, and it takes three.
	if st := submit(t, s, res, res.Shares[0], res.Shares[2]); st.Progress != 2 || !st.Sealed {
		t.Fatalf("after the timeout: %+v", st)
	}
	submit(t, s, res, res.Shares[1])
	checkUnsealed(t, s, 1)
}

func TestUnsealProgressTimeoutOnNextShare(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	clock := newFakeClock()
	s := New(Options{Now: clock.Now}) // default timeout
	submit(t, s, res, res.Shares[0], res.Shares[1])
	clock.Advance(DefaultProgressTimeout)
	if st := submit(t, s, res, res.Shares[2]); st.Progress != 1 || !st.Sealed {
		t.Fatalf("share after the timeout: %+v, want sealed with progress 1", st)
	}
}

func TestResetProgress(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1])
	s.ResetProgress()
	if st := s.Status(res.Stored); st.Progress != 0 {
		t.Fatalf("progress %d after reset", st.Progress)
	}
	if st := submit(t, s, res, res.Shares[0]); st.Progress != 1 {
		t.Fatalf("progress %d, want 1", st.Progress)
	}
}

func TestProgressBelongsToStored(t *testing.T) {
	a := mustInit(t, Config{5, 3})
	b := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, a, a.Shares[0], a.Shares[1])
	if st := s.Status(b.Stored); st.Progress != 0 {
		t.Fatalf("progress against another configuration: %d, want 0", st.Progress)
	}
	// Progress collected for a is dropped when b's shares come.
	submit(t, s, b, b.Shares[0], b.Shares[1], b.Shares[2])
	checkUnsealed(t, s, 1)
}

func TestSealZeroesKeys(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1], res.Shares[2])
	root := s.rootKey
	var keys [][]byte
	for _, k := range s.keyring.keys {
		keys = append(keys, k)
	}
	if len(root) != KeySize || len(keys) != 1 || bytes.Equal(root, make([]byte, KeySize)) {
		t.Fatal("unexpected unsealed state")
	}
	s.Seal()
	if !bytes.Equal(root, make([]byte, KeySize)) {
		t.Fatal("root key not zeroed")
	}
	for _, k := range keys {
		if !bytes.Equal(k, make([]byte, KeySize)) {
			t.Fatal("data key not zeroed")
		}
	}
	if s.rootKey != nil || s.keyring != nil || s.barrier != nil || !s.Sealed() || s.Term() != 0 {
		t.Fatal("keys still referenced after Seal")
	}
	s.Seal() // idempotent
	if !s.Status(res.Stored).Sealed {
		t.Fatal("not sealed")
	}
	// And it unseals again.
	submit(t, s, res, res.Shares[3], res.Shares[4], res.Shares[0])
	checkUnsealed(t, s, 1)
}

func TestSealDropsProgress(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1])
	held := append([][]byte(nil), s.shares...)
	s.Seal()
	for _, h := range held {
		if !bytes.Equal(h, make([]byte, len(h))) {
			t.Fatal("share copy not zeroed by Seal")
		}
	}
	if st := s.Status(res.Stored); st.Progress != 0 {
		t.Fatalf("progress %d after Seal", st.Progress)
	}
}

func TestShareCopiesZeroedAfterAttempt(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	other := mustInit(t, Config{5, 3})
	for _, third := range [][]byte{res.Shares[2], foreignShare(t, other, res.Shares[0], res.Shares[1])} {
		s := New(Options{})
		submit(t, s, res, res.Shares[0], res.Shares[1])
		held := append([][]byte(nil), s.shares...)
		if !bytes.Equal(held[0], res.Shares[0]) {
			t.Fatal("progress does not hold a copy of the share")
		}
		_, _ = s.Unseal(res.Stored, res.WrappedKeyring, third)
		for _, h := range held {
			if !bytes.Equal(h, make([]byte, len(h))) {
				t.Fatal("share copy not zeroed after the attempt")
			}
		}
		if s.shares != nil {
			t.Fatal("shares still held after the attempt")
		}
		if bytes.Equal(res.Shares[0], make([]byte, len(res.Shares[0]))) {
			t.Fatal("the caller's share was zeroed")
		}
	}
}

func TestDevOneOfOne(t *testing.T) {
	res := mustInit(t, Config{1, 1})
	if len(res.Shares) != 1 || len(res.Shares[0]) != KeySize {
		t.Fatalf("dev init: %d shares of %d bytes", len(res.Shares), len(res.Shares[0]))
	}
	s := New(Options{})
	if _, err := s.Unseal(res.Stored, res.WrappedKeyring, append(bytes.Clone(res.Shares[0]), 1)); !errors.Is(err, ErrInvalidShare) {
		t.Fatalf("33-byte share for a 1-of-1 cluster: %v, want ErrInvalidShare", err)
	}
	if _, err := s.Unseal(res.Stored, res.WrappedKeyring, randomSecret(t, KeySize)); !errors.Is(err, ErrWrongShares) {
		t.Fatalf("wrong key: %v, want ErrWrongShares", err)
	}
	st := submit(t, s, res, res.Shares[0])
	if st != (Status{Initialized: true, Shares: 1, Threshold: 1, Term: 1, Type: TypeShamir}) {
		t.Fatalf("status %+v", st)
	}
	checkUnsealed(t, s, 1)
	if bytes.Equal(res.Shares[0], make([]byte, KeySize)) {
		t.Fatal("Unseal zeroed the caller's share")
	}
}

func TestSealedOperations(t *testing.T) {
	s := New(Options{})
	if _, err := s.Encrypt("p", 1, []byte("v")); !errors.Is(err, ErrSealed) {
		t.Errorf("Encrypt: %v", err)
	}
	if _, err := s.Decrypt("p", 1, make([]byte, 64)); !errors.Is(err, ErrSealed) {
		t.Errorf("Decrypt: %v", err)
	}
	if _, _, err := s.Rotate(); !errors.Is(err, ErrSealed) {
		t.Errorf("Rotate: %v", err)
	}
	if err := s.InstallKeyring(nil); !errors.Is(err, ErrSealed) {
		t.Errorf("InstallKeyring: %v", err)
	}
	if !s.Sealed() || s.Term() != 0 {
		t.Error("new Seal is not sealed")
	}
}

func TestRotateAndInstall(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	a, b := New(Options{}), New(Options{})
	submit(t, a, res, res.Shares[0], res.Shares[1], res.Shares[2])
	submit(t, b, res, res.Shares[2], res.Shares[3], res.Shares[4])
	old, err := a.Encrypt("p", 1, []byte("old"))
	if err != nil {
		t.Fatal(err)
	}

	wrapped, term, err := a.Rotate()
	if err != nil || term != 2 {
		t.Fatalf("Rotate: term %d, %v", term, err)
	}
	if a.Term() != 1 {
		t.Fatal("Rotate installed the keyring")
	}
	for _, s := range []*Seal{a, b} {
		if err := s.InstallKeyring(wrapped); err != nil {
			t.Fatal(err)
		}
		if s.Term() != 2 || s.Status(res.Stored).Term != 2 {
			t.Fatalf("term %d after install, want 2", s.Term())
		}
	}
	fresh, err := a.Encrypt("p", 1, []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := TermOf(fresh); got != 2 {
		t.Fatalf("new write uses term %d, want 2", got)
	}
	for _, ct := range [][]byte{old, fresh} {
		if _, err := b.Decrypt("p", 1, ct); err != nil {
			t.Fatalf("b.Decrypt: %v", err)
		}
	}

	// An older keyring is ignored.
	if err := a.InstallKeyring(res.WrappedKeyring); err != nil || a.Term() != 2 {
		t.Fatalf("installing term 1: %v, term %d", err, a.Term())
	}

	// A node unsealed with the stored (rotated) keyring reads both terms; a
	// node still on term 1 reports the unknown term.
	c := New(Options{})
	submit(t, c, &InitResult{Stored: res.Stored, WrappedKeyring: wrapped}, res.Shares[0], res.Shares[1], res.Shares[4])
	checkUnsealed(t, c, 2)
	if pt, err := c.Decrypt("p", 1, old); err != nil || string(pt) != "old" {
		t.Fatalf("term-1 value on a term-2 node: %q, %v", pt, err)
	}
	lagging := New(Options{})
	submit(t, lagging, res, res.Shares[0], res.Shares[1], res.Shares[2])
	if _, err := lagging.Decrypt("p", 1, fresh); !errors.Is(err, ErrUnknownTerm) {
		t.Fatalf("term-2 value on a term-1 node: %v, want ErrUnknownTerm", err)
	}

	// Rotation keeps going from the installed term.
	if _, term, err := a.Rotate(); err != nil || term != 3 {
		t.Fatalf("second Rotate: term %d, %v", term, err)
	}
}

func TestInstallKeyringRejectsForeign(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	other := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1], res.Shares[2])
	for name, kr := range map[string][]byte{
		"other cluster": other.WrappedKeyring,
		"garbage":       []byte("garbage"),
		"nil":           nil,
	} {
		if err := s.InstallKeyring(kr); !errors.Is(err, ErrInvalidKeyring) {
			t.Errorf("%s: %v, want ErrInvalidKeyring", name, err)
		}
	}
	checkUnsealed(t, s, 1)
}

// TestConcurrentUse runs Encrypt, Decrypt and Status against a node that is
// sealed and unsealed over and over; run it with -race. Every failure must be
// ErrSealed.
func TestConcurrentUse(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	s := New(Options{})
	submit(t, s, res, res.Shares[0], res.Shares[1], res.Shares[2])
	ct, err := s.Encrypt("p", 1, []byte("v"))
	if err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	worker := func(f func() error) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := f(); err != nil && !errors.Is(err, ErrSealed) {
				errs <- err
				return
			}
		}
	}
	wg.Add(4)
	go worker(func() error { _, err := s.Encrypt("p", 1, []byte("v")); return err })
	go worker(func() error {
		pt, err := s.Decrypt("p", 1, ct)
		if err == nil && string(pt) != "v" {
			return errors.New("wrong plaintext")
		}
		return err
	})
	go worker(func() error { s.Status(res.Stored); s.Term(); s.Sealed(); return nil })
	go worker(func() error {
		if _, _, err := s.Rotate(); err != nil {
			return err
		}
		return nil
	})

	for i := range 200 {
		s.Seal()
		for j := range 3 {
			if _, err := s.Unseal(res.Stored, res.WrappedKeyring, res.Shares[(i+j)%5]); err != nil {
				t.Errorf("round %d: %v", i, err)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("worker: %v", err)
	}
}

// TestSnapshotMAC: two nodes of one cluster derive the same snapshot key
// (also after a rotation), another cluster a different one, and a sealed
// node none.
func TestSnapshotMAC(t *testing.T) {
	res := mustInit(t, Config{5, 3})
	a, b := New(Options{}), New(Options{})
	if _, err := a.SnapshotMAC(); !errors.Is(err, ErrSealed) {
		t.Fatalf("sealed: %v", err)
	}
	submit(t, a, res, res.Shares[0], res.Shares[1], res.Shares[2])
	submit(t, b, res, res.Shares[2], res.Shares[3], res.Shares[4])
	sum := func(s *Seal) []byte {
		t.Helper()
		m, err := s.SnapshotMAC()
		if err != nil {
			t.Fatal(err)
		}
		m.Write([]byte("the same snapshot"))
		return m.Sum(nil)
	}
	if !bytes.Equal(sum(a), sum(b)) {
		t.Fatal("two nodes of one cluster disagree on the snapshot MAC")
	}
	if _, _, err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sum(a), sum(b)) {
		t.Fatal("a rotation changed the snapshot MAC")
	}
	other := mustInit(t, Config{1, 1})
	c := New(Options{})
	submit(t, c, other, other.Shares[0])
	if bytes.Equal(sum(a), sum(c)) {
		t.Fatal("another cluster derives the same snapshot MAC")
	}
}
