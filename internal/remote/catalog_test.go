package remote_test

import (
	"context"
	"slices"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	v1 "github.com/google/go-containerregistry/pkg/v1"

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

func TestPushProgress(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	updates := make(chan v1.Update, 8)
	var last v1.Update
	done := make(chan int)
	go func() {
		n := 0
		for u := range updates { // Push closes the channel
			last = u
			n++
		}
		done <- n
	}()
	if err := c.Push(context.Background(), r.host+"/p/r/img:v1", build(t, smallSpec(61)), updates); err != nil {
		t.Fatal(err)
	}
	if n := <-done; n == 0 || last.Total == 0 || last.Complete != last.Total {
		t.Errorf("%d updates, last %+v", n, last)
	}
	// A failed push closes the channel too.
	bad := make(chan v1.Update, 1)
	if err := c.Push(context.Background(), "not a ref", build(t, imagegenTiny()), bad); err == nil {
		t.Fatal("bad reference accepted")
	}
	if _, open := <-bad; open {
		t.Error("progress channel left open")
	}
}
