package indexsvc_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

type fixture struct {
	host   string
	client *remote.Client
	svc    *indexsvc.Service
	dir    string
	ref    string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.New(ctx, registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(reg)
	t.Cleanup(func() { hs.Close(); reg.Close() })
	f := &fixture{host: strings.TrimPrefix(hs.URL, "http://"), client: remote.New(remote.Options{}), dir: t.TempDir()}
	f.svc, err = indexsvc.New(f.dir, f.client, indexsvc.Options{SpanSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.svc.Close() })

	img, err := imagegen.Build(imagegen.AllFeatures())
	if err != nil {
		t.Fatal(err)
	}
	f.ref = f.host + "/proj/repo/features:v1"
	if err := f.client.Push(ctx, f.ref, img, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestIndexImageDeterministicAndShared(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	res, err := f.svc.IndexImage(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Layers) == 0 {
		t.Fatal("no layers indexed")
	}
	first := map[digest.Digest][]byte{}
	for _, l := range res.Layers {
		_, raw, err := f.svc.Get(l.Digest)
		if err != nil {
			t.Fatalf("layer %s: %v", l.Digest, err)
		}
		first[l.Digest] = raw
		if l.NotStreamable != "" {
			t.Errorf("layer %s (%s) not streamable: %s", l.Digest, l.Kind, l.NotStreamable)
		}
	}
	// Indexing again from scratch yields the same bytes.
	os.RemoveAll(filepath.Join(f.dir, "sha256"))
	os.MkdirAll(filepath.Join(f.dir, "sha256"), 0o755)
	if _, err := f.svc.IndexImage(ctx, f.ref); err != nil {
		t.Fatal(err)
	}
	for d, raw := range first {
		_, again, err := f.svc.Get(d)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, again) {
			t.Errorf("layer %s: second index differs from the first", d)
		}
	}
	// The same layers pushed under another repository share the stored indexes.
	img, _ := imagegen.Build(imagegen.AllFeatures())
	if err := f.client.Push(ctx, f.host+"/other/proj/copy:v2", img, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(filepath.Join(f.dir, "sha256"))
	if _, err := f.svc.IndexImage(ctx, f.host+"/other/proj/copy:v2"); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadDir(filepath.Join(f.dir, "sha256"))
	if len(before) != len(after) {
		t.Fatalf("indexing the same layers in another repository stored %d new files", len(after)-len(before))
	}
}

// TestOldIndexVersionRebuilt: an index a previous release stored (another
// format version) reads as missing and is built again, not served as an
// error to every node.
func TestOldIndexVersionRebuilt(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	res, err := f.svc.IndexImage(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	d := res.Layers[0].Digest
	_, raw, err := f.svc.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.dir, "sha256", d.Encoded()+".idx")
	old := bytes.Clone(raw)
	binary.LittleEndian.PutUint16(old[len(index.Magic):], index.Version-1)
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.svc.Get(d); !errors.Is(err, streamfs.ErrNoIndex) || !errors.Is(err, index.ErrVersion) {
		t.Fatalf("Get of an old-version index: %v, want ErrNoIndex and ErrVersion", err)
	}
	// A node whose index service runs another release looks elsewhere.
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(old) }))
	defer hs.Close()
	desc := ocispec.Descriptor{Digest: d}
	if _, err := (indexsvc.HTTPSource{BaseURL: hs.URL}).LayerIndex(ctx, "", desc); !errors.Is(err, streamfs.ErrNoIndex) {
		t.Fatalf("HTTPSource given an old-version index: %v, want ErrNoIndex", err)
	}
	if _, err := f.svc.IndexImage(ctx, f.ref); err != nil {
		t.Fatal(err)
	}
	if _, again, err := f.svc.Get(d); err != nil || !bytes.Equal(again, raw) {
		t.Fatalf("after indexing again: %v (same bytes: %v)", err, bytes.Equal(again, raw))
	}
}

