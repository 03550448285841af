package node

import (
	"path"
	"strings"
)

// defaultPath is where a program named without a slash is looked for:
// the PATH of most images' configs.
var defaultPath = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// startHints are files nearly every dynamically linked program reads as
// it starts, for the common C libraries and architectures; an image has a
// few of them and the others are skipped.
var startHints = []string{
	"/lib64/ld-linux-x86-64.so.2",
	"/lib/x86_64-linux-gnu/libc.so.6",
	"/lib/ld-linux-aarch64.so.1",
	"/lib/aarch64-linux-gnu/libc.so.6",
	"/lib64/libc.so.6",
	"/lib/ld-musl-x86_64.so.1",
	"/lib/ld-musl-aarch64.so.1",
}

// execHints lists the paths whose data a task running argv reads first
// (streamfs.Options.Hints): the dynamic loader and libc, the program, and
// for `SHELL -c SCRIPT` the program SCRIPT starts with.
func execHints(argv []string) []string {
	hints := append([]string(nil), startHints...)
	if len(argv) == 0 {
		return hints
	}
	hints = append(hints, programPaths(argv[0])...)
	if len(argv) >= 3 && argv[1] == "-c" && strings.HasSuffix(path.Base(argv[0]), "sh") {
		if f := strings.Fields(argv[2]); len(f) > 0 && !strings.ContainsAny(f[0], "=$`'\"(){};&|<>") {
			hints = append(hints, programPaths(f[0])...)
		}
	}
	return hints
}

// programPaths is where the program name may be: itself with a slash,
// else in each directory of defaultPath.
func programPaths(name string) []string {
	if name == "" {
		return nil
	}
	if strings.Contains(name, "/") {
		return []string{path.Join("/", name)}
	}
	out := make([]string, len(defaultPath))
	for i, d := range defaultPath {
		out[i] = d + "/" + name
	}
	return out
}
