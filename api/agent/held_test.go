package agent

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"coffer/api"
	pb "coffer/api/cofferpb"
	"coffer/internal/testcluster"
)

// TestHeldLeaseSchedule: when the agent renews a lease, when it fetches
// new credentials, and how it reads the cluster's times.
func TestHeldLeaseSchedule(t *testing.T) {
	anchor := time.Now()
	now := anchor.Add(50 * time.Millisecond)
	l := newHeldLease(&pb.DatabaseCreds{LeaseId: "database/creds/r/x", LeaseDurationSeconds: 6, Renewable: true}, anchor, now)
	// Until the cluster tells the issue time, the end is a second early.
	if want := anchor.Add(5 * time.Second); !l.expire.Equal(want) {
		t.Fatalf("expire %v after the anchor, want 5s", l.expire.Sub(anchor))
	}
	if want := now.Add((l.expire.Sub(now) * 2) / 3); l.renewAt.Sub(want).Abs() > time.Millisecond {
		t.Fatalf("renewal at %v, want at two thirds of the remaining TTL (%v)", l.renewAt.Sub(now), want.Sub(now))
	}
	if _, ok := l.switchAt(time.Second); ok {
		t.Fatal("a switch planned before the max TTL is known")
	}
	if l.atMax || !l.servable(now, time.Second) || l.servable(l.expire.Add(-time.Second), time.Second) {
		t.Fatalf("atMax %v, servable now and a margin before the end", l.atMax)
	}

	// A renewal's answer: the issue time has a fraction of a second, the
	// ends are taken down to their second (VALID UNTIL's precision).
	issue := time.Unix(1_800_000_000, 700_000_000)
	l.update(&pb.LeaseInfo{
		IssueTimeUnixNano: issue.UnixNano(), ExpireTimeUnixNano: issue.Add(8 * time.Second).UnixNano(),
		MaxExpireTimeUnixNano: issue.Add(20 * time.Second).UnixNano(), Renewable: true,
	}, now)
	if got := l.expire.Sub(anchor); got != 7300*time.Millisecond {
		t.Fatalf("expire %v after the anchor, want 7.3s (8s less the 0.7s fraction)", got)
	}
	if got := l.maxExpire.Sub(anchor); got != 19300*time.Millisecond {
		t.Fatalf("max expire %v after the anchor, want 19.3s", got)
	}
	margin := 500 * time.Millisecond
	at, ok := l.switchAt(margin)
	life := l.maxExpire.Sub(anchor)
	if !ok || at.Before(l.maxExpire.Add(-life/5)) || at.After(l.maxExpire.Add(-life/10)) {
		t.Fatalf("switch %v before the max TTL, want 10–20 %% of the life (%v)", l.maxExpire.Sub(at), life)
	}
	// A long margin: at least three margins before the end …
	if at, _ := l.switchAt(2 * time.Second); l.maxExpire.Sub(at) < 6*time.Second {
		t.Fatalf("switch %v before the end with a 2s margin, want at least 6s", l.maxExpire.Sub(at))
	}
	// … but never in the first half of the life.
	if at, _ := l.switchAt(10 * time.Second); !at.Equal(anchor.Add(life / 2)) {
		t.Fatalf("switch %v after the anchor with a 10s margin, want half the life", at.Sub(anchor))
	}
	// A failed switch is retried after its back-off.
	l.switchTry = l.maxExpire.Add(-time.Second)
	if at, _ := l.switchAt(margin); !at.Equal(l.switchTry) {
		t.Fatalf("switch at %v, want the retry time", at)
	}
	l.switchTry = time.Time{}

	// A capped renewal: no more renewals, new credentials before the end.
	l.update(&pb.LeaseInfo{
		IssueTimeUnixNano: issue.UnixNano(), ExpireTimeUnixNano: issue.Add(20 * time.Second).UnixNano(),
		MaxExpireTimeUnixNano: issue.Add(20 * time.Second).UnixNano(), Renewable: true, Warnings: []string{"capped"},
	}, now)
	if !l.atMax || !l.expire.Equal(l.maxExpire) {
		t.Fatalf("capped renewal: atMax %v, expire %v, max %v", l.atMax, l.expire, l.maxExpire)
	}
	// A lease shortened elsewhere is renewed before its new end.
	l2 := newHeldLease(&pb.DatabaseCreds{LeaseDurationSeconds: 60, Renewable: true}, anchor, now)
	l2.update(&pb.LeaseInfo{IssueTimeUnixNano: issue.UnixNano(), ExpireTimeUnixNano: issue.Add(3 * time.Second).UnixNano(), MaxExpireTimeUnixNano: issue.Add(time.Hour).UnixNano(), Renewable: true}, now)
	if !l2.renewAt.Before(l2.expire) {
		t.Fatalf("renewal at %v, after the shortened end %v", l2.renewAt.Sub(now), l2.expire.Sub(now))
	}
	// Back-off: jittered, doubling, bounded.
	for n := 1; n < 40; n++ {
		d := backoff(n)
		if d <= 0 || d > maxHeldBackoff {
			t.Fatalf("backoff(%d) = %v", n, d)
		}
	}
}

