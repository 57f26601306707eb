package chaos

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestNewSchedule: a seed gives the same steps every time, another seed
// others; every run of four steps has each fault once; holds only on
// pauses and partitions, between half and twice the driver's Hold.
func TestNewSchedule(t *testing.T) {
	hold := 2 * time.Second
	a, b := NewSchedule(7, 80, hold), NewSchedule(7, 80, hold)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("seed 7 gave two different schedules")
	}
	if reflect.DeepEqual(a, NewSchedule(8, 80, hold)) {
		t.Fatal("seeds 7 and 8 gave the same schedule")
	}
	count := map[string]int{}
	for i, s := range a {
		count[s.Fault]++
		timed := s.Fault == "pause" || s.Fault == "partition"
		if timed && (s.Hold < hold/2 || s.Hold > 2*hold) || !timed && s.Hold != 0 {
			t.Errorf("step %d (%s): hold %s", i, s, s.Hold)
		}
		if s.Role != "leader" && s.Role != "follower" {
			t.Errorf("step %d: role %q", i, s.Role)
		}
	}
	for _, f := range ScheduleFaults {
		if count[f] != 20 {
			t.Errorf("%d steps of %s in 80, want 20: %v", count[f], f, count)
		}
	}
	if _, err := ParseSeed("x12", 1); err == nil {
		t.Error("seed x12 accepted")
	}
	if s, err := ParseSeed("", 1); err != nil || s != 1 {
		t.Errorf("empty seed: %d, %v; want the default 1", s, err)
	}
}

// TestResultSeedExact: the figures file gives a schedule's seed digit for
// digit, even to a reader that takes JSON numbers for floats (jq read
// 162649683317390634 as 162649683317390620 when it was a number).
func TestResultSeedExact(t *testing.T) {
	const seed = 162649683317390634
	b, err := json.Marshal(Result{Scenario: "schedule", Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	if got, _ := generic["seed"].(string); got != "162649683317390634" {
		t.Fatalf("seed in the figures file: %v (%T), want the string 162649683317390634", generic["seed"], generic["seed"])
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || back.Seed != seed {
		t.Fatalf("seed read back: %d, %v; want %d", back.Seed, err, uint64(seed))
	}
}
