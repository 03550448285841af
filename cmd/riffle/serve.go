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
docs/config.md; flags override them.`,
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
			applySecurityFlags(fl, &cfg, flags)
			if err := cfg.Validate(); err != nil {
				return err
			}
			log := newLogger(cfg.Log, cmd.ErrOrStderr())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			srv, err := server.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			defer srv.Close()
			ln, err := srv.Listen()
			if err != nil {
				return err
			}
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
	f.StringVar(&flags.Listen, "listen", "", "listen address (default 127.0.0.1:8080, or a free port if taken)")
	f.StringVar(&flags.Location, "location", "", "Batch location this server presents (default us-central1)")
	f.StringVar(&flags.Log.Level, "log-level", "", "debug, info, warn or error (default info)")
	addSecurityFlags(f, &flags)
	return cmd
}

func newLogger(c server.LogConfig, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
