package imagegen

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// WriteOCILayout adds img to the OCI image layout in dir, creating the
// layout if dir holds none, and names it refName through the
// org.opencontainers.image.ref.name annotation (as `skopeo copy
// oci:DIR:REF` expects). An empty refName leaves the image unnamed.
func WriteOCILayout(dir string, img v1.Image, refName string) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "index.json")); !errors.Is(statErr, fs.ErrNotExist) {
			return fmt.Errorf("imagegen: open OCI layout %s: %w", dir, err)
		}
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("imagegen: create OCI layout %s: %w", dir, err)
		}
	}
	var opts []layout.Option
	if refName != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": refName,
		}))
	}
	if err := p.AppendImage(img, opts...); err != nil {
		return fmt.Errorf("imagegen: write image to OCI layout %s: %w", dir, err)
	}
	return nil
}

// WriteDockerSave writes img to path as a `docker save` tarball tagged tag
// (for example "example.com/test/image:latest"), the format `docker load`
// and `riffle image push` read.
func WriteDockerSave(path, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("imagegen: tag %q: %w", tag, err)
	}
	if err := tarball.WriteToFile(path, ref, img); err != nil {
		return fmt.Errorf("imagegen: write docker save tarball %s: %w", path, err)
	}
	return nil
}
