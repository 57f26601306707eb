package integration

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "coffer/api/cofferpb"
)

// The database engine's figures for docs/BENCHMARKS.md (`make
// bench-database`): credentials issued and revoked per second on a
// three-node cluster (production Raft timings) with a local PostgreSQL, and
// the time from a leader kill to the first revocation while the cluster
// holds COFFER_DB_BENCH_LEASES live leases (default 100,000). They run only
// when COFFER_DB_BENCH=1: they take minutes and want a quiet machine.

func benchEnabled(t *testing.T) {
	if os.Getenv("COFFER_DB_BENCH") != "1" {
		t.Skip("set COFFER_DB_BENCH=1 (make bench-database) to measure the database engine")
	}
}

// hammer runs fn from workers goroutines until d has passed and returns
// how many calls succeeded, with the first error.
func hammer(workers int, d time.Duration, fn func(ctx context.Context) error) (int64, error) {
	var ok atomic.Int64
	var first atomic.Value
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := fn(c)
				cancel()
				if errors.Is(err, errDone) {
					return
				}
				if err != nil {
					first.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	err, _ := first.Load().(error)
	return ok.Load(), err
}

// TestBenchDatabaseCredsAndRevocations: creds per second (real users with
// a password and a grant), then revocations per second of as many leases
// falling due at once.
func TestBenchDatabaseCredsAndRevocations(t *testing.T) {
	benchEnabled(t)
	f := newDBFixture(t, ClusterOptions{ProductionRaft: true})
	// The users' rights come from a group role (PostgreSQL's advice for
	// many users with the same rights): a GRANT on one table from many
	// concurrent transactions collides on its catalog row.
	f.pg.Exec(t, `CREATE TABLE stamp (name text PRIMARY KEY, at timestamptz NOT NULL); CREATE ROLE readers; GRANT SELECT ON accounts TO readers`)
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{Name: "app", DbName: "pg",
		CreationStatements:   []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE readers;`},
		RevocationStatements: []string{`INSERT INTO stamp VALUES ('{{name}}', clock_timestamp()); DROP ROLE IF EXISTS "{{name}}";`},
		DefaultTtlSeconds:    20, MaxTtlSeconds: 60}); err != nil {
		t.Fatal(err)
	}
	cl := f.c.Client(t)
	const d = 10 * time.Second
	start := time.Now()
	n, err := hammer(32, d, func(c context.Context) error {
		_, err := cl.DatabaseCreds(c, "app")
		return err
	})
	took := time.Since(start)
	t.Logf("FIGURE creds: %d in %v = %.0f/s (32 clients, 3 nodes, local PostgreSQL, users in a group role; first error: %v)", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), err)
	// Each lease's end, by its user.
	expire := map[string]time.Time{}
	after, last := "", time.Time{}
	for {
		resp, err := cl.ListLeases(ctx(t), &pb.LeaseListRequest{Prefix: "database/creds/app/", After: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range resp.GetLeases() {
			e := time.Unix(0, l.GetExpireTimeUnixNano())
			expire[l.GetSubject()], after, last = e, l.GetId(), maxTime(last, e)
		}
		if !resp.GetMore() || len(resp.GetLeases()) == 0 {
			break
		}
	}
	// They fall due at the rate they were issued, 20 s after: the worker
	// revokes them as they come.
	waitUntil(t, time.Until(last)+2*time.Minute, "every user dropped", func() bool {
		return len(f.pg.Roles(t, userPrefix)) == 0
	})
	rows, err := f.pg.Pool(t).Query(ctx(t), `SELECT name, at FROM stamp ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	var late []time.Duration
	var first, end time.Time
	for rows.Next() {
		var name string
		var at time.Time
		if err := rows.Scan(&name, &at); err != nil {
			t.Fatal(err)
		}
		if first.IsZero() {
			first = at
		}
		end = at
		if e, ok := expire[name]; ok {
			late = append(late, at.Sub(e))
		}
	}
	rows.Close()
	slices.Sort(late)
	if len(late) == 0 {
		t.Fatal("no revocation recorded")
	}
	t.Logf("FIGURE revocations: %d dropped in %v = %.0f/s (due at the issue rate); after expiry: min %v, median %v, p99 %v",
		len(late), end.Sub(first).Round(time.Millisecond), float64(len(late))/end.Sub(first).Seconds(),
		late[0].Round(time.Millisecond), late[len(late)/2].Round(time.Millisecond), late[len(late)*99/100].Round(time.Millisecond))
	if late[0] < 0 {
		t.Errorf("a user was dropped %v before its lease ended", -late[0])
	}

	// A backlog: 1,000 users under long leases, all made due at once by
	// revoke-prefix; the figure is how fast the worker drains them.
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{Name: "backlog", DbName: "pg",
		CreationStatements: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' IN ROLE readers;`},
		DefaultTtlSeconds:  3600}); err != nil {
		t.Fatal(err)
	}
	var made atomic.Int64
	if _, err := hammer(32, time.Hour, func(c context.Context) error {
		if made.Add(1) > 1000 {
			return errDone
		}
		_, err := cl.DatabaseCreds(c, "backlog")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	users := len(f.pg.Roles(t, userPrefix))
	start = time.Now()
	if _, err := cl.RevokeLeasePrefix(ctx(t), "database/creds/backlog/"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Minute, "the backlog dropped", func() bool { return len(f.pg.Roles(t, userPrefix)) == 0 })
	t.Logf("FIGURE revocation backlog: %d users (default revocation: revoke, reassign, drop) dropped in %v = %.0f/s",
		users, time.Since(start).Round(time.Millisecond), float64(users)/time.Since(start).Seconds())
}

// errDone ends a hammer whose work is counted rather than timed.
var errDone = errors.New("done")

// TestBenchDatabaseFailoverWithManyLeases: the cluster holds many live
// leases (their creation and revocation statements cost PostgreSQL
// nothing, so that the figure is coffer's); 200 more fall due just after
// the leader is killed. The figure is the time from the kill, and from
// the new leader's election, to its first revocation.
func TestBenchDatabaseFailoverWithManyLeases(t *testing.T) {
	benchEnabled(t)
	total := 100_000
	if v := os.Getenv("COFFER_DB_BENCH_LEASES"); v != "" {
		var err error
		if total, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	f := newDBFixture(t, ClusterOptions{ProductionRaft: true})
	f.pg.Exec(t, `CREATE TABLE stamp (name text PRIMARY KEY, at timestamptz NOT NULL)`)
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{Name: "bulk", DbName: "pg", CreationStatements: []string{`SELECT 1`},
		RevocationStatements: []string{`SELECT 1`}, DefaultTtlSeconds: 3600, MaxTtlSeconds: 7200}); err != nil {
		t.Fatal(err)
	}
	cl := f.c.Client(t)
	start := time.Now()
	var made atomic.Int64
	var wg sync.WaitGroup
	per := total / 64
	for w := range 64 {
		wg.Go(func() {
			for i := 0; i < per || (w == 0 && i < per+total%64); i++ {
				c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := cl.DatabaseCreds(c, "bulk")
				cancel()
				if err != nil {
					t.Errorf("bulk creds: %v", err)
					return
				}
				made.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("FIGURE preload: %d leases in %v (%.0f creds/s without database work)", made.Load(), time.Since(start).Round(time.Second), float64(made.Load())/time.Since(start).Seconds())

	// 200 leases due 3 s from now; the leader dies 100 ms before.
	if _, err := f.cl.WriteDatabaseRole(ctx(t), &pb.DatabaseRole{Name: "due", DbName: "pg",
		CreationStatements:   []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}'`},
		RevocationStatements: []string{`INSERT INTO stamp VALUES ('{{name}}', clock_timestamp()); DROP ROLE IF EXISTS "{{name}}";`},
		DefaultTtlSeconds:    4, MaxTtlSeconds: 60}); err != nil {
		t.Fatal(err)
	}
	var dueAt time.Time
	for i := range 200 {
		cr, err := cl.DatabaseCreds(ctx(t), "due")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			info, err := cl.LookupLease(ctx(t), cr.GetLeaseId())
			if err != nil {
				t.Fatal(err)
			}
			dueAt = time.Unix(0, info.GetExpireTimeUnixNano())
		}
	}
	time.Sleep(time.Until(dueAt.Add(-100 * time.Millisecond))) // the fault's schedule
	old := f.c.WaitForLeader(t)
	f.c.Kill(old)
	killed := time.Now()
	nl := f.c.WaitForNewLeader(t, old)
	elected := time.Now()
	waitUntil(t, time.Minute, "the due users dropped", func() bool { return len(f.pg.Roles(t, userPrefix)) == 0 })
	var first time.Time
	if err := f.pg.Pool(t).QueryRow(ctx(t), `SELECT min(at) FROM stamp WHERE at > $1`, killed).Scan(&first); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE failover with %d live leases: leader %s killed, %s elected after %v, first revocation %v after the kill (%v after the election)",
		total, old.ID, nl.ID, elected.Sub(killed).Round(time.Millisecond), first.Sub(killed).Round(time.Millisecond), first.Sub(elected).Round(time.Millisecond))
	if first.Sub(elected) > time.Second {
		t.Errorf("first revocation %v after the election, want under 1s", first.Sub(elected))
	}
}
