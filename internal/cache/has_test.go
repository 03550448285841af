package cache

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestHas reports presence without opening, pinning or counting: an
// entry Has reports can still be deleted, and hits and misses stay as
// they were.
func TestHas(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	b := content(100, 1)
	span := SpanKey(digest.FromBytes([]byte("layer")), 3)
	if c.Has(dkey(b)) || c.Has(span) || c.Has("not a key") {
		t.Fatal("Has reports entries of an empty cache")
	}
	put(t, c, dkey(b), b)
	put(t, c, span, b)
	before := c.Stats()
	if !c.Has(dkey(b)) || !c.Has(span) {
		t.Fatal("Has misses stored entries")
	}
	if st := c.Stats(); st.Hits != before.Hits || st.Misses != before.Misses {
		t.Errorf("Has counted: %+v, before %+v", st, before)
	}
	if freed := c.Delete(span); freed != 100 || c.Has(span) {
		t.Errorf("Delete after Has freed %d; Has after it: %v", freed, c.Has(span))
	}
	c.Close()
	if c.Has(dkey(b)) {
		t.Error("Has reports entries of a closed cache")
	}
}
