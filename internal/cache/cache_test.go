package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func open(t *testing.T, dir string, opts Options) *Cache {
	t.Helper()
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func content(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func dkey(b []byte) string { return digest.FromBytes(b).String() }

func writeFill(b []byte) func(context.Context, io.Writer) error {
	return func(_ context.Context, w io.Writer) error {
		_, err := w.Write(b)
		return err
	}
}

// put fills key with b and closes the entry.
func put(t *testing.T, c *Cache, key string, b []byte) {
	t.Helper()
	e, err := c.Fill(t.Context(), key, int64(len(b)), writeFill(b))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}

func readAll(t *testing.T, e *Entry) []byte {
	t.Helper()
	b := make([]byte, e.Size())
	if _, err := e.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

func has(c *Cache, key string) bool {
	e, err := c.Get(context.Background(), key)
	if err != nil {
		return false
	}
	e.Close()
	return true
}

// files lists the regular files under dir/sub.
func files(t *testing.T, dir, sub string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(dir, sub), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestFillGet(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	data := content(10000, 1)
	key := dkey(data)
	if _, err := c.Get(t.Context(), key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before Fill: %v, want ErrNotFound", err)
	}
	e, err := c.Fill(t.Context(), key, int64(len(data)), writeFill(data))
	if err != nil {
		t.Fatal(err)
	}
	if e.Key() != key || e.Size() != int64(len(data)) || !bytes.Equal(readAll(t, e), data) {
		t.Fatal("filled entry differs")
	}
	// File is a real read-only descriptor of the stored data.
	fb, err := io.ReadAll(io.NewSectionReader(e.File(), 0, e.Size()))
	if err != nil || !bytes.Equal(fb, data) {
		t.Fatalf("File: %v", err)
	}
	if _, err := e.File().Write([]byte("x")); err == nil {
		t.Fatal("File is writable")
	}
	e.Close()
	e.Close() // idempotent

	g, err := c.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, g), data) {
		t.Fatal("Get differs")
	}
	g.Close()

	// A span key, with unknown size.
	layer := digest.FromString("layer")
	sk := SpanKey(layer, 3)
	e, err = c.Fill(t.Context(), sk, -1, writeFill([]byte("span data")))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	want := filepath.Join(dir, "spans", "sha256", layer.Encoded()[:2], layer.Encoded()+".3")
	if _, err := os.Stat(want); err != nil {
		t.Fatalf("span file not at %s: %v", want, err)
	}
	s := c.Stats()
	if s.Entries != 2 || s.Bytes != int64(len(data))+9 || s.Fills != 2 || s.Hits != 1 || s.Misses != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestConcurrentFillRunsOnce(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	data := content(1<<20, 3)
	key := dkey(data)
	var calls atomic.Int32
	release := make(chan struct{})
	fill := func(_ context.Context, w io.Writer) error {
		calls.Add(1)
		<-release
		for i := 0; i < len(data); i += 4096 {
			if _, err := w.Write(data[i:min(i+4096, len(data))]); err != nil {
				return err
			}
		}
		return nil
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			e, err := c.Fill(t.Context(), key, int64(len(data)), fill)
			if err != nil {
				errs <- err
				return
			}
			defer e.Close()
			b := make([]byte, len(data))
			if _, err := e.ReadAt(b, 0); err != nil || !bytes.Equal(b, data) {
				errs <- fmt.Errorf("read: %v", err)
			}
		})
	}
	// Let every caller join the flight before it ends.
	for c.Stats().Misses < n {
		time.Sleep(time.Millisecond)
	}
	if s := c.Stats(); s.InFlight != 1 {
		t.Fatalf("InFlight = %d, want 1", s.InFlight)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Fatalf("fill ran %d times, want 1", calls.Load())
	}
	if s := c.Stats(); s.Fills != 1 || s.Pinned != 0 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFillErrorSharedAndNothingStored(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	data := content(5000, 9)
	key := dkey(data)
	release := make(chan struct{})
	boom := errors.New("registry on fire")
	var calls atomic.Int32
	fill := func(_ context.Context, w io.Writer) error {
		calls.Add(1)
		<-release
		w.Write(data[:100])
		return boom
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { _, errs[i] = c.Fill(t.Context(), key, -1, fill) })
	}
	for c.Stats().Misses < 4 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	for _, err := range errs {
		if !errors.Is(err, boom) {
			t.Fatalf("got %v, want %v", err, boom)
		}
	}
	if calls.Load() != 1 || has(c, key) || len(files(t, dir, "blobs"))+len(files(t, dir, "tmp")) != 0 {
		t.Fatal("failed fill left something behind")
	}
	// The next Fill tries again.
	put(t, c, key, data)
	if !has(c, key) {
		t.Fatal("retry not stored")
	}
}

func TestDigestMismatch(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	key := dkey([]byte("the real content"))
	_, err := c.Fill(t.Context(), key, -1, writeFill([]byte("something else")))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("got %v, want ErrDigestMismatch", err)
	}
	if has(c, key) || len(files(t, dir, "blobs"))+len(files(t, dir, "tmp")) != 0 {
		t.Fatal("mismatching content stored")
	}
	if s := c.Stats(); s.FillErrors != 1 || s.Entries != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSizeMismatch(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	data := content(1000, 4)
	for _, tc := range []struct {
		name string
		key  string
		size int64
	}{
		{"short digest", dkey(data), 2000},
		{"long digest", dkey(data), 500},
		{"short span", SpanKey(digest.FromString("l"), 0), 1001},
		{"long span", SpanKey(digest.FromString("l"), 0), 999},
	} {
		_, err := c.Fill(t.Context(), tc.key, tc.size, writeFill(data))
		if !errors.Is(err, ErrSizeMismatch) {
			t.Fatalf("%s: got %v, want ErrSizeMismatch", tc.name, err)
		}
		if has(c, tc.key) {
			t.Fatalf("%s: stored", tc.name)
		}
	}
	if n := len(files(t, dir, ".")); n != 3 { // VERSION, lock, dirty
		t.Fatalf("%d files left, want only VERSION, lock and dirty", n)
	}
}

func TestFillPanic(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	_, err := c.Fill(t.Context(), SpanKey(digest.FromString("l"), 1), -1, func(context.Context, io.Writer) error { panic("bug") })
	if err == nil || !strings.Contains(err.Error(), "panicked: bug") {
		t.Fatalf("got %v", err)
	}
}

func TestEvictionOrder(t *testing.T) {
	dir := t.TempDir()
	// Room for three 100-byte entries.
	c := open(t, dir, Options{MaxBytes: 300})
	var keys []string
	for i := range 3 {
		b := content(100, byte(i))
		keys = append(keys, dkey(b))
		put(t, c, keys[i], b)
	}
	// Use 0 so that 1 is the least recently used.
	if !has(c, keys[0]) {
		t.Fatal("entry 0 missing")
	}
	b3 := content(100, 3)
	keys = append(keys, dkey(b3))
	put(t, c, keys[3], b3)
	if has(c, keys[1]) {
		t.Fatal("entry 1 (LRU) not evicted")
	}
	for _, i := range []int{0, 2, 3} {
		if !has(c, keys[i]) {
			t.Fatalf("entry %d evicted", i)
		}
	}
	// Use in the order 3, 0, 2; a 150-byte entry then evicts 3 and 0.
	for _, i := range []int{3, 0, 2} {
		if !has(c, keys[i]) {
			t.Fatalf("entry %d missing", i)
		}
	}
	b4 := content(150, 4)
	put(t, c, dkey(b4), b4)
	for i, want := range []bool{false, false, true, false} {
		if has(c, keys[i]) != want {
			t.Fatalf("entry %d present = %v, want %v", i, !want, want)
		}
	}
	if !has(c, dkey(b4)) {
		t.Fatal("new entry evicted")
	}
	if s := c.Stats(); s.Evictions != 3 || s.EvictedBytes != 300 || s.Bytes != 250 || s.Entries != 2 {
		t.Fatalf("stats %+v", s)
	}
	if n := len(files(t, dir, "blobs")); n != 2 {
		t.Fatalf("%d files on disk, want 2", n)
	}
}

func TestDelete(t *testing.T) {
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	layer := digest.FromString("layer")
	for i := range 3 {
		e, err := c.Fill(ctx, SpanKey(layer, i), 4, func(_ context.Context, w io.Writer) error {
			_, err := w.Write([]byte("span"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if i != 1 {
			e.Close()
		} else {
			defer e.Close() // open: Delete must leave it
		}
	}
	freed := c.Delete(SpanKey(layer, 0), SpanKey(layer, 1), SpanKey(layer, 2), SpanKey(layer, 3), "not a key")
	if freed != 8 {
		t.Errorf("freed %d bytes, want 8 (two closed spans of 4)", freed)
	}
	for i, want := range []bool{false, true, false} {
		e, err := c.Get(ctx, SpanKey(layer, i))
		if got := err == nil; got != want {
			t.Errorf("span %d present = %v, want %v (err %v)", i, got, want, err)
		}
		if e != nil {
			e.Close()
		}
	}
}
