package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
)

// DataDirInUse returns an error wrapping ErrDataDirInUse when a riffle
// serve holds dir, and nil otherwise.
func DataDirInUse(dir string) error { return checkDataDir(dir) }

// OpenSystem opens cfg's data directory for `riffle system df` and
// `prune` when no riffle serve runs on it: it takes the directory as a
// server would (so none starts meanwhile) and opens the node cache, the
// node engine and the job store. It fails, saying who, when a riffle
// serve, mount or run uses the directory. release releases it all.
func OpenSystem(cfg Config) (sys System, release func() error, err error) {
	cfg = cfg.WithDefaults()
	l := cfg.Layout()
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return System{}, nil, err
	}
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		return errors.Join(append(errs, lock.Close())...)
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	// The cache first: its lock tells whether riffle mount or run uses
	// the directory, before the node would tidy their mount points away.
	c, err := cache.Open(l.Cache(), cache.Options{MaxBytes: cfg.Cache.MaxBytes})
	if errors.Is(err, cache.ErrLocked) {
		return System{}, nil, fmt.Errorf("server: the node cache %s is in use by riffle mount or riffle run; stop them first: %w", l.Cache(), err)
	}
	if err != nil {
		return System{}, nil, fmt.Errorf("server: %w", err)
	}
	closers = append(closers, c.Close)
	n, err := node.New(node.Options{Layout: l, Cache: c})
	if err != nil {
		return System{}, nil, err
	}
	closers = append(closers, n.Close)
	st, err := store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		return System{}, nil, err
	}
	closers = append(closers, st.Close)
	sys = System{
		Layout: l, Node: n, Cache: c, Store: st, LayersMaxBytes: cfg.Layers.MaxBytes,
		GC: func(ctx context.Context) (registry.GCResult, error) { return registry.GC(ctx, l.Registry()) },
	}
	return sys, closeAll, nil
}
