package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/server"
)

func init() { subcommands = append(subcommands, newServeCmd) }

func newServeCmd() *cobra.Command {
	var (
		configPath string
		flags      server.Config
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Riffle server: registry, Batch API, index service and executor in one process",
		Long: `serve runs everything Riffle needs on one machine in one process, with all
state under one data directory. Keys of the --config file are documented in
docs/config.md; flags override them.

serve listens on 127.0.0.1:8080 unless --listen says otherwise, and fails when
the address is taken (--listen 127.0.0.1:0 picks a free port; the address is
written to DATA_DIR/serve.addr, where the CLI finds it). One data directory
serves one riffle serve at a time; a second one says which process holds it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg server.Config
			if configPath != "" {
				c, err := server.LoadConfig(configPath)
				if err != nil {
					return err
				}
				cfg = c
			}
			fl := cmd.Flags()
			if fl.Changed("data-dir") {
				cfg.DataDir = flags.DataDir
			}
			if fl.Changed("listen") {
				cfg.Listen = flags.Listen
			}
			if fl.Changed("location") {
				cfg.Location = flags.Location
			}
			if fl.Changed("log-level") {
				cfg.Log.Level = flags.Log.Level
			}
			if fl.Changed("insecure-registry") {
				cfg.InsecureRegistries = flags.InsecureRegistries
			}
			applySecurityFlags(fl, &cfg, flags)
			if err := cfg.Validate(); err != nil {
				return err
			}
			log := newLogger(cfg.Log, cmd.ErrOrStderr())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			// Listen first: a server that cannot listen must not leave a
			// data directory behind.
			ln, err := server.Listen(cfg)
			if err != nil {
				return err
			}
			srv, err := server.New(ctx, cfg, log)
			if err != nil {
				ln.Close()
				return err
			}
			defer srv.Close()
			scheme := "http"
			if srv.Config().TLS.Enabled() {
				scheme = "https"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "riffle serving on %s://%s (data dir %s)\n", scheme, ln.Addr(), srv.Config().DataDir)
			return srv.Serve(ctx, ln, 30*time.Second)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "config file (YAML); see docs/config.md")
	f.StringVar(&flags.DataDir, "data-dir", "", "data directory (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	f.StringVar(&flags.Listen, "listen", "", "listen address (default 127.0.0.1:8080; 127.0.0.1:0 picks a free port)")
	f.StringVar(&flags.Location, "location", "", "Batch location this server presents (default us-central1)")
	f.StringVar(&flags.Log.Level, "log-level", "", "debug, info, warn or error (default info)")
	f.StringSliceVar(&flags.InsecureRegistries, "insecure-registry", nil, "registry host[:port] reached over plain HTTP (loopback always is); repeatable; replaces the insecureRegistries key")
	addSecurityFlags(f, &flags)
	return cmd
}

func newLogger(c server.LogConfig, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	// Durations as "1.5s", not JSON's nanoseconds, which nobody reads.
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			a.Value = slog.StringValue(a.Value.Duration().String())
		}
		return a
	}}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
