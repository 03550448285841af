package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runSetup runs scripts/setup.sh with apt-get, dpkg-query, sudo and go
// replaced by the shell snippets given, so its handling of apt can be
// tested without touching the machine's packages.
func runSetup(t *testing.T, aptGet string, env ...string) (string, error) {
	t.Helper()
	bin := t.TempDir()
	fakes := map[string]string{
		"apt-get":    aptGet,
		"dpkg-query": "exit 1", // nothing is installed
		"sudo":       `exec "$@"`,
		"go":         "exit 0",
	}
	for name, body := range fakes {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("bash", "../../scripts/setup.sh")
	cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin", "COUNT="+filepath.Join(bin, "count"), "RIFFLE_SETUP_LOCK_POLL=0.05")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestSetupWaitsForAptLock: setup.sh waits while another apt holds the
// lock, and shows the command and apt's output when apt fails.
func TestSetupWaitsForAptLock(t *testing.T) {
	// The lock is held for the first two calls, then released.
	out, err := runSetup(t, `n=$(cat "$COUNT" 2>/dev/null || echo 0); echo $((n+1)) > "$COUNT"
if [ "$n" -lt 2 ]; then echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2; exit 100; fi
exit 0`)
	if err != nil || !strings.Contains(out, "waiting for another apt/dpkg") || !strings.Contains(out, "setup: ok") {
		t.Fatalf("lock held, then released: err = %v, output:\n%s\nwant a wait message and setup: ok", err, out)
	}

	out, err = runSetup(t, `case "$*" in *install*) echo "E: Unable to locate package fuse3" >&2; exit 100;; esac; exit 0`)
	if err == nil || !strings.Contains(out, "apt-get") || !strings.Contains(out, "install") || !strings.Contains(out, "Unable to locate package fuse3") {
		t.Fatalf("failed install: err = %v, output:\n%s\nwant the command and apt's message", err, out)
	}

	out, err = runSetup(t, `echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2; exit 100`, "RIFFLE_SETUP_LOCK_TIMEOUT=1")
	if err == nil || !strings.Contains(out, "held by process 4242") {
		t.Fatalf("lock never released: err = %v, output:\n%s\nwant a failure naming the holder", err, out)
	}
}
