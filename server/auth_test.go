package server

import "testing"

// TestTokenCacheFollowsSysGeneration: a cached record is only served under
// the generation it was read in, a late reader of an older generation does
// not replace newer entries, and the cache stays bounded.
func TestTokenCacheFollowsSysGeneration(t *testing.T) {
	var c tokenCache
	rec := &tokenRecord{Hash: "h1", Policies: []string{rootPolicy}}
	c.put(3, "h1", rec)
	if c.get(3, "h1") != rec {
		t.Fatal("record not served under its own generation")
	}
	if c.get(4, "h1") != nil {
		t.Fatal("record served after the system keys changed")
	}
	c.put(4, "h2", &tokenRecord{Hash: "h2"})
	c.put(3, "h1", rec) // read before generation 4
	if c.get(4, "h1") != nil || c.get(3, "h1") != nil {
		t.Fatal("a record read under an older generation was kept")
	}
	for i := range tokenCacheMax + 10 {
		c.put(4, string(rune('a'+i%26))+string(rune(i)), &tokenRecord{})
	}
	if len(c.recs) > tokenCacheMax {
		t.Fatalf("cache holds %d records, above its bound %d", len(c.recs), tokenCacheMax)
	}
}
