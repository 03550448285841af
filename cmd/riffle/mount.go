package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

func init() {
	subcommands = append(subcommands, newMountCmd, newUnmountCmd, newPullCmd)
}

// registryFlags are the flags of commands that read from registries.
type registryFlags struct {
	insecure []string
	timeout  time.Duration
}

func (f *registryFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.insecure, "insecure-registry", nil, "registries (host[:port]) that may be reached over plain HTTP (loopback always may)")
	cmd.Flags().DurationVar(&f.timeout, "registry-timeout", 0, "per-request stall timeout for registry requests (default: the client's)")
}

func (f *registryFlags) options() remote.Options {
	kc := serverKeychain{addr: resolveServer("", ""), token: clientToken("")}
	return remote.Options{Insecure: f.insecure, Timeout: f.timeout, Keychain: kc, Transport: registryTransport("")}
}

func (f *registryFlags) client() *remote.Client { return remote.New(f.options()) }

func newMountCmd() *cobra.Command {
	var (
		reg         registryFlags
		dataDir     string
		cacheDir    string
		cacheBytes  int64
		readTimeout time.Duration
		spanSize    int64
		debug       bool
		indexURL    string
		background  bool
		readyFD     int
	)
	cmd := &cobra.Command{
		Use:   "mount IMAGE DIR",
		Short: "Mount an image lazily at DIR, read-only, streaming file data as it is read",
		Long: `mount resolves IMAGE, gets the index of each of its layers (from the index
service of a riffle serve given by --index-service, else from index artifacts
stored beside the image in its registry, else by reading the layer once), and
mounts the merged image read-only at DIR with FUSE. File data is then fetched span by span as it is read and kept in the
node cache (--cache-dir). The command stays in the foreground serving the
mount until it is interrupted or "riffle unmount DIR" is run; with
--background it returns as soon as the mount is ready and a background
process serves it (its log goes to DATA_DIR/mount.log).

When a riffle serve runs on the data directory, it owns the node cache: the
command then asks it to make the mount (admin token, as every client command
finds it), returns at once, and the server serves the mount, sharing its
cache and keeping the image's layers from "riffle system prune", until
"riffle unmount DIR" or until the server stops.

An image that cannot be streamed (a layer that cannot be indexed, such as one
zstd frame) is refused with the reason; use "riffle pull" for it. Needs root.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, dir := args[0], args[1]
			if cacheDir == "" && serverOwnsCache(dataDir) {
				return mountThroughServer(cmd.Context(), cmd.OutOrStdout(), dataDir, ref, dir)
			}
			if background {
				return mountInBackground(cmd, args, dataDir)
			}
			limitMountMemory()
			ready := func(error) {}
			if readyFD > 0 {
				ready = readyNotifier(readyFD)
			}
			stdout, stderr := lockedStdio(cmd)
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			if debug {
				log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			start := time.Now()
			n, err := newNode(nodeFlags{dataDir: dataDir, cacheDir: cacheDir, cacheBytes: cacheBytes, indexURL: indexURL, reg: reg}, log, func(o *node.Options) {
				o.SpanSize = spanSize
				o.Mount.ReadTimeout = readTimeout
				o.Mount.Debug = debug
			})
			if err != nil {
				ready(err)
				return err
			}
			defer n.Close()
			m, img, err := n.MountAt(ctx, ref, node.Auth{}, dir)
			if err != nil {
				if errors.Is(err, streamfs.ErrNotEligible) {
					err = fmt.Errorf("%w (use riffle pull to extract it in full)", err)
				}
				ready(err)
				return err
			}
			ready(nil)
			fmt.Fprintf(stdout, "mounted %s at %s (%d layers, ready in %v); riffle unmount %s to stop\n",
				ref, dir, len(img.Manifest.Layers), time.Since(start).Round(time.Millisecond), dir)
			done := make(chan struct{})
			go func() { m.Wait(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				if err := m.Unmount(); err != nil {
					// Busy: detach it so this process can exit; the kernel
					// drops it when its last file is closed.
					log.Warn("unmount failed; detaching", "err", err)
					if err := streamfs.UnmountDir(dir, true); err != nil {
						return err
					}
				}
				<-done
			}
			n.ReportProfile(m)
			st := m.Stats()
			fmt.Fprintf(stdout, "unmounted %s: %d compressed bytes over the wire (%d by span, %d by layer stream), %d uncompressed bytes made available; cache hits %d, misses %d\n",
				dir, st.WireBytes, st.SpanWireBytes, st.BackgroundWireBytes, st.UncompressedBytes, st.CacheHits, st.CacheMisses)
			return nil
		},
	}
	reg.add(cmd)
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "", "the node's data directory, as given to riffle serve (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	f.StringVar(&cacheDir, "cache-dir", "", "node cache directory (default DATA_DIR/cache; one riffle process at a time)")
	f.Int64Var(&cacheBytes, "cache-bytes", node.DefaultCacheBytes, "node cache size limit in bytes")
	f.DurationVar(&readTimeout, "read-timeout", streamfs.DefaultReadTimeout, "a read that needs the registry fails with EIO after this long")
	f.Int64Var(&spanSize, "span-size", 0, "uncompressed bytes per span when indexing layers (0: the index default)")
	f.BoolVar(&debug, "debug", false, "log every FUSE request")
	f.StringVar(&indexURL, "index-service", "", "URL of a riffle serve whose index service has the image's layer indexes (e.g. http://127.0.0.1:8080)")
	f.BoolVar(&background, "background", false, "return once the mount is ready, serving it from a background process")
	f.IntVar(&readyFD, readyFDFlag, 0, "descriptor to report readiness on (used by --background)")
	_ = f.MarkHidden(readyFDFlag)
	return cmd
}

func newUnmountCmd() *cobra.Command {
	var lazy bool
	cmd := &cobra.Command{
		Use:   "unmount DIR",
		Short: "Unmount an image mounted with riffle mount",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkRiffleMount(args[0]); err != nil {
				return err
			}
			return streamfs.UnmountDir(args[0], lazy)
		},
	}
	cmd.Flags().BoolVar(&lazy, "lazy", false, "detach now even if files are open (umount -l)")
	return cmd
}

func newPullCmd() *cobra.Command {
	var (
		reg      registryFlags
		parallel int
		dataDir  string
	)
	cmd := &cobra.Command{
		Use:   "pull IMAGE [DIR]",
		Short: "Pull an image in full into the node, or extract it into DIR (the non-streaming fallback)",
		Long: `pull resolves IMAGE, downloads its layers in parallel (each checked against its
digest) and applies them in order with overlay semantics, checking each layer's
uncompressed content against the config's diff_ids.

Without DIR the image's layers go into the node's layer store
(DATA_DIR/layers, one directory per layer, shared by every image that has
it), where riffle serve's tasks and riffle run find them already pulled;
layers are downloaded and extracted in parallel.
With DIR it is extracted there; DIR is created if missing and must be empty.
Needs root for ownership, devices and xattrs.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			start := time.Now()
			client := reg.client()
			if len(args) == 2 {
				fmt.Fprintf(cmd.ErrOrStderr(), "pulling %s into %s ...\n", args[0], args[1])
				n, err := pullImage(ctx, client, args[0], args[1], parallel, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "pulled %s into %s (%d layers) in %v\n", args[0], args[1], n, time.Since(start).Round(time.Millisecond))
				return nil
			}
			n, err := newNode(nodeFlags{dataDir: dataDir, reg: reg}, nil, func(o *node.Options) { o.Parallel = parallel })
			if err != nil {
				return err
			}
			defer n.Close()
			rfs, err := n.Pull(ctx, args[0], node.Auth{})
			if err != nil {
				return err
			}
			if rfs.Reused {
				fmt.Fprintf(cmd.OutOrStdout(), "%s (%s) is already pulled: %d layers in %s\n", args[0], rfs.Digest, len(rfs.Lower), n.Layout().Layers())
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pulled %s (%s; %d bytes compressed over the wire, %d uncompressed extracted) into the node: %d layers in %s, in %v\n",
				args[0], rfs.Digest, rfs.Fetched, rfs.Extracted, len(rfs.Lower), n.Layout().Layers(), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	reg.add(cmd)
	cmd.Flags().IntVar(&parallel, "parallel", pull.DefaultParallel, "layers downloaded at once")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the node's data directory, as given to riffle serve (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	return cmd
}

// pullImage extracts ref into dir with a full pull (package pull).
func pullImage(ctx context.Context, client *remote.Client, ref, dir string, parallel int, progress io.Writer) (int, error) {
	// Layers applied over files already there would mix two trees.
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return 0, fmt.Errorf("pull: %s is not empty (%d entries); pull extracts into an empty or new directory: remove its contents or give another DIR", dir, len(ents))
	}
	img, err := client.Resolve(ctx, ref, nil)
	if err != nil {
		return 0, err
	}
	_, statErr := os.Stat(dir)
	created := errors.Is(statErr, os.ErrNotExist)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("pull: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), ".riffle-pull-")
	if err != nil {
		return 0, fmt.Errorf("pull: %w", err)
	}
	defer os.RemoveAll(tmp)
	show := func(done, total int, fetched int64) {
		fmt.Fprintf(progress, "layer %d/%d applied (%d bytes compressed over the wire so far)\n", done, total, fetched)
	}
	if _, err := pull.ImageProgress(ctx, client, img, dir, tmp, parallel, show); err != nil {
		// A half-applied image is no image: leave DIR as it was found.
		if rerr := clearDir(dir, created); rerr != nil {
			return 0, fmt.Errorf("%w (and removing what was extracted: %v)", err, rerr)
		}
		return 0, err
	}
	return len(img.Manifest.Layers), nil
}

// clearDir removes dir if pull created it, else everything in it (it was
// empty before the pull). Symlinks are removed, never followed.
func clearDir(dir string, created bool) error {
	if created {
		return os.RemoveAll(dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
