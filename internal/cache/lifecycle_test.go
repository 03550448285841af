package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestPinnedSurvivesEviction(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{MaxBytes: 200})
	a, b, x := content(100, 1), content(100, 2), content(100, 3)
	put(t, c, dkey(a), a)
	put(t, c, dkey(b), b)
	pa, err := c.Get(t.Context(), dkey(a))
	if err != nil {
		t.Fatal(err)
	}
	pb, err := c.Get(t.Context(), dkey(b))
	if err != nil {
		t.Fatal(err)
	}
	// Everything is pinned: the cache goes over its limit rather than
	// delete a file under a reader.
	ex, err := c.Fill(t.Context(), dkey(x), 100, writeFill(x))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.Bytes != 300 || s.PinnedBytes != 300 || s.Evictions != 0 {
		t.Fatalf("stats %+v", s)
	}
	k, _ := parseKey(dkey(a))
	if _, err := os.Stat(filepath.Join(dir, k.relPath())); err != nil {
		t.Fatal("pinned file deleted")
	}
	if !bytes.Equal(readAll(t, pa), a) {
		t.Fatal("pinned entry changed")
	}
	// Unpinning a, the least recently used, lets eviction catch up.
	pa.Close()
	if s := c.Stats(); s.Bytes != 200 || s.Evictions != 1 {
		t.Fatalf("after unpin: stats %+v", s)
	}
	if _, err := os.Stat(filepath.Join(dir, k.relPath())); !os.IsNotExist(err) {
		t.Fatal("a not deleted after unpin")
	}
	pb.Close()
	ex.Close()
	if !has(c, dkey(b)) || !has(c, dkey(x)) || has(c, dkey(a)) {
		t.Fatal("wrong entries left")
	}
}

func TestRestartKeepsEntriesAndOrder(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 400, TouchInterval: -1}
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 4 {
		b := content(100, byte(i))
		keys = append(keys, dkey(b))
		put(t, c, keys[i], b)
	}
	sk := SpanKey(digest.FromString("layer"), 7)
	// Recency now, oldest first: 1, 3, 0, 2.
	for _, i := range []int{1, 3, 0, 2} {
		if !has(c, keys[i]) {
			t.Fatalf("entry %d missing", i)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(t.Context(), keys[0]); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}

	c = open(t, dir, opts)
	if s := c.Stats(); s.Entries != 4 || s.Bytes != 400 {
		t.Fatalf("after restart: stats %+v", s)
	}
	e, err := c.Get(t.Context(), keys[3])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, e), content(100, 3)) {
		t.Fatal("content changed across restart")
	}
	e.Close()
	// Order now, oldest first: 1, 0, 2, 3. A 150-byte span evicts 1 and 0.
	e, err = c.Fill(t.Context(), sk, 150, writeFill(content(150, 9)))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	for i, want := range []bool{false, false, true, true} {
		if has(c, keys[i]) != want {
			t.Fatalf("entry %d present = %v, want %v", i, !want, want)
		}
	}
	if !has(c, sk) {
		t.Fatal("span missing")
	}
}

func TestOpenEvictsOverLimit(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	for i := range 3 {
		b := content(100, byte(i))
		put(t, c, dkey(b), b)
	}
	c.Close()
	c = open(t, dir, Options{MaxBytes: 150})
	if s := c.Stats(); s.Entries != 1 || s.Evictions != 2 {
		t.Fatalf("stats %+v", s)
	}
	if !has(c, dkey(content(100, 2))) {
		t.Fatal("most recent entry evicted")
	}
}

func TestCrashLeftoversRemoved(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	data := content(1000, 5)
	key := dkey(data)
	started := make(chan struct{})
	// A fill that is half written when the "crash" happens: we copy the
	// directory state at that moment, as a crash would leave it.
	go c.Fill(context.Background(), key, int64(len(data)), func(ctx context.Context, w io.Writer) error {
		w.Write(data[:500])
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	<-started
	tmps := files(t, dir, "tmp")
	if len(tmps) != 1 {
		t.Fatalf("want one temp file, got %v", tmps)
	}
	partial, err := os.ReadFile(tmps[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Recreate the crash state, plus junk of other kinds.
	if err := os.WriteFile(tmps[0], partial, 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "blobs", "sha256", "zz", "not-a-digest")
	os.MkdirAll(filepath.Dir(junk), 0o700)
	os.WriteFile(junk, []byte("junk"), 0o600)

	c = open(t, dir, Options{})
	if _, err := c.Get(t.Context(), key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("partial fill served: %v", err)
	}
	if len(files(t, dir, "tmp")) != 0 {
		t.Fatal("temp file not removed")
	}
	if _, err := os.Stat(junk); !os.IsNotExist(err) {
		t.Fatal("junk not removed")
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	_, err := Open(dir, Options{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	c.Close()
	c2 := open(t, dir, Options{})
	c2.Close()
}

// TestSecondProcessFails opens the cache in a child process (this test
// binary, re-executed) while this process holds it.
func TestSecondProcessFails(t *testing.T) {
	if dir := os.Getenv("RIFFLE_CACHE_CHILD_DIR"); dir != "" {
		_, err := Open(dir, Options{})
		if err == nil {
			os.Exit(0)
		}
		os.Stderr.WriteString(err.Error())
		if errors.Is(err, ErrLocked) {
			os.Exit(3)
		}
		os.Exit(4)
	}
	dir := t.TempDir()
	c := open(t, dir, Options{})
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondProcessFails$")
	cmd.Env = append(os.Environ(), "RIFFLE_CACHE_CHILD_DIR="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("child: %v, stderr %q; want exit 3 (ErrLocked)", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "pid") {
		t.Errorf("error does not name the owner: %q", stderr.String())
	}
	c.Close()
	// Once released, another process can take it.
	cmd = exec.Command(os.Args[0], "-test.run=^TestSecondProcessFails$")
	cmd.Env = append(os.Environ(), "RIFFLE_CACHE_CHILD_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child after Close: %v %s", err, out)
	}
}

func TestRefusesForeignDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o600)
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "not a riffle cache") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Fatal("foreign file touched")
	}
	if _, err := os.Stat(filepath.Join(dir, "lock")); !os.IsNotExist(err) {
		t.Fatal("lock file created in a foreign directory")
	}
	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, "VERSION"), []byte("riffle-cache 99\n"), 0o600)
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "format") {
		t.Fatalf("got %v", err)
	}
	if _, err := Open(t.TempDir(), Options{MaxBytes: -1}); err == nil {
		t.Fatal("negative MaxBytes accepted")
	}
}

