package indexsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// ArtifactType marks the OCI artifact that carries an image's indexes.
const ArtifactType = "application/vnd.riffle.index.v1"

// AnnotationLayer, on each blob of the artifact, names the layer the blob indexes.
const AnnotationLayer = "dev.riffle.index.layer"

// PushReferrer indexes ref (if needed) and pushes its indexes to ref's
// repository as an OCI artifact whose subject is ref's image manifest. It
// returns the artifact's digest.
func (s *Service) PushReferrer(ctx context.Context, ref string) (digest.Digest, error) {
	img, err := s.client.Resolve(ctx, ref, nil)
	if err != nil {
		return "", err
	}
	art := &artifact{subject: v1.Descriptor{
		MediaType: types.MediaType(img.MediaType),
		Digest:    v1.Hash{Algorithm: img.Digest.Algorithm().String(), Hex: img.Digest.Encoded()},
		Size:      int64(len(img.RawManifest)),
	}, layers: map[v1.Hash]v1.Layer{}}
	for _, desc := range img.Manifest.Layers {
		if slices.ContainsFunc(art.descs, func(d v1.Descriptor) bool { return d.Annotations[AnnotationLayer] == desc.Digest.String() }) {
			continue // a layer repeated in the image needs one index
		}
		_, raw, err := s.layer(ctx, img, desc)
		if err != nil {
			return "", err
		}
		if raw == nil {
			continue // eStargz or zstd:chunked: the layer's TOC is its index
		}
		l := static.NewLayer(raw, MediaTypeIndex)
		h, _ := l.Digest()
		art.layers[h] = l
		art.descs = append(art.descs, v1.Descriptor{
			MediaType: MediaTypeIndex, Digest: h, Size: int64(len(raw)),
			Annotations: map[string]string{AnnotationLayer: desc.Digest.String()},
		})
	}
	im, err := partial.CompressedToImage(art)
	if err != nil {
		return "", err
	}
	d, err := im.Digest()
	if err != nil {
		return "", err
	}
	if err := s.client.Push(ctx, img.Repository.Digest(d.String()).String(), im, nil); err != nil {
		return "", err
	}
	return digest.Digest(d.String()), nil
}

// artifact is the index artifact as go-containerregistry's writer wants it.
// remote.Write sees its subject and maintains the referrers tag on
// registries without the referrers API.
type artifact struct {
	subject v1.Descriptor
	descs   []v1.Descriptor
	layers  map[v1.Hash]v1.Layer
}

var emptyConfig = []byte("{}")

func (a *artifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (a *artifact) RawConfigFile() ([]byte, error)      { return emptyConfig, nil }

func (a *artifact) RawManifest() ([]byte, error) {
	cfg := static.NewLayer(emptyConfig, types.MediaType(ocispec.MediaTypeEmptyJSON))
	ch, _ := cfg.Digest()
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: types.MediaType(ocispec.MediaTypeEmptyJSON), Digest: ch, Size: int64(len(emptyConfig))},
		Layers:        a.descs,
		Subject:       &a.subject,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimSpace(buf.Bytes()), nil
}

func (a *artifact) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := a.layers[h]; ok {
		return l, nil
	}
	cfg := static.NewLayer(emptyConfig, types.MediaType(ocispec.MediaTypeEmptyJSON))
	if ch, _ := cfg.Digest(); ch == h {
		return cfg, nil
	}
	return nil, fmt.Errorf("indexsvc: artifact has no blob %s", h)
}

// ReferrerSource finds layer indexes stored beside an image as a referrer
// artifact (see PushReferrer), in any registry, without the index service.
// It implements streamfs.IndexSource for the layers of one image.
type ReferrerSource struct {
	byLayer map[digest.Digest][]byte
}

var _ streamfs.IndexSource = (*ReferrerSource)(nil)

// LoadReferrers reads the index artifacts attached to img. It returns a
// source with no indexes (not an error) when the image has none.
func LoadReferrers(ctx context.Context, client *remote.Client, img *remote.Image) (*ReferrerSource, error) {
	src := &ReferrerSource{byLayer: map[digest.Digest][]byte{}}
	descs, err := client.Referrers(ctx, img.Repository, img.Digest, ArtifactType)
	if err != nil {
		return nil, err
	}
	for _, d := range descs {
		raw, _, _, err := client.Manifest(ctx, img.Repository, d.Digest.String())
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("indexsvc: index artifact %s: %w", d.Digest, err)
		}
		for _, l := range m.Layers {
			layer, err := digest.Parse(l.Annotations[AnnotationLayer])
			if err != nil || l.MediaType != MediaTypeIndex {
				continue
			}
			b, err := client.SmallBlob(ctx, img.Repository, l, maxIndexBytes)
			if err != nil {
				return nil, err
			}
			src.byLayer[layer] = b
		}
	}
	return src, nil
}

// Len is the number of layers the source has indexes for.
func (r *ReferrerSource) Len() int { return len(r.byLayer) }

// LayerIndex returns the index of desc from the artifact.
func (r *ReferrerSource) LayerIndex(_ context.Context, _ string, desc ocispec.Descriptor) (*index.Index, error) {
	raw, ok := r.byLayer[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("indexsvc: no index artifact for layer %s: %w", desc.Digest, streamfs.ErrNoIndex)
	}
	return checked(raw, desc)
}
