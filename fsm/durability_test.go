package fsm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"

	"coffer/fsm/fsmpb"
)

// withBootID points the FSM at a fake boot id file holding id ("" for
// none) for the length of the test.
func withBootID(t *testing.T, id string) {
	t.Helper()
	old := bootIDPath
	t.Cleanup(func() { bootIDPath = old })
	bootIDPath = filepath.Join(t.TempDir(), "boot_id")
	if id != "" {
		if err := os.WriteFile(bootIDPath, []byte(id+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func readMarker(t *testing.T, dbPath string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(unsyncedMarker(dbPath))
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func wantSecret(t *testing.T, f *FSM, path, value string) {
	t.Helper()
	v, err := f.Get(path, 0)
	if err != nil {
		t.Fatalf("Get(%s): %v", path, err)
	}
	if plainOf(v.Ciphertext) != value {
		t.Fatalf("Get(%s) = %q, want %q", path, v.Ciphertext, value)
	}
}

// TestUnsyncedMarkerLifecycle: an open database carries the marker with
// this boot's id, commits skip fsync, and a clean Close syncs and removes
// the marker without losing anything.
func TestUnsyncedMarkerLifecycle(t *testing.T) {
	withBootID(t, "boot-a")
	h := newHarness(t, Options{})
	if !h.f.unsynced || !h.f.db.NoSync {
		t.Fatalf("with a boot id: unsynced=%v NoSync=%v, want both true", h.f.unsynced, h.f.db.NoSync)
	}
	if id, ok := readMarker(t, h.path); !ok || id != "boot-a\n" {
		t.Fatalf("marker = %q, %v; want this boot's id", id, ok)
	}
	h.mustOK(putCmd("a/b", "v1"))
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := readMarker(t, h.path); ok {
		t.Fatal("a clean Close left the unsynced marker")
	}
	f, err := Open(h.path, h.opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	h.f = f
	if h.f.AppliedIndex() != 1 {
		t.Fatalf("AppliedIndex after reopen = %d, want 1", h.f.AppliedIndex())
	}
	wantSecret(t, h.f, "a/b", "v1")
}

// TestMachineRestartSetsTornStateAside: a marker from another boot means
// the machine went down with unsynced commits, so the database is set
// aside and the FSM starts empty (Raft then restores and replays).
func TestMachineRestartSetsTornStateAside(t *testing.T) {
	withBootID(t, "boot-a")
	h := newHarness(t, Options{})
	h.mustOK(putCmd("a/b", "v1"))
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	// As if the process had died without closing, then the machine restarted.
	if err := os.WriteFile(unsyncedMarker(h.path), []byte("boot-a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withBootID(t, "boot-b")
	f, err := Open(h.path, h.opts)
	if err != nil {
		t.Fatalf("Open after a machine restart: %v", err)
	}
	h.f = f
	if got := f.AppliedIndex(); got != 0 {
		t.Fatalf("AppliedIndex = %d, want 0: a possibly torn database was trusted", got)
	}
	if _, err := f.Get("a/b", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get from the fresh database = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(discardedPath(h.path)); err != nil {
		t.Fatalf("the old database was not set aside: %v", err)
	}
	if id, ok := readMarker(t, h.path); !ok || id != "boot-b\n" {
		t.Fatalf("marker = %q, %v; want the new boot's id", id, ok)
	}
}

// TestNoBootIDSyncsEveryCommit: without a boot id nothing can tell a
// process crash from a machine crash, so every commit is fsynced.
func TestNoBootIDSyncsEveryCommit(t *testing.T) {
	withBootID(t, "")
	h := newHarness(t, Options{})
	if h.f.unsynced || h.f.db.NoSync {
		t.Fatalf("without a boot id: unsynced=%v NoSync=%v, want both false", h.f.unsynced, h.f.db.NoSync)
	}
	if _, ok := readMarker(t, h.path); ok {
		t.Fatal("marker written although commits are synced")
	}
	h2 := newHarness(t, Options{SyncEveryCommit: true})
	if h2.f.unsynced || h2.f.db.NoSync {
		t.Fatal("SyncEveryCommit did not sync every commit")
	}
}

// crashHelperEnv makes the test binary a child that applies entries to the
// FSM at the given path and then kills itself with SIGKILL.
const crashHelperEnv = "COFFER_FSM_CRASH_HELPER"

// runCrashHelper is the child's side of TestProcessCrashKeepsState.
func runCrashHelper() {
	path, boot := os.Getenv(crashHelperEnv), os.Getenv(crashHelperEnv+"_BOOT")
	bootIDPath = boot
	n, _ := strconv.Atoi(os.Getenv(crashHelperEnv + "_N"))
	f, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: open:", err)
		os.Exit(3)
	}
	for i := 1; i <= n; i++ {
		data, err := EncodeCommand(&fsmpb.Command{Op: fsmpb.Op_OP_PUT, Path: fmt.Sprintf("k/%d", i), Ciphertext: ct(fmt.Sprintf("v%d", i)), LeaderTimeUnixNano: baseTime.UnixNano()})
		if err == nil {
			err = asResult(f.Apply(&raft.Log{Index: uint64(i), Term: 1, Type: raft.LogCommand, Data: data}))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper: apply:", err)
			os.Exit(3)
		}
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// asResult returns the error of an Apply response.
func asResult(resp any) error {
	r, ok := resp.(Result)
	if !ok {
		return fmt.Errorf("apply returned %T", resp)
	}
	return r.Err
}

// TestProcessCrashKeepsState kills a real process right after its
// unsynced commits and checks that they are all there in the same boot:
// the kernel keeps what the process wrote.
func TestProcessCrashKeepsState(t *testing.T) {
	withBootID(t, "boot-a")
	path := filepath.Join(t.TempDir(), "fsm.db")
	const n = 200
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+path, crashHelperEnv+"_BOOT="+bootIDPath, crashHelperEnv+"_N="+strconv.Itoa(n))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die by SIGKILL: %v\n%s", err, out)
	}
	if id, ok := readMarker(t, path); !ok || id != "boot-a\n" {
		t.Fatalf("after the crash the marker = %q, %v; want this boot's id", id, ok)
	}
	f, err := Open(path, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open after the crash: %v", err)
	}
	defer f.Close()
	if got := f.AppliedIndex(); got != n {
		t.Fatalf("AppliedIndex after a process crash = %d, want %d", got, n)
	}
	for i := 1; i <= n; i += 37 {
		wantSecret(t, f, fmt.Sprintf("k/%d", i), fmt.Sprintf("v%d", i))
	}
	if _, err := os.Stat(discardedPath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a process crash set the database aside: %v", err)
	}
}
