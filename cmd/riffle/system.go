package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/server"
)

func init() { subcommands = append(subcommands, newSystemCmd) }

// systemFlags choose where `riffle system` works: through a running riffle
// serve's API, or on a data directory no server runs on.
type systemFlags struct {
	server, dataDir, config string
}

// local reports whether to open the data directory here: when no riffle
// serve holds it and no server was named.
func (f *systemFlags) local() bool {
	if f.server != "" || os.Getenv("RIFFLE_SERVER") != "" {
		return false
	}
	return server.DataDirInUse(f.dir()) == nil
}

func (f *systemFlags) dir() string {
	if f.dataDir == "" {
		return server.DefaultDataDir()
	}
	d, err := filepath.Abs(f.dataDir)
	if err != nil {
		return f.dataDir
	}
	return d
}

// open opens the data directory locally.
func (f *systemFlags) open() (server.System, func() error, error) {
	var cfg server.Config
	if f.config != "" {
		c, err := server.LoadConfig(f.config)
		if err != nil {
			return server.System{}, nil, err
		}
		cfg = c
	}
	if f.dataDir != "" || cfg.DataDir == "" {
		cfg.DataDir = f.dir()
	}
	return server.OpenSystem(cfg)
}

// call makes one system API call to the running server.
func (f *systemFlags) call(ctx context.Context, method, path string, body, out any) error {
	return serverCall(ctx, "system", " (start it, or give --data-dir of a directory no server runs on)",
		resolveServer(f.server, f.dataDir), f.dataDir, method, path, body, out)
}

func newSystemCmd() *cobra.Command {
	f := &systemFlags{}
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Show and free the disk space Riffle uses",
		Long: `system shows (df) and frees (prune) what a data directory holds: the node
cache, extracted layers, images pulled flat, stream mounts, the embedded
registry's blobs, and jobs' work directories and logs.

With a riffle serve running on the data directory (or --server), the commands
go through its API: df needs the viewer role in every project, prune the
admin role. With no server on the data directory, they open it here (and
fail if riffle mount or riffle run uses it).`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.server, "server", "", "riffle serve HOST:PORT (default: the one running on the data directory)")
	pf.StringVar(&f.dataDir, "data-dir", "", "data directory (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	pf.StringVar(&f.config, "config", "", "riffle serve's config file, for its limits when no server runs")
	cmd.AddCommand(newSystemDfCmd(f), newSystemPruneCmd(f))
	return cmd
}

func newSystemDfCmd(f *systemFlags) *cobra.Command {
	var format string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "df",
		Short: "Show the disk space of the node cache, layers, images, registry and jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var u server.DiskUsage
			if f.local() {
				sys, closeSys, err := f.open()
				if err != nil {
					return err
				}
				u, err = sys.DiskUsage(cmd.Context())
				if cerr := closeSys(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			} else if err := f.call(cmd.Context(), http.MethodGet, "/riffle/v1/system/df", nil, &u); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(u)
			case "", "text":
				printDiskUsage(out, u, verbose)
				return nil
			}
			return fmt.Errorf("system df: --format %q: use text or json", format)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "text or json")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every layer, image, mount and work directory")
	return cmd
}

