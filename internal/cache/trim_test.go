package cache

import (
	"bytes"
	"context"
	"io"
	"testing"
)

// TestTrim evicts least recently used entries down to the target, never
// one a reader has open, whose data stays readable.
func TestTrim(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	a, b, d := content(100, 1), content(200, 2), content(300, 3)
	put(t, c, dkey(a), a)
	put(t, c, dkey(b), b)
	put(t, c, dkey(d), d)
	has(c, dkey(a)) // a is now the most recently used; b the least
	open, err := c.Get(context.Background(), dkey(d))
	if err != nil {
		t.Fatal(err)
	}
	// Down to 400 bytes: b goes (LRU); d is pinned, a fits.
	if n, freed := c.Trim(400); n != 1 || freed != 200 {
		t.Fatalf("Trim(400) evicted %d entries, %d bytes; want b's 1, 200", n, freed)
	}
	if has(c, dkey(b)) || !has(c, dkey(a)) {
		t.Fatal("Trim(400) evicted the wrong entry")
	}
	// Down to 0: a goes, the open d stays and reads whole.
	if n, freed := c.Trim(0); n != 1 || freed != 100 {
		t.Fatalf("Trim(0) evicted %d entries, %d bytes; want a's 1, 100", n, freed)
	}
	got, err := io.ReadAll(io.NewSectionReader(open, 0, 300))
	if err != nil || !bytes.Equal(got, d) {
		t.Fatalf("reading the pinned entry after Trim: %v", err)
	}
	open.Close()
	if st := c.Stats(); st.Entries != 1 || st.Bytes != 300 {
		t.Fatalf("stats after Trim: %+v", st)
	}
	if n, _ := c.Trim(0); n != 1 || c.Stats().Bytes != 0 {
		t.Fatal("Trim(0) after the reader closed kept the entry")
	}
}
