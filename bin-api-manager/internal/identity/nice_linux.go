package identity

import "syscall"

// lowerThreadPriority gives the calling OS thread the lowest scheduling priority (nice 19): a
// process may always lower its own threads' priority. Best effort.
func lowerThreadPriority() {
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}