// testHeld returns held credentials and a static password for the cache
// file tests.
func testHeld(marker string, now time.Time) ([]heldRecord, []staticRecord) {
	return []heldRecord{{
			Key:    credsKey{tokenHash: api.TokenHash("token-a"), role: "reader"},
			Creds:  &pb.DatabaseCreds{Username: "v-token-reader-x", Password: marker, LeaseId: "database/creds/reader/1", LeaseDurationSeconds: 60, Renewable: true},
			Anchor: now.Add(-time.Second), Fetched: now.Add(-time.Second), Expire: now.Add(time.Hour), MaxExpire: now.Add(2 * time.Hour), Renewable: true,
		}, {
			Key:    credsKey{tokenHash: api.TokenHash("token-a"), role: "ended"},
			Creds:  &pb.DatabaseCreds{Username: "v-token-ended-x", Password: marker + "-ended", LeaseId: "database/creds/ended/1"},
			Anchor: now.Add(-time.Hour), Fetched: now.Add(-time.Hour), Expire: now.Add(-time.Second),
		}}, []staticRecord{{
			Key:     credsKey{tokenHash: api.TokenHash("token-a"), role: "app"},
			Creds:   &pb.DatabaseStaticCreds{Username: "app_static", Password: marker + "-static", TtlSeconds: 3600},
			Fetched: now, Until: now.Add(time.Hour),
		}, {
			Key:     credsKey{tokenHash: api.TokenHash("token-a"), role: "rotated"},
			Creds:   &pb.DatabaseStaticCreds{Username: "old_static", Password: marker + "-old"},
			Fetched: now.Add(-time.Hour), Until: now.Add(-time.Minute),
		}}
}

