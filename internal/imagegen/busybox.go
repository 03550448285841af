package imagegen

import (
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BusyboxApplets are the commands linked to busybox in a Busybox image.
var BusyboxApplets = []string{
	"sh", "ash", "cat", "echo", "env", "ls", "sleep", "true", "false", "test",
	"head", "tail", "wc", "sha256sum", "grep", "id", "hostname", "mkdir", "rm",
	"touch", "cp", "mv", "ip", "ps", "kill", "date", "dd", "seq", "printf", "stat",
}

// Busybox returns the spec of a small runnable image: a static busybox
// binary (read from busyboxPath, e.g. /bin/busybox from Debian's
// busybox-static) with its applets in one gzip layer, and a data layer with
// /data/hello.txt and a 4 MiB /data/blob.bin. Its default command prints a
// greeting.
func Busybox(busyboxPath string) (Spec, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return Spec{}, fmt.Errorf("imagegen: busybox binary: %w (install busybox-static)", err)
	}
	base := []Entry{
		{Type: Dir, Name: "bin"}, {Type: Dir, Name: "etc"}, {Type: Dir, Name: "tmp", Mode: 01777},
		{Type: Dir, Name: "proc"}, {Type: Dir, Name: "sys"}, {Type: Dir, Name: "dev"},
		{Type: Dir, Name: "root", Mode: 0o700}, {Type: Dir, Name: "data"},
		{Type: File, Name: "bin/busybox", Mode: 0o755, Data: bin},
		{Type: File, Name: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{Type: File, Name: "etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, a := range BusyboxApplets {
		base = append(base, Entry{Type: Hardlink, Name: "bin/" + a, Linkname: "bin/busybox"})
	}
	data := []Entry{
		{Type: File, Name: "data/hello.txt", Data: []byte("hello from a streamed image\n")},
		{Type: File, Name: "data/blob.bin", Size: 4 << 20, Seed: 7, Fill: Mixed},
	}
	return Spec{
		Layers: []Layer{
			{Entries: base, Comment: "busybox"},
			{Entries: data, Comment: "data"},
		},
		Config: v1.Config{
			Env:        []string{"PATH=/bin"},
			Cmd:        []string{"sh", "-c", "echo hello from busybox; cat /data/hello.txt"},
			WorkingDir: "/",
		},
	}, nil
}
