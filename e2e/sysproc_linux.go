package e2e

import "syscall"

// dieWithParent makes the kernel SIGKILL a child when the test process dies, so servers started
// by a test that is interrupted or times out do not outlive it.
func dieWithParent(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
