package seal

import (
	"bytes"
	"errors"
	"testing"
)

// TestQuorum: a threshold of the cluster's shares is proved by opening the
// root key; another cluster's shares are refused and dropped; a garbage
// share sent first under a real share's index does not block it; bad and
// repeated shares are refused without losing progress.
func TestQuorum(t *testing.T) {
	res, err := Initialize(Config{Shares: 5, Threshold: 3})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Initialize(Config{Shares: 5, Threshold: 3})
	if err != nil {
		t.Fatal(err)
	}

	q, err := NewQuorum(res.Stored)
	if err != nil {
		t.Fatal(err)
	}
	for i, sh := range res.Shares[:2] {
		if done, err := q.Add(sh); err != nil || done || q.Progress() != i+1 {
			t.Fatalf("share %d: done %v, err %v, progress %d", i, done, err, q.Progress())
		}
	}
	if _, err := q.Add(res.Shares[1]); !errors.Is(err, ErrDuplicateShare) || q.Progress() != 2 {
		t.Fatalf("a repeated share: %v, progress %d", err, q.Progress())
	}
	if _, err := q.Add([]byte("short")); !errors.Is(err, ErrInvalidShare) || q.Progress() != 2 {
		t.Fatalf("a short share: %v, progress %d", err, q.Progress())
	}
	if done, err := q.Add(res.Shares[4]); err != nil || !done {
		t.Fatalf("the third share: done %v, err %v", done, err)
	}

	q, _ = NewQuorum(res.Stored)
	for _, sh := range other.Shares[:2] {
		if _, err := q.Add(sh); err != nil {
			t.Fatal(err)
		}
	}
	if done, err := q.Add(other.Shares[2]); !errors.Is(err, ErrWrongShares) || done || q.Progress() != 0 {
		t.Fatalf("another cluster's shares: done %v, err %v, progress %d", done, err, q.Progress())
	}

	// Garbage under the index of the first real share, sent first.
	q, _ = NewQuorum(res.Stored)
	garbage := bytes.Clone(res.Shares[0])
	garbage[0] ^= 0xff
	for i, sh := range [][]byte{garbage, res.Shares[0], res.Shares[1]} {
		if done, err := q.Add(sh); err != nil || done {
			t.Fatalf("share %d: done %v, err %v", i, done, err)
		}
	}
	if done, err := q.Add(res.Shares[2]); err != nil || !done {
		t.Fatalf("with a garbage share first: done %v, err %v", done, err)
	}
}
