//go:build !linux

package main

import "os/exec"

// bindToTest is a no-op where the kernel offers no parent-death signal;
// t.Cleanup still kills every process a test starts.
func bindToTest(*exec.Cmd) {}