func TestHTTPSourceAndHandler(t *testing.T) {
	f := setup(t)
	hs := httptest.NewServer(f.svc.Handler())
	defer hs.Close()

	resp, err := http.Post(hs.URL+"/index/v1/images", "application/json", strings.NewReader(`{"image":"`+f.ref+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST images: %s", resp.Status)
	}
	img, err := f.client.Resolve(context.Background(), f.ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := indexsvc.HTTPSource{BaseURL: hs.URL}
	// A service that will not give the caller the layers' windows: only
	// detached (gzip) indexes need them; the others are still used.
	deniedHS := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(indexsvc.HeaderLayerData, indexsvc.LayerDataDenied)
		f.svc.Handler().ServeHTTP(w, r)
	}))
	defer deniedHS.Close()
	denied := indexsvc.HTTPSource{BaseURL: deniedHS.URL}
	var detached, whole int
	for _, l := range img.Manifest.Layers {
		x, err := src.LayerIndex(context.Background(), "", l)
		if err != nil {
			t.Fatalf("layer %s: %v", l.Digest, err)
		}
		if x.BlobDigest != l.Digest {
			t.Fatalf("index of %s describes %s", l.Digest, x.BlobDigest)
		}
		y, err := denied.LayerIndex(context.Background(), "proj/repo", l)
		switch {
		case x.Detached:
			detached++
			if !errors.Is(err, streamfs.ErrNoIndex) {
				t.Errorf("layer %s (%s), windows denied: %v, want ErrNoIndex", l.Digest, l.MediaType, err)
			}
		default:
			whole++
			if err != nil || y.BlobDigest != l.Digest {
				t.Errorf("layer %s (%s), windows denied but none needed: %v", l.Digest, l.MediaType, err)
			}
		}
	}
	if detached == 0 || whole == 0 {
		t.Fatalf("%d detached and %d whole indexes; the image should have both", detached, whole)
	}
	// An index served for the wrong layer is refused.
	l0 := img.Manifest.Layers[0]
	wrong := ocispec.Descriptor{Digest: l0.Digest, Size: l0.Size + 1}
	if _, err := src.LayerIndex(context.Background(), "", wrong); err == nil {
		t.Fatal("index with a different blob size accepted")
	}
	// Missing layers are ErrNoIndex; bad input gets 400 naming the field.
	missing := ocispec.Descriptor{Digest: digest.FromString("nothing")}
	if _, err := src.LayerIndex(context.Background(), "", missing); !errors.Is(err, streamfs.ErrNoIndex) {
		t.Fatalf("missing layer: %v, want ErrNoIndex", err)
	}
	for body, want := range map[string]string{`{}`: "image:", `{"image":"UPPER/x"}`: "image", `{"img":"x"}`: "unknown field"} {
		resp, err := http.Post(hs.URL+"/index/v1/images", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(b.String(), want) {
			t.Errorf("POST %s: %s %s, want 400 with %q", body, resp.Status, b.String(), want)
		}
	}
}

func TestReferrerArtifact(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	d, err := f.svc.PushReferrer(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := f.client.Resolve(ctx, f.ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A node with only the registry finds the indexes through the referrer.
	src, err := indexsvc.LoadReferrers(ctx, f.client, img)
	if err != nil {
		t.Fatal(err)
	}
	unique := map[digest.Digest]bool{}
	for _, l := range img.Manifest.Layers {
		unique[l.Digest] = true
	}
	if src.Len() != len(unique) {
		t.Fatalf("artifact %s carries %d indexes, want %d", d, src.Len(), len(unique))
	}
	for _, l := range img.Manifest.Layers {
		x, err := src.LayerIndex(ctx, "", l)
		if err != nil {
			t.Fatal(err)
		}
		_, want, _ := f.svc.Get(l.Digest)
		got, _ := x.MarshalBinary()
		if !bytes.Equal(got, want) {
			t.Fatalf("layer %s: referrer index differs from the service's", l.Digest)
		}
	}
	// The tagged image is unchanged.
	again, _ := f.client.Resolve(ctx, f.ref, nil)
	if again.Digest != img.Digest {
		t.Fatal("pushing the referrer changed the image")
	}
}

// TestDetachedIndexGzipped: a detached index goes gzip-compressed to a
// client that accepts it (HTTPSource does, through Go's transport) and as
// is to one that does not; both decode to the same index.
func TestDetachedIndexGzipped(t *testing.T) {
	f := setup(t)
	hs := httptest.NewServer(f.svc.Handler())
	defer hs.Close()
	if _, err := f.svc.IndexImage(context.Background(), f.ref); err != nil {
		t.Fatal(err)
	}
	img, err := f.client.Resolve(context.Background(), f.ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func(d digest.Digest, accept string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, hs.URL+"/index/v1/layers/"+d.String()+"?windows=detached", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept-Encoding", accept) // set: the transport leaves the body as sent
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s %v", d, resp.Status, err)
		}
		return resp, b
	}
	src := indexsvc.HTTPSource{BaseURL: hs.URL}
	for _, l := range img.Manifest.Layers {
		plain, raw := get(l.Digest, "identity")
		if enc := plain.Header.Get("Content-Encoding"); enc != "" {
			t.Fatalf("layer %s: Content-Encoding %q for a client that accepts none", l.Digest, enc)
		}
		zipped, gz := get(l.Digest, "br;q=1.0, gzip;q=0.8")
		if zipped.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(gz))
			if err != nil {
				t.Fatal(err)
			}
			unzipped, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(unzipped, raw) || len(gz) >= len(raw) {
				t.Errorf("layer %s: gzipped index of %d bytes decodes to %d bytes that differ from the %d-byte index", l.Digest, len(gz), len(unzipped), len(raw))
			}
		} else if !bytes.Equal(gz, raw) {
			t.Errorf("layer %s: uncompressed answer differs", l.Digest)
		}
		for _, no := range []string{"gzip;q=0", "gzip; q=0.0"} {
			if _, refused := get(l.Digest, no); !bytes.Equal(refused, raw) {
				t.Errorf("layer %s: %s was not honoured", l.Digest, no)
			}
		}
		x, err := src.LayerIndex(context.Background(), "", l)
		if err != nil || x.BlobDigest != l.Digest {
			t.Fatalf("layer %s through HTTPSource: %v", l.Digest, err)
		}
	}
	// The biggest layer's table compresses.
	big := img.Manifest.Layers[0]
	for _, l := range img.Manifest.Layers {
		if l.Size > big.Size {
			big = l
		}
	}
	if resp, _ := get(big.Digest, "gzip"); resp.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("the biggest layer's detached index was not gzipped")
	}
}

