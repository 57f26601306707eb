package main

import (
	"os/exec"
	"syscall"
)

// bindToTest makes the kernel kill cmd if the test binary dies first (a
// panic or a -timeout), so no server outlives the test run.
func bindToTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
