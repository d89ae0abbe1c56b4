//go:build !linux

package e2e

import "syscall"

// dieWithParent has no portable equivalent outside Linux; the tests' cleanups stop the children.
func dieWithParent(*syscall.SysProcAttr) {}
