package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/runtime"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

func init() {
	subcommands = append(subcommands, newRunCmd)
}

// exitCodeError makes riffle exit with a container's exit code.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRunCmd() *cobra.Command {
	var (
		reg        registryFlags
		dataDir    string
		indexURL   string
		pullFirst  bool
		entrypoint string
		env        []string
		volumes    []string
		noNetwork  bool
		verbose    bool
		settle     bool
		noBg       bool
	)
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [-- COMMAND [ARG...]]",
		Short: "Run one container from an image, streamed unless --pull, with its output on this terminal",
		Long: `run starts one container from IMAGE with runc, like "ctr run" or "nerdctl run
--rm": its stdout and stderr are this command's, and riffle exits with the
container's exit code.

The image streams by default: the container starts once the image's
metadata is there and file data is fetched as it is read, through the node
engine riffle serve uses, on the same data directory (--data-dir), so later
runs and tasks find its data warm. An image that cannot be streamed is
pulled in full instead, saying why. --pull pulls it in full first.

COMMAND replaces the image's CMD (arguments to its ENTRYPOINT), as in
docker run; --entrypoint replaces the ENTRYPOINT. Needs root.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, command := args[0], args[1:]
			if cmd.ArgsLenAtDash() > 1 || (cmd.ArgsLenAtDash() < 0 && len(args) > 1) {
				return fmt.Errorf("give the command after --: riffle run IMAGE -- COMMAND [ARG...]")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			limitMountMemory()
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelInfo
			}
			stdout, stderr := lockedStdio(cmd)
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
			start := time.Now()
			n, err := newNode(nodeFlags{dataDir: dataDir, indexURL: indexURL, reg: reg}, log, nil)
			if err != nil {
				return err
			}
			defer n.Close()
			if settle && noBg {
				return fmt.Errorf("--settle needs the background streams that --no-background switches off; give one of them")
			}
			argv := command
			if entrypoint != "" {
				argv = append([]string{entrypoint}, command...)
			}
			so := []node.StreamOption{node.WithExec(argv...)}
			if noBg {
				so = append(so, node.WithoutBackground())
			}
			rfs, err := runImage(ctx, n, ref, pullFirst, log, so...)
			if err != nil {
				return err
			}
			defer rfs.Release()
			log.Info("image ready", "image", ref, "method", rfs.Method, "reused", rfs.Reused,
				"compressed_fetched", rfs.Fetched, "uncompressed_extracted", rfs.Extracted, "after", time.Since(start).Round(time.Millisecond))

			rt, err := runtime.New(runtime.Config{Root: n.Layout().Runtime(), Logger: log})
			if err != nil {
				return err
			}
			spec := &runtime.Spec{
				Name:                 "run",
				Lower:                rfs.Lower,
				Image:                rfs.Config,
				Entrypoint:           entrypoint,
				Commands:             command,
				Env:                  env,
				Volumes:              volumes,
				BlockExternalNetwork: noNetwork,
			}
			code, err := rt.Run(ctx, spec, stdout, stderr)
			if err != nil {
				return err
			}
			if rfs.Stats != nil {
				// Compressed bytes from the registry by what fetched them:
				// span reads by range, prefetch packs, and whole-layer
				// background streams.
				st := rfs.Stats()
				log.Info("container exited", "code", code, "streamed bytes fetched", st.WireBytes, "uncompressed_available", st.UncompressedBytes,
					"wire_range", st.SpanWireBytes, "wire_pack", st.PackWireBytes, "wire_background", st.BackgroundWireBytes,
					"profile_spans", st.ProfileSpans, "profile_hits", st.ProfileHits, "hint_spans", st.HintSpans,
					"span_misses", st.CacheMisses, "span_hits", st.CacheHits, "miss_runs", st.MissRuns, "stream_waits", st.StreamWaits, "background_pauses", st.BackgroundPauses,
					"passthrough_opens", st.PassthroughOpens, "local_opens", st.LocalOpens, "fuse_reads_local", st.LocalReads, "fuse_reads_fallback", st.FallbackReads,
					"after", time.Since(start).Round(time.Millisecond))
			}
			if settle && rfs.WaitSettled != nil {
				log.Info("waiting for the image to settle", "image", ref)
				if err := rfs.WaitSettled(ctx); err != nil {
					return fmt.Errorf("the container exited with %d, but the image did not settle: %w", code, err)
				}
				log.Info("image settled", "image", ref, "after", time.Since(start).Round(time.Millisecond))
			}
			if code != 0 {
				cmd.SilenceErrors = true // the container said what went wrong
				return exitCodeError{code}
			}
			return nil
		},
	}
	reg.add(cmd)
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "", "the node's data directory, as given to riffle serve (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	f.StringVar(&indexURL, "index-service", "", "URL of a riffle serve whose index service has the image's layer indexes")
	f.BoolVar(&pullFirst, "pull", false, "pull the image in full instead of streaming it")
	f.StringVar(&entrypoint, "entrypoint", "", "replace the image's ENTRYPOINT")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable (KEY=VALUE); repeatable")
	f.StringArrayVarP(&volumes, "volume", "v", nil, "bind a host path (/host:/ctr[:ro]); repeatable")
	f.BoolVar(&noNetwork, "block-external-network", false, "give the container only a loopback interface")
	f.BoolVar(&noBg, "no-background", false, "stream only what the container reads (and its startup profile): no whole layers in the background, so the image does not settle")
	f.BoolVar(&settle, "settle", false, "after the container exits, wait until the streamed image is complete on the node, so later runs get it as overlayfs (without it, layers still streaming are left unfinished)")
	f.BoolVar(&verbose, "verbose", false, "say how the image arrived and how long it took, on stderr")
	return cmd
}

// runImage streams ref, or pulls it when asked or when it cannot stream.
func runImage(ctx context.Context, n *node.Node, ref string, pull bool, log *slog.Logger, so ...node.StreamOption) (*node.RootFS, error) {
	if !pull {
		rfs, err := n.Stream(ctx, ref, node.Auth{}, so...)
		if err == nil || !errors.Is(err, streamfs.ErrNotEligible) {
			return rfs, err
		}
		log.Warn("the image cannot be streamed; pulling it in full", "image", ref, "reason", err)
	}
	return n.Pull(ctx, ref, node.Auth{})
}

// lockedStdio returns the command's output and error writers behind one
// lock: background goroutines (a mount's streams, the container's output
// copiers) write to them while the command prints, and they may be one
// writer (a terminal, or a test's buffer).
func lockedStdio(cmd *cobra.Command) (stdout, stderr io.Writer) {
	var mu sync.Mutex
	return &lockedWriter{mu: &mu, w: cmd.OutOrStdout()}, &lockedWriter{mu: &mu, w: cmd.ErrOrStderr()}
}

// lockedWriter serialises writes to w with other writers sharing mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
