package server

import "testing"

// TestReadRoundsOnlyShareRoundsNotStarted checks the rule that makes shared
// read-index requests linearizable: a reader joins only a round that has
// not been sent yet, so the leader's answer is always read after the
// reader arrived; and one runner per key sends the rounds.
func TestReadRoundsOnlyShareRoundsNotStarted(t *testing.T) {
	var rr readRounds
	runs := 0
	join := func(k roundKey) *readRound {
		r, start := rr.join(k)
		if start {
			runs++
		}
		return r
	}
	a := roundKey{auth: "Bearer a", linearizable: true}

	r1 := join(a)
	if r2 := join(a); r2 != r1 {
		t.Fatal("two readers before the round started got different rounds")
	}
	if runs != 1 {
		t.Fatalf("runner started %d times, want 1", runs)
	}
	if other := join(roundKey{auth: "Bearer b", linearizable: true}); other == r1 {
		t.Fatal("readers with different tokens share a round")
	}
	if other := join(roundKey{auth: "Bearer a"}); other == r1 {
		t.Fatal("a default read shares a linearizable round")
	}
	runs = 0

	// The runner sends r1: a reader arriving now must wait for the next.
	if got := rr.take(a); got != r1 {
		t.Fatal("take did not return the open round")
	}
	r3 := join(a)
	if r3 == r1 {
		t.Fatal("a reader joined a round already sent to the leader")
	}
	if runs != 0 {
		t.Fatal("a second runner started while one is sending rounds")
	}
	if got := rr.take(a); got != r3 {
		t.Fatal("take did not return the next round")
	}
	// Nobody waits: the runner stops and the key is forgotten; the next
	// reader starts a runner again.
	if got := rr.take(a); got != nil {
		t.Fatal("take returned a round nobody joined")
	}
	if _, ok := rr.queues[a]; ok {
		t.Fatal("an idle key is still kept")
	}
	join(a)
	if runs != 1 {
		t.Fatalf("no runner started after the idle one stopped (runs %d)", runs)
	}
}
