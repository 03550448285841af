// Package testutil holds helpers shared by Riffle's tests.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where nothing that
// a test needs may be missing.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequiresRoot skips t when the test does not run as root. CI runs as root,
// so there a missing privilege is a failure, never a silent skip.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root, and CI must run as root")
	}
	t.Skip("needs root")
}

// RequiresBinary skips t when the named program is not on PATH, and fails it
// in CI, where scripts/setup.sh must have installed it.
func RequiresBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if InCI() {
		t.Fatalf("%s is not installed; scripts/setup.sh must install it", name)
	}
	t.Skipf("%s is not installed (run scripts/setup.sh)", name)
	return ""
}
