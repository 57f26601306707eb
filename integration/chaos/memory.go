package chaos

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// MemoryDriver is a driver that can bound a node's memory: the
// memory-limit scenario needs one (the docker driver: docker update
// --memory, the cgroup's limit; the kernel kills the node past it).
type MemoryDriver interface {
	Driver
	// LimitMemory sets node id's memory limit (swap included) to bytes.
	LimitMemory(ctx context.Context, id string, bytes int64) error
	// OOMKilled reports whether node id was killed for its memory.
	OOMKilled(ctx context.Context, id string) (bool, error)
	// Exited waits until node id has exited and returns its exit code
	// and its last lines.
	Exited(ctx context.Context, id string) (code int, logs string, err error)
}

// LimitMemory implements MemoryDriver.
func (d *Docker) LimitMemory(ctx context.Context, id string, bytes int64) error {
	d.opts.Logf("limit %s's memory to %d MiB", id, bytes>>20)
	_, err := docker(ctx, "update", fmt.Sprintf("--memory=%d", bytes), fmt.Sprintf("--memory-swap=%d", bytes), id)
	return err
}

// OOMKilled implements MemoryDriver.
func (d *Docker) OOMKilled(ctx context.Context, id string) (bool, error) {
	out, err := docker(ctx, "inspect", "--format", "{{.State.OOMKilled}}", id)
	return strings.TrimSpace(out) == "true", err
}

// stormResult is what a storm of large writes got.
type stormResult struct {
	// acked holds every acknowledged write: path → value.
	acked map[string]string
	// writes counts the writes made; overloaded those refused as
	// OVERLOADED (after the client's own retries), failed the others
	// that failed.
	writes, overloaded, failed int
	// lastErr is the last other failure.
	lastErr error
}

// storm writes values of size bytes (the base64 of random bytes) to new
// paths under prefix through cl, from writers goroutines, until stop is
// closed, ctx ends, or max writes were made.
func storm(ctx context.Context, cl *api.Client, prefix string, writers, size, max int, stop <-chan struct{}) stormResult {
	res := stormResult{acked: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			raw := make([]byte, size*3/4)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				mu.Lock()
				if res.writes >= max {
					mu.Unlock()
					return
				}
				res.writes++
				mu.Unlock()
				rand.Read(raw)
				path, v := fmt.Sprintf("%s/%d-%d", prefix, w, i), base64.StdEncoding.EncodeToString(raw)
				wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				_, err := cl.Put(wctx, &pb.PutRequest{Path: path, Data: map[string]string{"v": v}})
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					res.acked[path] = v
				case api.Reason(err) == pb.ErrorReason_OVERLOADED:
					res.overloaded++
				default:
					res.failed++
					res.lastErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res
}

// stormValue is the size of a storm write's value: the largest a secret
// may hold (MaxSecretSize, 1 MiB, counts the key and the framing too)
// rounded down.
const stormValue = 960 << 10

// readBack reads every acknowledged write of acked through cl
// (linearizable), from 8 readers, each read within readCallTimeout: a
// storm's values are hundreds of MiB.
func readBack(ctx context.Context, cl *api.Client, acked map[string]string, what string) error {
	paths := make(chan string)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for path := range paths {
				rctx, cancel := context.WithTimeout(ctx, readCallTimeout)
				g, err := cl.Get(rctx, &pb.GetRequest{Path: path, Read: &pb.ReadOptions{Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}})
				cancel()
				if err != nil || g.Data["v"] != acked[path] {
					select {
					case errs <- fmt.Errorf("%s, acknowledged %s, reads back wrong (err %v)", path, what, err):
					default:
					}
				}
			}
		})
	}
	for path := range acked {
		if len(errs) > 0 {
			break
		}
		paths <- path
	}
	close(paths)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// MemoryLimit storms one follower with large writes, sent to it (it