// TestLayerDataOnlyFromItsRepository: windows and whole indexes (layer
// data) are served with ?repository=R only if R holds the layer, so the
// server in front can let a viewer of R's project read them and no one
// else; HTTPSource names the repository it reads from.
func TestLayerDataOnlyFromItsRepository(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	// A layer of several spans, so that spans after the first have windows.
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "big", Data: data}}}}})
	if err != nil {
		t.Fatal(err)
	}
	ref := f.host + "/proj/big:v1"
	if err := f.client.Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.IndexImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	res, err := f.client.Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := res.Manifest.Layers[0].Digest
	x, _, err := f.svc.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Spans) < 2 {
		t.Fatalf("the layer has %d spans; the test needs a window", len(x.Spans))
	}
	hs := httptest.NewServer(f.svc.Handler())
	defer hs.Close()

	holds, lacks := f.host+"/proj/big", f.host+"/proj/repo/features"
	for _, c := range []struct {
		path string
		want int
	}{
		{"/windows/1?repository=" + holds, http.StatusOK},
		{"?repository=" + holds, http.StatusOK},
		{"/windows/1?repository=" + lacks, http.StatusNotFound},
		{"?repository=" + lacks, http.StatusNotFound},
		{"/windows/1?repository=" + f.host + "/nope/none", http.StatusNotFound},
		{"/windows/1?repository=NOT%20A%20REPO", http.StatusNotFound},
		// Without a repository the service serves it: the server in front
		// lets only a caller with every project's images ask that way.
		{"/windows/1", http.StatusOK},
	} {
		resp, err := http.Get(hs.URL + "/index/v1/layers/" + d.String() + c.path)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET ...%s: %s %s, want %d", c.path, resp.Status, msg, c.want)
		}
		if c.want == http.StatusNotFound && !strings.Contains(string(msg), "name the repository") {
			t.Errorf("GET ...%s: %s does not say what to do", c.path, msg)
		}
	}

	var asked []string
	seen := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = append(asked, r.URL.Query().Get("repository"))
		f.svc.Handler().ServeHTTP(w, r)
	}))
	defer seen.Close()
	src := indexsvc.HTTPSource{BaseURL: seen.URL}
	w, err := src.Window(ctx, holds, d, 1)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := f.svc.Window(ctx, "", d, 1); !bytes.Equal(w, want) {
		t.Error("HTTPSource.Window returned another window")
	}
	if len(asked) != 1 || asked[0] != holds {
		t.Errorf("HTTPSource.Window asked with repository %q, want %q", asked, holds)
	}
	if _, err := src.Window(ctx, lacks, d, 1); err == nil {
		t.Error("a window from a repository without the layer was served")
	}
}
