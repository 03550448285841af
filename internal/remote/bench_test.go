package remote_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// BenchmarkReadAt measures ranged reads from the in-process registry over
// loopback: the floor under every lazy-pull page fault.
func BenchmarkReadAt(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			r := startRegistry(b, registry.Options{}, nil)
			c := remote.New(remote.Options{})
			spec := imagegen.Spec{Layers: []imagegen.Layer{{Compression: imagegen.Uncompressed, Entries: []imagegen.Entry{{Type: imagegen.File, Name: "f", Size: 64 << 20, Seed: 1, Fill: imagegen.Random}}}}}
			img, err := imagegen.Build(spec)
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Push(context.Background(), r.host+"/b/img:v1", img, nil); err != nil {
				b.Fatal(err)
			}
			layers, _ := img.Layers()
			d, _ := layers[0].Digest()
			n, _ := layers[0].Size()
			blob, err := c.Blob(context.Background(), r.host+"/b/img", digest.Digest(d.String()), n)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				p := make([]byte, size)
				rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
				for pb.Next() {
					if _, err := blob.ReadAt(p, rng.Int64N(n-int64(size))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func byteSize(n int) string {
	if n >= 1<<20 {
		return strconv.Itoa(n>>20) + "MiB"
	}
	return strconv.Itoa(n>>10) + "KiB"
}