// forwards them to the leader), twice: first under a memory limit its
// request budget keeps it within (the node must refuse what would exceed
// the budget, OVERLOADED, and must not be killed), then under one too
// small for it to run a storm at all (set while it is stopped; the kernel
// kills it; the others serve on; it is started again with enough,
// unsealed, and catches up). Every storm
// write acknowledged reads back at the end.
func MemoryLimit(enough, tooLittle int64) Scenario {
	return Scenario{Name: "memory-limit", Body: func(r *Run) error {
		md, ok := r.C.D.(MemoryDriver)
		if !ok {
			return fmt.Errorf("the %s driver cannot limit a node's memory", r.C.D.Name())
		}
		leader, err := r.Leader()
		if err != nil {
			return err
		}
		victim := r.C.Followers(leader)[0]
		cl, err := api.New(api.Config{Endpoints: []string{r.C.D.Endpoint(victim)}, Token: r.C.Token, TLS: r.C.D.ClientTLS()})
		if err != nil {
			return err
		}
		defer cl.Close()
		all, err := api.New(api.Config{Endpoints: r.C.Endpoints(), Token: r.C.Token, TLS: r.C.D.ClientTLS()})
		if err != nil {
			return err
		}
		defer all.Close()
		ctx, cancel := r.waitCtx()
		defer cancel()

		// 1. Enough memory for the node's limits: refusals, no kill.
		if err := md.LimitMemory(ctx, victim, enough); err != nil {
			return err
		}
		f := r.Begin("memory-storm", []string{victim}, "storm follower %s (memory limit %d MiB)", victim, enough>>20)
		held := storm(ctx, cl, "secret/chaos/memory-limit/held", 48, stormValue, 600, nil)
		r.Healed(f)
		killed, err := md.OOMKilled(ctx, victim)
		if err != nil {
			return err
		}
		r.Logf("storm within the limit: %d writes, %d acknowledged, %d refused OVERLOADED, %d failed otherwise; killed: %v", held.writes, len(held.acked), held.overloaded, held.failed, killed)
		if killed {
			return fmt.Errorf("%s was killed for its memory under a limit of %d MiB: its request budget did not hold", victim, enough>>20)
		}
		if held.failed > 0 {
			return fmt.Errorf("%d storm writes failed with another error than OVERLOADED under a limit of %d MiB; the last: %v", held.failed, enough>>20, held.lastErr)
		}
		if err := r.Recover(f); err != nil {
			return err
		}

		// 2. Too little memory: the kernel kills it, the cluster serves.
		ctx, cancel = r.waitCtx()
		defer cancel()
		// A running container's limit cannot go below what it uses: the
		// node is stopped, given the small limit and started again, while
		// a storm goes on through the other nodes.
		k := r.Begin("memory-oom-kill", []string{victim}, "restart follower %s with a memory limit of %d MiB under a storm, until it is killed", victim, tooLittle>>20)
		if err := r.C.D.Stop(ctx, victim); err != nil {
			return err
		}
		if err := md.LimitMemory(ctx, victim, tooLittle); err != nil {
			return err
		}
		if err := r.C.D.Start(ctx, victim); err != nil {
			return err
		}
		exited := make(chan struct{})
		var code int
		var exitErr error
		go func() {
			defer close(exited)
			code, _, exitErr = md.Exited(ctx, victim)
		}()
		// Catching up alone no longer kills it: a sealed node only stores
		// its log, in replication batches bounded by its request budget,
		// and that fits in 64 MiB. Once unsealed, it is stormed directly
		// as well, as in the first part: its budget's worth of requests
		// and their forwarding do not fit. The unseal and the direct
		// storm end once the node is gone; what the node acknowledged
		// before must read back all the same.
		uctx, ucancel := context.WithCancel(ctx)
		var direct stormResult
		var unsealed sync.WaitGroup
		unsealed.Go(func() {
			if err := r.C.Unseal(uctx, victim); err != nil {
				return
			}
			r.Logf("%s unsealed under %d MiB; storming it directly too", victim, tooLittle>>20)
			direct = storm(uctx, cl, "secret/chaos/memory-limit/direct", 48, stormValue, 2000, exited)
		})
		killedStorm := storm(ctx, all, "secret/chaos/memory-limit/killed", 8, stormValue, 2000, exited)
		ucancel()
		unsealed.Wait()
		select {
		case <-exited:
		default:
			return fmt.Errorf("%s ran under a memory limit of %d MiB through a storm of %d writes of 960 KiB without being killed", victim, tooLittle>>20, killedStorm.writes)
		}
		if exitErr != nil {
			return exitErr
		}
		if killed, err = md.OOMKilled(ctx, victim); err != nil || !killed {
			return fmt.Errorf("%s exited with status %d, not killed for its memory (%v)", victim, code, err)
		}
		r.Logf("%s was killed for its memory (status %d) during a storm of %d writes through the others (%d acknowledged, %d failed) and %d through it (%d acknowledged)", victim, code, killedStorm.writes, len(killedStorm.acked), killedStorm.failed, direct.writes, len(direct.acked))
		if killedStorm.failed > 0 {
			return fmt.Errorf("%d storm writes through the other nodes failed while %s was down; the last: %v", killedStorm.failed, victim, killedStorm.lastErr)
		}
		if err := md.LimitMemory(ctx, victim, enough); err != nil {
			return err
		}
		if err := r.StartNodes(victim); err != nil {
			return err
		}
		if err := r.C.WaitCaughtUp(ctx, victim); err != nil {
			return err
		}
		r.Healed(k)
		if err := r.Recover(k); err != nil {
			return err
		}
		if err := readBack(r.Ctx, all, held.acked, "under the memory limit"); err != nil {
			return err
		}
		if err := readBack(r.Ctx, all, direct.acked, "by the node before it was killed"); err != nil {
			return err
		}
		return readBack(r.Ctx, all, killedStorm.acked, "while the node was killed")
	}}
}
