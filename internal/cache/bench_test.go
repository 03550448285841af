package cache

import (
	"context"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// BenchmarkGetHit measures the hit path: lookup, pin, open, close.
func BenchmarkGetHit(b *testing.B) {
	c, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	data := content(4096, 1)
	key := dkey(data)
	e, err := c.Fill(context.Background(), key, int64(len(data)), writeFill(data))
	if err != nil {
		b.Fatal(err)
	}
	e.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e, err := c.Get(ctx, key)
			if err != nil {
				b.Fatal(err)
			}
			e.Close()
		}
	})
}

// BenchmarkFill measures storing a 4 MiB span, with and without fsync.
func BenchmarkFill(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		b.Run(fmt.Sprintf("NoSync=%v", noSync), func(b *testing.B) {
			c, err := Open(b.TempDir(), Options{NoSync: noSync})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			data := content(4<<20, 1)
			b.SetBytes(int64(len(data)))
			for i := 0; b.Loop(); i++ {
				e, err := c.Fill(context.Background(), SpanKey(digest.FromBytes(data), i), int64(len(data)), writeFill(data))
				if err != nil {
					b.Fatal(err)
				}
				e.Close()
			}
		})
	}
}
