package node

import (
	"slices"
	"testing"
)

func TestExecHints(t *testing.T) {
	for _, tc := range []struct {
		argv      []string
		want, not []string
	}{
		{argv: nil, want: []string{"/lib/x86_64-linux-gnu/libc.so.6"}, not: []string{"/bin/sh"}},
		{argv: []string{"/bin/sh", "-c", "python3 -c 'import numpy'"}, want: []string{"/bin/sh", "/usr/bin/python3", "/usr/local/bin/python3", "/lib64/ld-linux-x86-64.so.2"}},
		{argv: []string{"bash", "-c", "./run.sh --fast"}, want: []string{"/bin/bash", "/usr/bin/bash", "/run.sh"}},
		{argv: []string{"sh", "-c", "FOO=1 exec prog"}, want: []string{"/bin/sh"}, not: []string{"/bin/FOO=1", "/bin/exec"}},
		{argv: []string{"python3", "-c", "print(1)"}, want: []string{"/usr/bin/python3"}, not: []string{"/usr/bin/print(1)"}},
		{argv: []string{""}, not: []string{"/"}},
	} {
		got := execHints(tc.argv)
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("execHints(%q) lacks %q: %q", tc.argv, w, got)
			}
		}
		for _, n := range tc.not {
			if slices.Contains(got, n) {
				t.Errorf("execHints(%q) has %q: %q", tc.argv, n, got)
			}
		}
	}
}
