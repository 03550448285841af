package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/remote"
)

func newImageRmCmd(f *imageFlags) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "rm IMAGE[:TAG|@DIGEST]...",
		Short: "Delete images from a registry",
		Long: `rm deletes images from a registry, named as for push
(HOST:PORT/PROJECT/REPOSITORY/IMAGE:TAG; without a tag, :latest).

IMAGE:TAG removes the tag; when no other tag of the repository names the
same manifest, the manifest goes too (use --keep-manifest to keep it,
reachable by digest). IMAGE@DIGEST removes the manifest and every tag
naming it. Deleting needs the editor role in the image's project on a
riffle serve. The space the image's layers use is freed by
"riffle system prune --registry", which removes blobs no manifest uses.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			defer func() { err = f.hint(err) }()
			c := f.client()
			for _, a := range args {
				ref, err := f.qualify(a)
				if err != nil {
					return err
				}
				if err := removeImage(cmd.Context(), c, ref, keep, cmd.OutOrStdout()); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&keep, "keep-manifest", false, "with IMAGE:TAG, remove only the tag")
	return cmd
}

// removeImage deletes one reference, saying what it removed.
func removeImage(ctx context.Context, c *remote.Client, ref string, keepManifest bool, out io.Writer) error {
	r, err := c.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("image rm: %w", err)
	}
	repo := r.Context()
	notFound := func(err error) error {
		if errors.Is(err, remote.ErrNotFound) {
			return fmt.Errorf("image rm: %s: no such image in %s (riffle image ls %s lists its images): %w", ref, repo.RegistryStr(), repo.RegistryStr(), err)
		}
		return fmt.Errorf("image rm: %w", err)
	}
	if _, isDigest := r.(name.Digest); isDigest {
		if err := c.DeleteManifest(ctx, ref); err != nil {
			return notFound(err)
		}
		fmt.Fprintf(out, "deleted %s\n", r.Name())
		return nil
	}
	_, _, d, err := c.Manifest(ctx, repo, r.Identifier())
	if err != nil {
		return notFound(err)
	}
	if err := c.DeleteManifest(ctx, r.Name()); err != nil {
		return notFound(err)
	}
	fmt.Fprintf(out, "untagged %s\n", r.Name())
	if keepManifest {
		return nil
	}
	others, err := tagsNaming(ctx, c, repo, d)
	if err != nil {
		return fmt.Errorf("image rm: %w", err)
	}
	if len(others) > 0 {
		fmt.Fprintf(out, "kept %s@%s: tags %v still name it\n", repo.Name(), d, others)
		return nil
	}
	byDigest := repo.Name() + "@" + d.String()
	if err := c.DeleteManifest(ctx, byDigest); err != nil && !errors.Is(err, remote.ErrNotFound) {
		return fmt.Errorf("image rm: %w", err)
	}
	fmt.Fprintf(out, "deleted %s\n", byDigest)
	return nil
}

// tagsNaming lists the tags of repo that name the manifest d.
func tagsNaming(ctx context.Context, c *remote.Client, repo name.Repository, d fmt.Stringer) ([]string, error) {
	tags, err := c.Tags(ctx, repo.Name())
	if errors.Is(err, remote.ErrNotFound) {
		return nil, nil // the repository has no tags left
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range tags {
		_, _, td, err := c.Manifest(ctx, repo, t)
		if errors.Is(err, remote.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		if td.String() == d.String() {
			out = append(out, t)
		}
	}
	return out, nil
}
