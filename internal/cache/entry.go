package cache

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// Entry is an open, pinned cache entry: while it is open the cache never
// deletes its file. It is safe for concurrent use. Close it when done.
type Entry struct {
	c    *Cache
	e    *entry
	f    *os.File
	once sync.Once
}

var _ io.ReaderAt = (*Entry)(nil)

// Key returns the entry's canonical key.
func (en *Entry) Key() string { return en.e.key }

// Size returns the entry's size in bytes.
func (en *Entry) Size() int64 { return en.e.size }

// ReadAt reads from the entry's content; see io.ReaderAt.
func (en *Entry) ReadAt(p []byte, off int64) (int, error) { return en.f.ReadAt(p, off) }

// File returns the entry's read-only file, for FUSE passthrough or
// sendfile. It stays valid until Close; the caller must not close it, and
// should read it with ReadAt (pread) or dup it rather than move its offset
// if others may read the same Entry.
func (en *Entry) File() *os.File { return en.f }

// Close closes the file and unpins the entry, which may then be evicted.
// Close is idempotent.
func (en *Entry) Close() error {
	var err error
	en.once.Do(func() {
		err = en.f.Close()
		en.c.unpin(en.e)
		if err != nil {
			err = fmt.Errorf("cache: %w", err)
		}
	})
	return err
}

// Has reports whether key is stored, without opening or pinning it, and
// without counting a hit or a miss: callers use it to choose a path (for
// instance, not to wait for another source of data the cache already
// holds), then Get what they read. An entry may be evicted between Has and
// Get.
func (c *Cache) Has(key string) bool {
	k, err := parseKey(key)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && c.entries[k.String()] != nil
}

// Busy reports whether key is stored or being filled, as Has does: a
// caller about to fetch data for keys it chooses skips those.
func (c *Cache) Busy(key string) bool {
	k, err := parseKey(key)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && (c.entries[k.String()] != nil || c.flights[k.String()] != nil)
}
