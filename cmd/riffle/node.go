package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/node"
)

// nodeFlags are what the node commands (mount, pull, run) take to open
// the node's engine on a data directory.
type nodeFlags struct {
	dataDir    string
	cacheDir   string // default: the layout's
	cacheBytes int64
	indexURL   string // another riffle serve's index service
	reg        registryFlags
}

// newNode opens the node engine on the data directory, the way riffle
// serve does, so the CLI and the server share layers and cache. tune
// adjusts the options before opening.
func newNode(f nodeFlags, log *slog.Logger, tune func(*node.Options)) (*node.Node, error) {
	root := f.dataDir
	if root == "" {
		root = node.DefaultRoot()
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	opts := node.Options{
		Layout:     node.Layout{Root: root},
		Registry:   f.reg.options(),
		CacheBytes: f.cacheBytes,
		Referrers:  true,
		Logger:     log,
	}
	if f.indexURL != "" {
		u := f.indexURL
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		src := indexsvc.HTTPSource{BaseURL: u, Client: serverHTTPClient("")}
		opts.Indexes, opts.Profiles = src, src
	}
	opts.CacheDir = f.cacheDir
	if tune != nil {
		tune(&opts)
	}
	return node.New(opts)
}
