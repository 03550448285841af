package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/server"
)

// serverOwnsCache reports whether a riffle serve runs on dataDir, and so
// owns its node cache: riffle mount then asks it to make the mount.
func serverOwnsCache(dataDir string) bool {
	if dataDir == "" {
		dataDir = node.DefaultRoot()
	}
	return server.DataDirInUse(dataDir) != nil
}

// mountThroughServer asks the riffle serve running on dataDir to mount ref
// at dir with its node (and so its cache), instead of opening the cache
// here, which only one process may. The mount stays until
// `riffle unmount DIR` or the server stops.
func mountThroughServer(ctx context.Context, out io.Writer, dataDir, ref, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	f := systemFlags{dataDir: dataDir}
	if dataDir == "" {
		dataDir = node.DefaultRoot()
	}
	// The server on this data directory, whatever RIFFLE_SERVER says.
	if addr, err := server.ReadAddr(dataDir); err == nil && addr != "" {
		f.server = addr
	}
	var rep server.MountReply
	if err := f.call(ctx, http.MethodPost, "/riffle/v1/system/mounts", server.MountRequest{Image: ref, Dir: abs}, &rep); err != nil {
		return fmt.Errorf("mount: through the riffle serve running on the data directory (it owns the node cache): %w", err)
	}
	fmt.Fprintf(out, "mounted %s at %s (%d layers), served by the riffle serve running on the data directory; riffle unmount %s to stop\n", ref, rep.Dir, rep.Layers, rep.Dir)
	return nil
}
