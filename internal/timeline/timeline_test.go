package timeline

import (
	"bytes"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// TestBuckets counts a known series: bucket edges belong to the later
// bucket, failed operations are not counted as writes or reads, stale
// reads are counted as reads and apart, and an empty bucket stays.
func TestBuckets(t *testing.T) {
	s := Series{Events: []Event{
		{At: at(0), Kind: Write},
		{At: at(99), Kind: Read},
		{At: at(100), Kind: Write},
		{At: at(150), Kind: Write, Outcome: Failed},
		{At: at(199), Kind: Read, Outcome: Stale},
		{At: at(199), Kind: Read, Outcome: Failed},
		// nothing in [200, 300)
		{At: at(300), Kind: Read},
		{At: at(350), Kind: Read, Outcome: Stale},
		{At: at(400), Kind: Write},
	}}
	want := []Bucket{
		{Start: 0, Writes: 1, Reads: 1},
		{Start: 100 * time.Millisecond, Writes: 1, Reads: 1, FailedWrites: 1, FailedReads: 1, StaleReads: 1},
		{Start: 200 * time.Millisecond},
		{Start: 300 * time.Millisecond, Reads: 2, StaleReads: 1},
		// The last event opens a bucket of its own.
		{Start: 400 * time.Millisecond, Writes: 1},
	}
	if got := s.Buckets(); !reflect.DeepEqual(got, want) {
		t.Fatalf("buckets:\n got %+v\nwant %+v", got, want)
	}
	if f := s.Buckets()[1].Failed(); f != 2 {
		t.Errorf("bucket 1 failed %d, want 2", f)
	}
}

// TestBucketsRange checks From, To and the bucket width: events before
// From or at To and after are left out, the origin is From, not the first
// event, and the events are not assumed sorted.
func TestBucketsRange(t *testing.T) {
	s := Series{
		Bucket: 250 * time.Millisecond,
		From:   at(1000),
		To:     at(1600), // 600ms: 3 buckets, the last one partial
		Events: []Event{
			{At: at(1599), Kind: Write},
			{At: at(999), Kind: Write},  // before From
			{At: at(1600), Kind: Write}, // at To: after the range
			{At: at(1249), Kind: Read},
			{At: at(1250), Kind: Read, Outcome: Failed},
			{At: at(1000), Kind: Write},
			{At: at(5000), Kind: Read},
		},
	}
	want := []Bucket{
		{Start: 0, Writes: 1, Reads: 1},
		{Start: 250 * time.Millisecond, FailedReads: 1},
		{Start: 500 * time.Millisecond, Writes: 1},
	}
	if got := s.Buckets(); !reflect.DeepEqual(got, want) {
		t.Fatalf("buckets:\n got %+v\nwant %+v", got, want)
	}
	if got := (Series{}).Buckets(); got != nil {
		t.Errorf("no events: buckets %+v, want none", got)
	}
	if got := (Series{From: at(10), To: at(10), Events: []Event{{At: at(10)}}}).Buckets(); got != nil {
		t.Errorf("empty range: buckets %+v, want none", got)
	}
	one := Series{Events: []Event{{At: at(7), Kind: Read}}}
	if got := one.Buckets(); len(got) != 1 || got[0].Reads != 1 {
		t.Errorf("one event: buckets %+v, want one bucket with one read", got)
	}
}

// TestRender is a smoke test of the picture: a series with every kind of
// mark and two faults, one ending outside the range, decodes as a PNG of
// the size asked for.
func TestRender(t *testing.T) {
	var evs []Event
	for ms := 0; ms < 3000; ms += 5 {
		outcome := OK
		switch {
		case ms >= 1000 && ms < 1400:
			outcome = Failed
		case ms >= 1400 && ms < 1600 && ms%2 == 0:
			outcome = Stale
		}
		evs = append(evs, Event{At: at(ms), Kind: Kind(ms / 5 % 2), Outcome: outcome})
	}
	s := Series{Title: "a known series", Events: evs, Faults: []Fault{
		{Label: "kill", Start: at(1000), End: at(1500)},
		{Label: "late", Start: at(2500), End: at(9000)},
	}}
	for _, size := range [][2]int{{0, 0}, {640, 300}} {
		var buf bytes.Buffer
		if err := s.Render(&buf, size[0], size[1]); err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(&buf)
		if err != nil {
			t.Fatalf("the picture does not decode as a PNG: %v", err)
		}
		w, h := size[0], size[1]
		if w == 0 {
			w, h = DefaultWidth, DefaultHeight
		}
		if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
			t.Errorf("picture is %dx%d, want %dx%d", b.Dx(), b.Dy(), w, h)
		}
	}
	path := filepath.Join(t.TempDir(), "x.png")
	if err := s.WriteFile(path, 0, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := (Series{}).Render(&bytes.Buffer{}, 0, 0); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty series: %v, want ErrEmpty", err)
	}
	if err := s.Render(&bytes.Buffer{}, 10, 10); !errors.Is(err, ErrSize) {
		t.Errorf("10x10: %v, want ErrSize", err)
	}
	if err := s.WriteFile(filepath.Join(t.TempDir(), "no", "such", "dir.png"), 0, 0); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}
