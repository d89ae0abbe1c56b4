//go:build !linux

package identity

// lowerThreadPriority is a no-op where threads have no priority of their own to lower.
func lowerThreadPriority() {}
