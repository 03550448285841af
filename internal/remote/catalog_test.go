package remote_test

import (
	"context"
	"slices"
	"testing"

	"github.com/distribution/distribution/v3/configuration"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

func TestCatalogPagesAndPrefix(t *testing.T) {
	// Two entries a page, so the listing has to follow Link headers.
	r := startRegistry(t, registry.Options{Configure: func(c *configuration.Configuration) { c.Catalog.MaxEntries = 2 }}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()
	img := build(t, imagegenTiny())
	repos := []string{"proj/a/img", "proj/b/img", "proj/b/other", "project/x", "zeta/y"}
	for _, repo := range repos {
		if err := c.Push(ctx, r.host+"/"+repo+":v1", img, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Push(ctx, r.host+"/proj/a/img:v2", img, nil); err != nil {
		t.Fatal(err)
	}
	for prefix, want := range map[string][]string{
		"":        repos,
		"proj":    {"proj/a/img", "proj/b/img", "proj/b/other"},
		"proj/b/": {"proj/b/img", "proj/b/other"},
		"project": {"project/x"},
		"nothing": nil,
	} {
		got, err := c.Catalog(ctx, r.host, prefix)
		if err != nil {
			t.Fatalf("prefix %q: %v", prefix, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("prefix %q: %v, want %v", prefix, got, want)
		}
	}
	tags, err := c.Tags(ctx, r.host+"/proj/a/img")
	if err != nil || !slices.Equal(tags, []string{"v1", "v2"}) {
		t.Errorf("tags: %v, %v", tags, err)
	}
}
