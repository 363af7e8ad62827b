package e2e

import "syscall"

// procAttr makes children die with the test binary if it is killed before
// its cleanups run.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
