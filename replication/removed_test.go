package replication

import (
	"testing"
	"time"
)

// An operator's removal keeps a member out until it restarts: a new Boot,
// or, from a version that sends none, a return to alive after the removal.
func TestKeptOutUntilRestart(t *testing.T) {
	removedAt := time.Now()
	n := &Node{removed: map[string]*removal{
		"same":  {boot: "b1", at: removedAt},
		"new":   {boot: "b1", at: removedAt},
		"old":   {at: removedAt},
		"oldup": {at: removedAt},
	}}
	alive := func(id, boot string, since time.Time) Member {
		return Member{MemberMeta: MemberMeta{ID: id, Boot: boot}, Status: StatusAlive, Since: since}
	}
	for _, c := range []struct {
		m         Member
		out, note bool
	}{
		{alive("same", "b1", removedAt.Add(-time.Minute)), true, true},
		{alive("same", "b1", removedAt.Add(-time.Minute)), true, false}, // said once
		{alive("new", "b2", removedAt.Add(-time.Minute)), false, false},
		{alive("new", "b1", removedAt.Add(-time.Minute)), false, false}, // forgotten once restarted
		{alive("old", "", removedAt.Add(-time.Minute)), true, true},
		{alive("oldup", "", removedAt.Add(time.Second)), false, false},
		{alive("other", "b9", removedAt), false, false},
	} {
		out, first := n.keptOut(c.m)
		if out != c.out || first != c.note {
			t.Errorf("%s boot %q: kept out %v (first %v), want %v (%v)", c.m.ID, c.m.Boot, out, first, c.out, c.note)
		}
	}

	n.pruneRemovals(map[string]Member{"same": {}}, map[string]Peer{"old": {}})
	if _, ok := n.removed["same"]; !ok {
		t.Error("forgot a removal gossip still knows")
	}
	if _, ok := n.removed["old"]; !ok {
		t.Error("forgot a removal raft still holds")
	}
	if len(n.removed) != 2 {
		t.Errorf("removals left: %v, want same and old", n.removed)
	}
}
