package fsm

import (
	"errors"
	"fmt"
	"testing"
)

// TestChangeRingWrapsAround fills a small ring several times over and
// checks that it keeps exactly the newest changes, in order, and that a
// resume from before them is refused.
func TestChangeRingWrapsAround(t *testing.T) {
	r := newChangeRing(5, 0)
	next := uint64(1)
	for _, batch := range []int{2, 1, 4, 3, 7, 1} {
		var cs []Change
		for range batch {
			cs = append(cs, Change{Index: next, Path: fmt.Sprintf("a/%d", next%2), Op: "put", Version: next, Versions: []uint64{next}})
			next++
		}
		r.add(cs)
		last := next - 1
		kept := min(last, 5)
		got, err := r.since(last-kept, "", 100)
		if err != nil {
			t.Fatalf("after index %d: since(%d): %v", last, last-kept, err)
		}
		if uint64(len(got)) != kept {
			t.Fatalf("after index %d: got %d changes, want %d", last, len(got), kept)
		}
		for i, c := range got {
			if want := last - kept + 1 + uint64(i); c.Index != want {
				t.Fatalf("after index %d: change %d has index %d, want %d", last, i, c.Index, want)
			}
		}
		if last > 5 {
			if _, err := r.since(last-6, "", 100); !errors.Is(err, ErrCompacted) {
				t.Fatalf("after index %d: since(%d) = %v, want ErrCompacted", last, last-6, err)
			}
		}
	}
	// Prefix and max filter; the caller gets copies.
	got, err := r.since(next-5, "a/1", 1)
	if err != nil || len(got) != 1 || got[0].Path != "a/1" {
		t.Fatalf("since with prefix and max: %v, %v", got, err)
	}
	got[0].Versions[0] = 999
	again, _ := r.since(next-5, "a/1", 1)
	if again[0].Versions[0] == 999 {
		t.Fatal("since shares its Versions with the ring")
	}
	r.reset(next + 10)
	if _, err := r.since(next, "", 10); !errors.Is(err, ErrCompacted) {
		t.Fatalf("since below the reset floor = %v, want ErrCompacted", err)
	}
	if got, err := r.since(next+10, "", 10); err != nil || len(got) != 0 {
		t.Fatalf("since at the reset floor = %v, %v; want nothing", got, err)
	}
}

// BenchmarkChangeRingAdd is the cost of recording one batch of 8 changes
// in a full ring.
func BenchmarkChangeRingAdd(b *testing.B) {
	r := newChangeRing(DefaultChangeRing, 0)
	cs := make([]Change, 8)
	idx := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		for i := range cs {
			idx++
			cs[i] = Change{Index: idx, Path: "bench/key", Op: "put", Version: idx}
		}
		r.add(cs)
	}
}