// TestCacheFileHeldCredentials: held credentials and static passwords
// round-trip through the cache file, encrypted; a bad entry is
// corruption.
func TestCacheFileHeldCredentials(t *testing.T) {
	now := time.Now().Round(0)
	marker := "db-password-marker-7c1e"
	held, statics := testHeld(marker, now)
	keys := mustKeys(t, newKey())
	b, err := encodeCacheFile(keys, cacheContents{Leases: held, Static: statics}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{marker, "v-token-reader-x", "database/creds", "app_static"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("the file holds %q in the clear", s)
		}
	}
	c, _, err := decodeCacheFile(keys, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Leases) != 2 || len(c.Static) != 2 || len(c.Records) != 0 {
		t.Fatalf("decoded %d leases, %d static, %d records", len(c.Leases), len(c.Static), len(c.Records))
	}
	for i, w := range held {
		g := c.Leases[i]
		if g.Key != w.Key || !proto.Equal(g.Creds, w.Creds) || !g.Anchor.Equal(w.Anchor) || !g.Expire.Equal(w.Expire) ||
			!g.MaxExpire.Equal(w.MaxExpire) || g.Renewable != w.Renewable || g.AtMax != w.AtMax {
			t.Fatalf("lease %d: got %+v, want %+v", i, g, w)
		}
	}
	for i, w := range statics {
		g := c.Static[i]
		if g.Key != w.Key || !proto.Equal(g.Creds, w.Creds) || !g.Until.Equal(w.Until) {
			t.Fatalf("static %d: got %+v, want %+v", i, g, w)
		}
	}
	for name, bad := range map[string]heldRecord{
		"a token in the clear": {Key: credsKey{tokenHash: "token-in-clear", role: "r"}, Creds: &pb.DatabaseCreds{LeaseId: "x"}},
		"no role":              {Key: credsKey{tokenHash: api.TokenHash("t")}, Creds: &pb.DatabaseCreds{LeaseId: "x"}},
		"no lease id":          {Key: credsKey{tokenHash: api.TokenHash("t"), role: "r"}, Creds: &pb.DatabaseCreds{Username: "u"}},
	} {
		b, err := encodeCacheFile(keys, cacheContents{Leases: []heldRecord{bad}}, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := decodeCacheFile(keys, b); !errors.Is(err, ErrCorruptCacheFile) {
			t.Errorf("held credentials with %s: %v", name, err)
		}
	}
}

// TestAgentRestoresHeldCredentials: an agent started during an outage
// serves the credentials of its cache file whose lease runs, to their
// token only and marked stale, and not those that ended; a static
// password only before its rotation.
func TestAgentRestoresHeldCredentials(t *testing.T) {
	dir := t.TempDir()
	key := newKey()
	now := time.Now()
	held, statics := testHeld("restored-marker", now)
	f := &cacheFile{dir: dir, keys: mustKeys(t, key)}
	if err := f.save(cacheContents{Leases: held, Static: statics}, now); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, []string{testcluster.FreeAddr(t)}, "")
	cfg.CacheDir, cfg.CacheKey = filepath.Join(dir), key
	ag := startAgent(t, cfg)
	conn := dial(t, ag.Addr()).conn

	c := creds(t, conn, "token-a", "reader")
	if c.err != nil || c.creds.GetPassword() != "restored-marker" || c.cache != "stale" || c.creds.GetLeaseDurationSeconds() < 3500 {
		t.Fatalf("restored credentials during the outage: %s", c)
	}
	if c := creds(t, conn, "token-b", "reader"); status.Code(c.err) != codes.Unavailable || c.creds != nil {
		t.Fatalf("another token: %s", c)
	}
	if c := creds(t, conn, "token-a", "ended"); status.Code(c.err) != codes.Unavailable || c.creds != nil ||
		api.Reason(c.err) != pb.ErrorReason_UPSTREAM_UNREACHABLE || !strings.Contains(status.Convert(c.err).Message(), `role "ended"`) {
		t.Fatalf("credentials whose lease ended before the restart: %s", c)
	}
	if s := staticCreds(t, conn, "token-a", "app"); s.err != nil || s.static.GetPassword() != "restored-marker-static" || s.cache != "stale" {
		t.Fatalf("restored static password: %s", s)
	}
	if s := staticCreds(t, conn, "token-a", "rotated"); status.Code(s.err) != codes.Unavailable || s.static != nil {
		t.Fatalf("a static password past its rotation: %s", s)
	}
	// Written back at shutdown without what ended.
	shutdown(t, ag)
	got, _, err := f.load()
	if err != nil || len(got.Leases) != 1 || got.Leases[0].Key.role != "reader" || len(got.Static) != 1 || got.Static[0].Key.role != "app" {
		t.Fatalf("the file after shutdown: %+v %v", got, err)
	}
}
