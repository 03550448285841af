package cache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestStress mixes fills, gets, cancellations and failures of a few keys
// under a limit that forces constant eviction, then checks the books
// balance against the disk.
func TestStress(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{MaxBytes: 5000, NoSync: true, TouchInterval: -1})
	const nkeys = 20
	type item struct {
		key  string
		data []byte
	}
	items := make([]item, nkeys)
	for i := range items {
		b := content(500+i*37, byte(i))
		if i%2 == 0 {
			items[i] = item{dkey(b), b}
		} else {
			items[i] = item{SpanKey(digest.FromString("layer"), i), b}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				it := items[r.IntN(nkeys)]
				ctx := context.Background()
				var cancel context.CancelFunc = func() {}
				if r.IntN(10) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(r.IntN(200))*time.Microsecond)
				}
				fail := r.IntN(10) == 0
				var e *Entry
				var err error
				if r.IntN(3) == 0 {
					e, err = c.Get(ctx, it.key)
				} else {
					e, err = c.Fill(ctx, it.key, int64(len(it.data)), func(ctx context.Context, w io.Writer) error {
						if fail {
							return fmt.Errorf("injected")
						}
						_, err := w.Write(it.data)
						return err
					})
				}
				cancel()
				if err != nil {
					continue // misses, injected failures and timeouts are expected
				}
				got := make([]byte, e.Size())
				if _, err := e.ReadAt(got, 0); err != nil && err != io.EOF {
					errs <- err
				} else if !bytes.Equal(got, it.data) {
					errs <- fmt.Errorf("%s: wrong content", it.key)
				}
				e.Close()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for c.Stats().InFlight != 0 {
		time.Sleep(time.Millisecond)
	}
	s := c.Stats()
	if s.Pinned != 0 || s.Bytes > 5000 {
		t.Fatalf("stats %+v", s)
	}
	disk := append(files(t, dir, "blobs"), files(t, dir, "spans")...)
	if int64(len(disk)) != s.Entries {
		t.Fatalf("%d files on disk, %d entries", len(disk), s.Entries)
	}
	if n := len(files(t, dir, "tmp")); n != 0 {
		t.Fatalf("%d temp files left", n)
	}
	t.Logf("%+v", s)
}
