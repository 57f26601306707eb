package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// TestTuneMemoryLimit: the soft limit is 80% of the cgroup's limit (v2's
// memory.max, else v1's file), none for "max" or v1's unlimited, and
// $GOMEMLIMIT wins.
func TestTuneMemoryLimit(t *testing.T) {
	old := cgroupMemoryFiles
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		cgroupMemoryFiles = old
		debug.SetMemoryLimit(before)
	})
	dir := t.TempDir()
	v2, v1 := filepath.Join(dir, "memory.max"), filepath.Join(dir, "memory.limit_in_bytes")
	cgroupMemoryFiles = []string{v2, v1}
	write := func(path, s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("GOMEMLIMIT", "")

	if got := tuneMemoryLimit(); got != 0 {
		t.Fatalf("no cgroup files: soft limit %d, want none", got)
	}
	write(v1, "9223372036854771712\n") // v1: unlimited
	if got := tuneMemoryLimit(); got != 0 {
		t.Fatalf("v1 unlimited: soft limit %d, want none", got)
	}
	write(v1, "268435456\n")
	if got := tuneMemoryLimit(); got != 214748364 || debug.SetMemoryLimit(-1) != got {
		t.Fatalf("v1 256 MiB: soft limit %d (runtime %d), want 80%%", got, debug.SetMemoryLimit(-1))
	}
	write(v2, "max\n") // v2 first: no limit, whatever v1 says
	if got := tuneMemoryLimit(); got != 0 {
		t.Fatalf("v2 max: soft limit %d, want none", got)
	}
	write(v2, "134217728\n")
	if got := tuneMemoryLimit(); got != 107374182 {
		t.Fatalf("v2 128 MiB: soft limit %d, want 80%%", got)
	}
	t.Setenv("GOMEMLIMIT", "1GiB")
	if got := tuneMemoryLimit(); got != 0 {
		t.Fatalf("$GOMEMLIMIT set: soft limit %d, want it left alone", got)
	}
}
