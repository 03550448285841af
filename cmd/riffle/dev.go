package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/imagegen"
)

func init() { subcommands = append(subcommands, newDevCmd) }

// newDevCmd holds tools for demos and benchmarks. It is listed: the demo
// uses it and it is the quickest way to a runnable image on a machine
// without Docker.
func newDevCmd() *cobra.Command {
	dev := &cobra.Command{
		Use:   "dev",
		Short: "Tools for demos and tests: generate a small runnable image",
	}
	var kind, busybox string
	img := &cobra.Command{
		Use:   "image --out DIR",
		Short: "Write a generated image as an OCI layout (push it with riffle image push)",
		Long: `image writes a generated image as an OCI layout directory: --kind busybox is a
small runnable image made from this machine's static busybox (busybox-static,
installed by scripts/setup.sh) with sh and the usual tools; --kind features
holds every tar feature (hard links, whiteouts, xattrs, ...) for testing.`,
		Example: `  riffle dev image --kind busybox --out ./layout
  riffle image push ./layout 127.0.0.1:8080/my-project/my-repo/busybox:v1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, _ := cmd.Flags().GetString("out")
			if out == "" {
				return fmt.Errorf("--out: give the directory to write the OCI layout to")
			}
			var spec imagegen.Spec
			switch kind {
			case "busybox":
				s, err := imagegen.Busybox(busybox)
				if err != nil {
					return err
				}
				spec = s
			case "features":
				spec = imagegen.AllFeatures()
			default:
				return fmt.Errorf("--kind %q: use busybox or features", kind)
			}
			im, err := imagegen.Build(spec)
			if err != nil {
				return err
			}
			if err := imagegen.WriteOCILayout(out, im, "latest"); err != nil {
				return err
			}
			d, _ := im.Digest()
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s image %s to %s\n", kind, d, out)
			return nil
		},
	}
	img.Flags().String("out", "", "directory for the OCI layout")
	img.Flags().StringVar(&kind, "kind", "busybox", "busybox (a small runnable image) or features (every tar feature)")
	img.Flags().StringVar(&busybox, "busybox", "/bin/busybox", "a static busybox binary to build the image from")
	dev.AddCommand(img)
	return dev
}
