package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"coffer/api"
)

// DiskDriver is a driver whose nodes' data can be given a size limit:
// the disk-full scenario needs one (the docker driver with
// DockerOptions.TmpfsData).
type DiskDriver interface {
	Driver
	// LimitDisk leaves node id spare bytes of free space on its data's
	// filesystem; FreeDisk gives it plenty again.
	LimitDisk(ctx context.Context, id string, spare int64) error
	FreeDisk(ctx context.Context, id string) error
	// Exited waits until node id has exited by itself and returns its
	// exit code and the last lines it wrote.
	Exited(ctx context.Context, id string) (code int, logs string, err error)
}

// tmpfsSize is the size of a node's data tmpfs when its disk is not
// limited: far more than a chaos run writes (a tmpfs takes memory only
// for what it holds).
const tmpfsSize = 1 << 30

// mountData mounts a tmpfs for node n's data on the host, under d's
// temporary directory, to be bind-mounted at /data.
func (d *Docker) mountData(n *dockerNode) error {
	dir := filepath.Join(d.dataDir, n.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", tmpfsSize)); err != nil {
		return fmt.Errorf("chaos: mount a tmpfs for %s's data (needs root): %w", n.name, err)
	}
	n.data = dir
	return nil
}

// unmountData unmounts the nodes' data tmpfs mounts and removes their
// directory; the containers are gone by then.
func (d *Docker) unmountData() error {
	if d.dataDir == "" {
		return nil
	}
	var errs []error
	for _, n := range d.nodes {
		if n.data != "" {
			if err := syscall.Unmount(n.data, syscall.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("chaos: unmount %s: %w", n.data, err))
			}
			n.data = ""
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.RemoveAll(d.dataDir))
	}
	d.dataDir = ""
	return errors.Join(errs...)
}

// LimitDisk implements DiskDriver: the node's tmpfs shrinks to what it
// holds plus spare.
func (d *Docker) LimitDisk(ctx context.Context, id string, spare int64) error {
	n, err := d.node(id)
	if err != nil {
		return err
	}
	if n.data == "" {
		return fmt.Errorf("chaos: %s has no data tmpfs: create the cluster with TmpfsData", id)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.data, &st); err != nil {
		return err
	}
	used := int64(st.Blocks-st.Bfree) * st.Bsize
	d.opts.Logf("limit %s's disk to %d MiB used + %d MiB", id, used>>20, spare>>20)
	return syscall.Mount("tmpfs", n.data, "tmpfs", syscall.MS_REMOUNT, fmt.Sprintf("size=%d", used+spare))
}

// FreeDisk implements DiskDriver.
func (d *Docker) FreeDisk(ctx context.Context, id string) error {
	n, err := d.node(id)
	if err != nil {
		return err
	}
	d.opts.Logf("free %s's disk", id)
	return syscall.Mount("tmpfs", n.data, "tmpfs", syscall.MS_REMOUNT, fmt.Sprintf("size=%d", tmpfsSize))
}

// Exited implements DiskDriver: docker wait, then the container's exit
// code and its last log lines.
func (d *Docker) Exited(ctx context.Context, id string) (int, string, error) {
	out, err := docker(ctx, "wait", id)
	if err != nil {
		return 0, "", err
	}
	var code int
	if _, err := fmt.Sscan(strings.TrimSpace(out), &code); err != nil {
		return 0, "", fmt.Errorf("chaos: docker wait %s printed %q", id, out)
	}
	// The server logs (and says why it exited) on standard error.
	logs, err := exec.CommandContext(ctx, "docker", "logs", "--tail", "5", id).CombinedOutput()
	return code, string(logs), err
}

// DiskFull fills the disk of a follower, and then of the leader, with a
// storm of large writes from a client of its own. The node must stop
// itself with status 1 and a line that says what failed and what to do,
// the others take writes on, and once its disk is freed it starts from the
// files the full disk left, is unsealed and catches up. Every large write
// acknowledged is read back at the end (the load's history is checked as
// in every scenario).
func DiskFull() Scenario {
	return Scenario{Name: "disk-full", Body: func(r *Run) error {
		dd, ok := r.C.D.(DiskDriver)
		if !ok {
			return fmt.Errorf("the %s driver cannot limit a node's disk", r.C.D.Name())
		}
		cl, err := api.New(api.Config{Endpoints: r.C.Endpoints(), Token: r.C.Token, TLS: r.C.D.ClientTLS()})
		if err != nil {
			return err
		}
		defer cl.Close()
		acked := map[string]string{}
		for _, role := range []string{"follower", "leader"} {
			leader, err := r.Leader()
			if err != nil {
				return err
			}
			victim := leader
			if role == "follower" {
				victim = r.C.Followers(leader)[0]
			}
			if err := diskFull(r, dd, cl, role, victim, acked); err != nil {
				return err
			}
		}
		if err := readBack(r.Ctx, cl, acked, "during a full disk"); err != nil {
			return err
		}
		r.Logf("the %d large writes acknowledged while disks filled all read back", len(acked))
		return nil
	}}
}

// diskSpare is the free space a node is left with: a few of the storm's
// writes fill it (each lands in the Raft log and in the state database).
const diskSpare = 6 << 20

// diskFull runs one round of DiskFull on victim.
func diskFull(r *Run, dd DiskDriver, cl *api.Client, role, victim string, acked map[string]string) error {
	ctx, cancel := r.waitCtx()
	defer cancel()
	f := r.Begin("disk-full-"+role, []string{victim}, "fill the disk of %s %s", role, victim)
	if err := dd.LimitDisk(ctx, victim, diskSpare); err != nil {
		return err
	}
	// The storm: 256 KiB values, one writer, until the victim has exited.
	exited := make(chan struct{})
	var code int
	var logs string
	var exitErr error
	go func() {
		defer close(exited)
		code, logs, exitErr = dd.Exited(ctx, victim)
	}()
	res := storm(ctx, cl, "secret/chaos/disk-full/"+role, 1, 256<<10, 400, exited)
	select {
	case <-exited:
	default:
		return fmt.Errorf("%s took %d writes of 256 KiB with %d MiB free and did not stop", victim, res.writes, diskSpare>>20)
	}
	for path, v := range res.acked {
		acked[path] = v
	}
	if exitErr != nil {
		return exitErr
	}
	r.Logf("%s exited with status %d: %s", victim, code, lastLine(logs))
	if code != 1 || !strings.Contains(logs, "could not be written") || !strings.Contains(logs, "free space") {
		return fmt.Errorf("%s exited with status %d and did not say its disk is full: %s", victim, code, logs)
	}
	if role == "leader" {
		if err := r.WaitTakeover(victim); err != nil {
			return err
		}
	} else if err := r.Load.WaitAcked(ctx, 1, time.Now()); err != nil {
		return err
	}
	if err := dd.FreeDisk(ctx, victim); err != nil {
		return err
	}
	if err := r.StartNodes(victim); err != nil {
		return err
	}
	r.Healed(f)
	return r.Recover(f)
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
