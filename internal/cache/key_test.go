package cache

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

var validHex = strings.Repeat("ab", 32)

func TestHostileKeysRefused(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	for _, k := range []string{
		"", "../x", "/etc", "/etc/passwd", ".", "..", "sha256:", "sha256",
		"sha256:../../etc/passwd",
		"sha256:" + strings.ToUpper(validHex),
		"sha256:" + validHex + "/..",
		"sha256:" + validHex[:62],
		"sha256:" + validHex + "00",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"blobs/sha256/ab/" + validHex,
		"span:", "span:sha256:" + validHex,
		"span:sha256:" + validHex + ":",
		"span:sha256:" + validHex + ":-1",
		"span:sha256:" + validHex + ":+1",
		"span:sha256:" + validHex + ":01",
		"span:sha256:" + validHex + ":1.0",
		"span:sha256:" + validHex + ":4294967296",
		"span:sha256:" + validHex + ":1/../../x",
		"span:../x:1",
		"sha256:" + validHex + "\x00",
	} {
		if _, err := c.Get(t.Context(), k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Get(%q): %v, want ErrInvalidKey", k, err)
		}
		_, err := c.Fill(t.Context(), k, -1, func(context.Context, io.Writer) error { return nil })
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Fill(%q): %v, want ErrInvalidKey", k, err)
		}
	}
}

func TestKeyPaths(t *testing.T) {
	d := digest.Digest("sha256:" + validHex)
	for _, tc := range []struct{ key, path string }{
		{d.String(), "blobs/sha256/ab/" + validHex},
		{SpanKey(d, 0), "spans/sha256/ab/" + validHex + ".0"},
		{SpanKey(d, 12345), "spans/sha256/ab/" + validHex + ".12345"},
		{IndexKey(d), "indexes/sha256/ab/" + validHex},
		{"sha512:" + strings.Repeat("0f", 64), "blobs/sha512/0f/" + strings.Repeat("0f", 64)},
	} {
		k, err := parseKey(tc.key)
		if err != nil {
			t.Fatalf("%q: %v", tc.key, err)
		}
		if got := filepath.ToSlash(k.relPath()); got != tc.path {
			t.Errorf("%q: path %q, want %q", tc.key, got, tc.path)
		}
		back, err := keyFromPath(tc.path)
		if err != nil || back.String() != tc.key {
			t.Errorf("%q: keyFromPath = %q, %v", tc.path, back.String(), err)
		}
	}
	// A valid name in the wrong shard is not an entry.
	if _, err := keyFromPath("blobs/sha256/cd/" + validHex); err == nil {
		t.Error("wrong shard accepted")
	}
}

// FuzzKey checks that any accepted key is canonical, maps to a clean
// relative path inside the cache's entry directories, and maps back.
func FuzzKey(f *testing.F) {
	d := digest.Digest("sha256:" + validHex)
	for _, s := range []string{
		d.String(), SpanKey(d, 0), SpanKey(d, 99), IndexKey(d), "index:", "../x", "", "/etc",
		"span:sha256:" + validHex + ":01", "sha512:" + strings.Repeat("0f", 64),
		"span:span:sha256:" + validHex + ":1:2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := parseKey(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("%q: error %v does not wrap ErrInvalidKey", s, err)
			}
			return
		}
		if k.String() != s {
			t.Fatalf("%q accepted but canonical form is %q", s, k.String())
		}
		p := k.relPath()
		if p != filepath.Clean(p) || filepath.IsAbs(p) || strings.HasPrefix(p, "..") {
			t.Fatalf("%q: unsafe path %q", s, p)
		}
		top := strings.SplitN(p, string(filepath.Separator), 2)[0]
		if top != blobsDir && top != spansDir && top != indexesDir {
			t.Fatalf("%q: path %q outside entry directories", s, p)
		}
		back, err := keyFromPath(p)
		if err != nil || back != k {
			t.Fatalf("%q: path %q maps back to %v, %v", s, p, back, err)
		}
	})
}
