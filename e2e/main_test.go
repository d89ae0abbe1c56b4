package e2e

import (
	"os"
	"testing"
)

// TestMain removes the binaries built for this test process once every test has run.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}