func TestWaiterCtxCancel(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	data := content(100, 1)
	key := dkey(data)
	release := make(chan struct{})
	filled := make(chan error, 1)
	go func() {
		e, err := c.Fill(context.Background(), key, -1, func(_ context.Context, w io.Writer) error {
			<-release
			_, err := w.Write(data)
			return err
		})
		if err == nil {
			e.Close()
		}
		filled <- err
	}()
	for c.Stats().InFlight != 1 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := c.Fill(ctx, key, -1, func(context.Context, io.Writer) error {
			t.Error("second fill ran")
			return nil
		})
		done <- err
	}()
	for c.Stats().Misses < 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("waiter got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not return on cancel")
	}
	// The first caller is unaffected.
	close(release)
	if err := <-filled; err != nil {
		t.Fatal(err)
	}
	if !has(c, key) {
		t.Fatal("not stored")
	}
	if s := c.Stats(); s.Pinned != 0 {
		t.Fatalf("pin leaked: %+v", s)
	}
}

func TestAllWaitersGoneCancelsFill(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	key := SpanKey(digest.FromString("l"), 0)
	fillErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		for c.Stats().InFlight != 1 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := c.Fill(ctx, key, -1, func(ctx context.Context, w io.Writer) error {
		<-ctx.Done()
		fillErr <- ctx.Err()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	select {
	case <-fillErr:
	case <-time.After(5 * time.Second):
		t.Fatal("fill not cancelled after its only caller left")
	}
	for c.Stats().InFlight != 0 {
		time.Sleep(time.Millisecond)
	}
	if s := c.Stats(); s.Entries != 0 || s.FillErrors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCloseCancelsFills(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Fill(context.Background(), SpanKey(digest.FromString("l"), 1), -1, func(ctx context.Context, w io.Writer) error {
			<-ctx.Done()
			return ctx.Err()
		})
		errc <- err
	}()
	for c.Stats().InFlight != 1 {
		time.Sleep(time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err == nil {
		t.Fatal("fill survived Close")
	}
	if len(files(t, dir, "tmp")) != 0 || len(files(t, dir, "spans")) != 0 {
		t.Fatal("Close left fill data")
	}
}

func TestVerifyOnLoad(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	good, bad := content(1000, 1), content(1000, 2)
	put(t, c, dkey(good), good)
	put(t, c, dkey(bad), bad)
	c.Close()
	// Flip a byte of one entry on disk, as disk corruption would.
	k, _ := parseKey(dkey(bad))
	p := filepath.Join(dir, k.relPath())
	b, _ := os.ReadFile(p)
	b[500] ^= 1
	os.WriteFile(p, b, 0o600)

	c = open(t, dir, Options{VerifyOnLoad: true})
	if !has(c, dkey(good)) {
		t.Fatal("good entry dropped")
	}
	if _, err := c.Get(t.Context(), dkey(bad)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("corrupt entry: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatal("corrupt file not deleted")
	}
	if s := c.Stats(); s.Corrupt != 1 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Fill repairs it.
	put(t, c, dkey(bad), bad)
	if !has(c, dkey(bad)) {
		t.Fatal("not repaired")
	}
}

func TestFileDeletedBehindOurBack(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	b := content(100, 1)
	put(t, c, dkey(b), b)
	k, _ := parseKey(dkey(b))
	os.Remove(filepath.Join(dir, k.relPath()))
	if _, err := c.Get(t.Context(), dkey(b)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("stats %+v", s)
	}
	put(t, c, dkey(b), b) // and a Fill stores it again
	if !has(c, dkey(b)) {
		t.Fatal("not refilled")
	}
}

// TestFillAfterAbandonedFill checks that a caller arriving after every
// caller of a running fill gave up starts its own fill instead of getting
// the abandoned one's cancellation.
func TestFillAfterAbandonedFill(t *testing.T) {
	c := open(t, t.TempDir(), Options{})
	data := content(100, 7)
	key := dkey(data)
	ctx, cancel := context.WithCancel(t.Context())
	oldFill := make(chan struct{})
	go func() {
		for c.Stats().InFlight != 1 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := c.Fill(ctx, key, -1, func(ctx context.Context, w io.Writer) error {
		<-ctx.Done()
		<-oldFill // still running when the next caller arrives
		w.Write(data)
		return nil // and even "succeeds": its result must be discarded
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	e, err := c.Fill(t.Context(), key, int64(len(data)), writeFill(data))
	if err != nil {
		t.Fatalf("new fill: %v", err)
	}
	e.Close()
	close(oldFill)
	for c.Stats().InFlight != 0 {
		time.Sleep(time.Millisecond)
	}
	if s := c.Stats(); s.Fills != 1 || s.FillErrors != 1 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
	if !has(c, key) {
		t.Fatal("entry lost")
	}
}
