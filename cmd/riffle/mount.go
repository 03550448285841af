package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/server"
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

func (f *registryFlags) client() *remote.Client {
	kc := serverKeychain{addr: resolveServer("", ""), token: clientToken("")}
	return remote.New(remote.Options{Insecure: f.insecure, Timeout: f.timeout, Keychain: kc, Transport: registryTransport("")})
}

func defaultCacheDir() string {
	return filepath.Join(server.DefaultDataDir(), "mount-cache")
}

func newMountCmd() *cobra.Command {
	var (
		reg         registryFlags
		cacheDir    string
		cacheBytes  int64
		readTimeout time.Duration
		spanSize    int64
		debug       bool
		indexURL    string
	)
	cmd := &cobra.Command{
		Use:   "mount IMAGE DIR",
		Short: "Mount an image lazily at DIR, read-only, streaming file data as it is read",
		Long: `mount resolves IMAGE, gets the index of each of its layers (from the index
service of a riffle serve given by --index-service, else from index artifacts
stored beside the image in its registry, else by reading the layer once), and
mounts the merged image read-only at DIR with FUSE. File data is then fetched span by span as it is read and kept in the
node cache (--cache-dir). The command stays in the foreground serving the
mount until it is interrupted or "riffle unmount DIR" is run.

An image that cannot be streamed (a layer that cannot be indexed, such as one
zstd frame) is refused with the reason; use "riffle pull" for it. Needs root.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, dir := args[0], args[1]
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			if debug {
				log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			if err := os.MkdirAll(cacheDir, 0o700); err != nil {
				return fmt.Errorf("--cache-dir: %w", err)
			}
			c, err := cache.Open(cacheDir, cache.Options{MaxBytes: cacheBytes})
			if err != nil {
				if errors.Is(err, cache.ErrLocked) {
					return fmt.Errorf("--cache-dir %s is in use by another riffle process; give this mount its own --cache-dir: %w", cacheDir, err)
				}
				return err
			}
			defer c.Close()

			start := time.Now()
			client := reg.client()
			opts := streamfs.OpenOptions{Build: true, SpanSize: spanSize}
			if indexURL != "" {
				if !strings.Contains(indexURL, "://") {
					indexURL = "http://" + indexURL
				}
				opts.Indexes = indexsvc.HTTPSource{BaseURL: indexURL, Client: serverHTTPClient("")}
			} else if ri, err := client.Resolve(ctx, ref, nil); err == nil {
				if src, err := indexsvc.LoadReferrers(ctx, client, ri); err == nil && src.Len() > 0 {
					opts.Indexes = src
				}
			}
			img, _, err := streamfs.Open(ctx, client, ref, opts)
			if err != nil {
				if errors.Is(err, streamfs.ErrNotEligible) {
					return fmt.Errorf("%w (use riffle pull to extract it in full)", err)
				}
				return err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("mount point: %w", err)
			}
			m, err := streamfs.Mount(ctx, dir, img, streamfs.Options{
				Cache:       c,
				ReadTimeout: readTimeout,
				Logger:      log,
				Debug:       debug,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s (%d layers, ready in %v); riffle unmount %s to stop\n",
				ref, dir, len(img.Layers), time.Since(start).Round(time.Millisecond), dir)
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
			st := m.Stats()
			fmt.Fprintf(cmd.OutOrStdout(), "unmounted %s: fetched %d spans (%d bytes), cache hits %d, misses %d\n",
				dir, st.FetchedSpans, st.FetchedBytes, st.CacheHits, st.CacheMisses)
			return nil
		},
	}
	reg.add(cmd)
	f := cmd.Flags()
	f.StringVar(&cacheDir, "cache-dir", defaultCacheDir(), "node cache directory (one riffle process at a time)")
	f.Int64Var(&cacheBytes, "cache-bytes", 10<<30, "node cache size limit in bytes")
	f.DurationVar(&readTimeout, "read-timeout", streamfs.DefaultReadTimeout, "a read that needs the registry fails with EIO after this long")
	f.Int64Var(&spanSize, "span-size", 0, "uncompressed bytes per span when indexing layers (0: the index default)")
	f.BoolVar(&debug, "debug", false, "log every FUSE request")
	f.StringVar(&indexURL, "index-service", "", "URL of a riffle serve whose index service has the image's layer indexes (e.g. http://127.0.0.1:8080)")
	return cmd
}

func newUnmountCmd() *cobra.Command {
	var lazy bool
	cmd := &cobra.Command{
		Use:   "unmount DIR",
		Short: "Unmount an image mounted with riffle mount",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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

Without DIR the image goes into the node's image store
(DATA_DIR/images/pulled), where riffle serve's tasks find it already pulled.
With DIR it is extracted there; DIR is created if missing and should be empty.
Needs root for ownership, devices and xattrs.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			start := time.Now()
			client := reg.client()
			if len(args) == 2 {
				n, err := pullImage(ctx, client, args[0], args[1], parallel)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "pulled %s into %s (%d layers) in %v\n", args[0], args[1], n, time.Since(start).Round(time.Millisecond))
				return nil
			}
			if dataDir == "" {
				dataDir = server.DefaultDataDir()
			}
			store := pull.Store(filepath.Join(dataDir, "images", "pulled"))
			if err := os.MkdirAll(string(store), 0o755); err != nil {
				return fmt.Errorf("pull: --data-dir: %w", err)
			}
			img, err := client.Resolve(ctx, args[0], nil)
			if err != nil {
				return err
			}
			if store.Has(img.Digest) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s (%s) is already pulled at %s\n", args[0], img.Digest, store.RootFS(img.Digest))
				return nil
			}
			n, err := store.Add(ctx, client, img, parallel)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pulled %s (%s, %d layers, %d bytes fetched) into the node at %s in %v\n",
				args[0], img.Digest, len(img.Manifest.Layers), n, store.RootFS(img.Digest), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	reg.add(cmd)
	cmd.Flags().IntVar(&parallel, "parallel", pull.DefaultParallel, "layers downloaded at once")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the node's data directory, as given to riffle serve (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	return cmd
}

// pullImage extracts ref into dir with a full pull (package pull).
func pullImage(ctx context.Context, client *remote.Client, ref, dir string, parallel int) (int, error) {
	img, err := client.Resolve(ctx, ref, nil)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("pull: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), ".riffle-pull-")
	if err != nil {
		return 0, fmt.Errorf("pull: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := pull.Image(ctx, client, img, dir, tmp, parallel); err != nil {
		return 0, err
	}
	return len(img.Manifest.Layers), nil
}
