package indexsvc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestEStargzReadThroughTOC: an eStargz layer is indexed from its own TOC
// (checked against the manifest's TOC digest annotation) and nothing is
// stored for it.
func TestEStargzReadThroughTOC(t *testing.T) {
	f := setup(t)
	ctx := context.Background()

	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for i, body := range []string{"hello\n", string(bytes.Repeat([]byte("x"), 1<<20))} {
		name := []string{"hello.txt", "big.bin"}[i]
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		io.WriteString(tw, body)
	}
	tw.Close()
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb.Bytes()), 0, int64(tb.Len())))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(blob)
	blob.Close()
	if err != nil {
		t.Fatal(err)
	}
	layer := static.NewLayer(raw, types.OCILayer)
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       layer,
		Annotations: map[string]string{estargz.TOCJSONDigestAnnotation: blob.TOCDigest().String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	cfg, _ := img.ConfigFile()
	cfg.RootFS.DiffIDs = []v1.Hash{{Algorithm: "sha256", Hex: blob.DiffID().Encoded()}}
	img, _ = mutate.ConfigFile(img, cfg)
	ref := f.host + "/proj/repo/stargz:v1"
	if err := f.client.Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	res, err := f.svc.IndexImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	l := res.Layers[0]
	if !l.FromTOC || l.Kind != "estargz" || l.IndexBytes != 0 || l.NotStreamable != "" {
		t.Fatalf("layer result %+v, want an eStargz layer read from its TOC with nothing stored", l)
	}
	if _, _, err := f.svc.Get(l.Digest); err == nil {
		t.Fatal("an index was stored for an eStargz layer")
	}
	// Nodes asking the service get the TOC-based index.
	r, _ := f.client.Resolve(ctx, ref, nil)
	x, err := f.svc.LayerIndex(ctx, r.Repository.String(), r.Manifest.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Files) < 2 {
		t.Fatalf("TOC index has %d files", len(x.Files))
	}
}