func printDiskUsage(w io.Writer, u server.DiskUsage, verbose bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var layers, layersInUse, flat, flatInUse int
	var reclaim int64
	for _, e := range u.Node.Entries {
		if e.Kind == "layer" {
			layers++
		} else {
			flat++
		}
		if e.InUse {
			if e.Kind == "layer" {
				layersInUse++
			} else {
				flatInUse++
			}
		} else {
			reclaim += e.Bytes
		}
	}
	var finished int
	var workReclaim int64
	for _, wd := range u.Jobs.WorkDirs {
		if wd.Finished {
			finished++
			workReclaim += wd.Bytes
		}
	}
	fmt.Fprintf(tw, "DATA DIRECTORY\t%s\n\n", u.DataDir)
	fmt.Fprintf(tw, "WHAT\tCOUNT\tSIZE\tLIMIT\tRECLAIMABLE\n")
	fmt.Fprintf(tw, "node cache\t%d entries\t%s\t%s\t%s\n", u.Cache.Entries, shortBytes(u.Cache.Bytes), shortBytes(u.Cache.MaxBytes), shortBytes(u.Cache.Bytes-u.Cache.PinnedBytes))
	fmt.Fprintf(tw, "layers\t%d (%d in use)\t%s\t%s (with flat images)\t%s\n", layers, layersInUse, shortBytes(u.Node.LayerBytes), shortBytes(u.LayersMaxBytes), shortBytes(reclaim))
	fmt.Fprintf(tw, "flat images\t%d (%d in use)\t%s\t\t\n", flat, flatInUse, shortBytes(u.Node.FlatBytes))
	fmt.Fprintf(tw, "stream mounts\t%d\t\t\t\n", len(u.Node.Mounts))
	fmt.Fprintf(tw, "registry blobs\t%d\t%s\t\tprune --registry after image rm\n", u.Registry.Blobs, shortBytes(u.Registry.Bytes))
	fmt.Fprintf(tw, "layer indexes\t\t%s\t\t\n", shortBytes(u.IndexBytes))
	fmt.Fprintf(tw, "job work dirs\t%d (%d finished)\t%s\t\t%s\n", len(u.Jobs.WorkDirs), finished, shortBytes(u.Jobs.WorkBytes), shortBytes(workReclaim))
	fmt.Fprintf(tw, "job logs\t\t%s\t\tgo with their job (batch jobs delete)\n", shortBytes(u.Jobs.LogBytes))
	tw.Flush()
	if !verbose {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "KIND\tDIGEST\tSIZE\tIN USE\tLAST USED\tIMAGES\n")
	for _, e := range u.Node.Entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%v\n", e.Kind, e.Digest, shortBytes(e.Bytes), e.InUse, e.LastUsed.Format("2006-01-02 15:04:05"), e.Images)
	}
	for _, m := range u.Node.Mounts {
		fmt.Fprintf(tw, "mount\t%s\t\t%d users\tsettled=%v\t[%s]\n", m.Digest, m.Users, m.Settled, m.Image)
	}
	for _, wd := range u.Jobs.WorkDirs {
		fmt.Fprintf(tw, "work dir\t%s\t%s\tfinished=%v\t\t\n", wd.Job, shortBytes(wd.Bytes), wd.Finished)
	}
	tw.Flush()
}

func newSystemPruneCmd(f *systemFlags) *cobra.Command {
	var keepLayers, keepCache, format string
	var reg bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Free layers, images, cache and work directories nothing uses",
		Long: `prune frees what no task, mount or job uses:

  - extracted layers and images pulled flat that no running task or stream
    mount uses, least recently used first (--keep-layers keeps that much);
  - node cache entries no mount has open (--keep-cache keeps that much);
  - work directories left by finished jobs;
  - with --registry, the embedded registry's blobs no manifest references
    (what "riffle image rm" left). It waits until no push has written for
    10 seconds, and holds pushes off while it sweeps.

It is safe while tasks run: they keep what they use, and data evicted from the
cache is fetched again when read. Through riffle serve it needs the admin role.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var o server.PruneOptions
			var err error
			if o.KeepLayerBytes, err = sizeFlag("--keep-layers", keepLayers); err != nil {
				return err
			}
			if o.KeepCacheBytes, err = sizeFlag("--keep-cache", keepCache); err != nil {
				return err
			}
			o.Registry = reg
			var rep server.PruneReport
			if f.local() {
				sys, closeSys, err := f.open()
				if err != nil {
					return err
				}
				rep, err = sys.Prune(cmd.Context(), o)
				if cerr := closeSys(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			} else if err := f.call(cmd.Context(), http.MethodPost, "/riffle/v1/system/prune", o, &rep); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if format == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			fmt.Fprintf(out, "layers and flat images: removed %d, %s (%s kept)\n", len(rep.Layers.Removed), shortBytes(rep.Layers.Bytes), shortBytes(rep.Layers.Kept))
			fmt.Fprintf(out, "node cache: evicted %d entries, %s\n", rep.CacheEntries, shortBytes(rep.CacheBytes))
			fmt.Fprintf(out, "job work dirs: removed %d, %s\n", len(rep.WorkDirs), shortBytes(rep.WorkDirBytes))
			if rep.Registry != nil {
				fmt.Fprintf(out, "registry: removed %d blobs, %s\n", rep.Registry.Blobs, shortBytes(rep.Registry.Bytes))
			}
			fmt.Fprintf(out, "total freed: %s\n", shortBytes(rep.FreedBytes))
			return nil
		},
	}
	cmd.Flags().StringVar(&keepLayers, "keep-layers", "0", "keep up to this much of unused layers and flat images, most recently used (e.g. 10GiB)")
	cmd.Flags().StringVar(&keepCache, "keep-cache", "0", "keep up to this much of the node cache (e.g. 5GiB)")
	cmd.Flags().BoolVar(&reg, "registry", false, "also delete the registry's blobs no manifest references")
	cmd.Flags().StringVar(&format, "format", "text", "text or json")
	return cmd
}

func sizeFlag(name, v string) (int64, error) {
	n, err := server.ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}
