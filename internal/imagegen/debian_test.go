package imagegen

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/testutil"
)

// debianCache is shared by every package's tests, so debootstrap runs once
// per machine.
const debianCache = "/var/cache/riffle-test"

func TestDebianImage(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "debootstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := DebianImage(ctx, debianCache)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("DebianImage in %v", time.Since(start))
	// Reading 130 MB through gzip under -race takes half a minute and
	// checks no concurrency; there, only the small layers are read.
	if !raceEnabled {
		if err := validImage(img); err != nil {
			t.Fatal(err)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 3 {
		t.Fatalf("%d layers, want 3", len(layers))
	}
	names := make([]map[string]bool, len(layers))
	for i, l := range layers {
		names[i] = map[string]bool{}
		if raceEnabled && i == 0 {
			names[i]["usr/bin/bash"] = true
			continue
		}
		tr := tar.NewReader(bytes.NewReader(tarBytes(t, l)))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names[i][h.Name] = true
		}
	}
	for _, c := range []struct {
		layer int
		name  string
	}{{0, "usr/bin/bash"}, {1, "etc/passwd"}, {1, "etc/issue.net"}, {2, "etc/.wh.issue.net"}} {
		if !names[c.layer][c.name] {
			t.Errorf("layer %d has no %s", c.layer, c.name)
		}
	}
	if !names[1]["var/lib/apt/lists/"] || len(names[1]) < 100 {
		t.Errorf("layer 1 lacks apt's lists directory or most of its entries")
	}
	for i, l := range layers {
		s, _ := l.Size()
		t.Logf("layer %d: %d bytes", i, s)
	}
	// Layering the cached rootfs again gives the image the layout cache
	// holds. Compression under -race is ten times slower and checks no
	// concurrency, so skip it there.
	if raceEnabled || testing.Short() {
		return
	}
	tarPath, err := DebianRootfs(ctx, DebianOptions{CacheDir: debianCache})
	if err != nil {
		t.Fatal(err)
	}
	again, err := debianImageFromTar(tarPath, DebianOptions{Suite: "bookworm"})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := img.Digest()
	b, _ := again.Digest()
	if a != b {
		t.Errorf("layering the cached rootfs gives %s, the cached image is %s", b, a)
	}
}

func TestAptMirror(t *testing.T) {
	list := "# comment\ndeb [arch=amd64 signed-by=/x.gpg] http://mirror.example/debian bookworm main\ndeb http://security.debian.org/debian-security bookworm-security main\n"
	if got := mirrorFromList(list, "bookworm"); got != "http://mirror.example/debian" {
		t.Errorf("list: %q", got)
	}
	deb822 := "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\n"
	if got := mirrorFromDeb822(deb822, "bookworm"); got != "http://deb.example/debian" {
		t.Errorf("deb822: %q", got)
	}
	if got := mirrorFromDeb822(deb822, "trixie"); got != "" {
		t.Errorf("deb822 trixie: %q", got)
	}
	if got := mirrorFromDeb822("Types: deb\nEnabled: no\nURIs: http://x/debian\nSuites: bookworm\n", "bookworm"); got != "" {
		t.Errorf("disabled stanza: %q", got)
	}
}
