package scheduler_test

import (
	"os"
	"testing"
)

// TestMain removes what tests share across the binary (the registry of
// busyboxRef) once they are all done: t.TempDir cannot, as it is per test.
func TestMain(m *testing.M) {
	code := m.Run()
	regCleanup()
	os.Exit(code)
}
