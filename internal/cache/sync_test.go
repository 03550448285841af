package cache

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// crashCopy copies the directory of an open cache, mtimes included, as a
// machine crash would leave it (nothing was lost here, but the copy has
// the dirty marker and no clean Close).
func crashCopy(t *testing.T, dir string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "crashed")
	if out, err := exec.Command("cp", "-a", dir, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	return dst
}

// After an unclean end, span entries stored since the last Sync are
// dropped (the cache cannot check them) and digest entries kept but
// re-hashed; a clean Close keeps everything.
func TestUncleanEndDropsUnsyncedSpans(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	layer := digest.FromString("layer")
	early, late := SpanKey(layer, 0), SpanKey(layer, 1)
	blob := []byte("a whole file")
	put(t, c, early, []byte("synced span"))
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	put(t, c, late, []byte("unsynced span"))
	put(t, c, dkey(blob), blob)
	torn := []byte("a file the crash tore")
	put(t, c, dkey(torn), torn)

	cdir := crashCopy(t, dir)
	k, _ := parseKey(dkey(torn))
	if err := os.WriteFile(filepath.Join(cdir, k.relPath()), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	crashed := open(t, cdir, Options{})
	if has(crashed, dkey(torn)) {
		t.Error("a digest entry torn by the crash was served")
	}
	if !has(crashed, early) {
		t.Error("a span stored before the last sync was dropped")
	}
	if has(crashed, late) {
		t.Error("a span stored after the last sync survived an unclean end")
	}
	if !has(crashed, dkey(blob)) {
		t.Error("a digest entry with good content was dropped")
	}
	if st := crashed.Stats(); st.Unsynced != 1 {
		t.Errorf("Unsynced = %d, want 1", st.Unsynced)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := open(t, dir, Options{})
	for _, k := range []string{early, late, dkey(blob)} {
		if !has(reopened, k) {
			t.Errorf("%s lost after a clean Close", k)
		}
	}
}
