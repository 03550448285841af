package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
)

// System is a data directory's disk use, seen through the components that
// own each part: riffle serve's own, or (riffle system df --data-dir, no
// server running) ones the CLI opened. Nil components are skipped.
type System struct {
	Layout node.Layout
	Node   *node.Node
	Cache  *cache.Cache
	Store  *store.Store
	// GC collects the registry's garbage (Registry.GC, or registry.GC on
	// the directory when no registry serves it).
	GC func(ctx context.Context) (registry.GCResult, error)
	// LayersMaxBytes is the configured cap of the layer store (reported).
	LayersMaxBytes int64
}

// DiskUsage is what `riffle system df` shows (GET /riffle/v1/system/df).
type DiskUsage struct {
	DataDir string `json:"dataDir"`
	// Cache is the node cache of streamed spans and indexes.
	Cache CacheUsage `json:"cache"`
	// Node lists layers, images pulled flat and stream mounts.
	Node node.Usage `json:"node"`
	// LayersMaxBytes caps Node's layers and flat images together.
	LayersMaxBytes int64 `json:"layersMaxBytes"`
	// Registry is the embedded registry's blob storage.
	Registry registry.GCResult `json:"registry"`
	// IndexBytes is the index service's store of layer indexes.
	IndexBytes int64 `json:"indexBytes"`
	// Jobs is what jobs keep: work directories and logs.
	Jobs JobsUsage `json:"jobs"`
}

// CacheUsage is the node cache's size and limit.
type CacheUsage struct {
	Entries     int64 `json:"entries"`
	Bytes       int64 `json:"bytes"`
	MaxBytes    int64 `json:"maxBytes"`
	PinnedBytes int64 `json:"pinnedBytes"`
}

// JobsUsage is what jobs keep on disk.
type JobsUsage struct {
	// WorkDirs are the jobs' work directories; a job's goes when it ends,
	// so one of a finished job is a leftover (of a crash) prune removes.
	WorkDirs []WorkDir `json:"workDirs"`
	// WorkBytes sums them.
	WorkBytes int64 `json:"workBytes"`
	// LogBytes is the task logs of every job the server keeps; they go
	// with their job (riffle batch jobs delete).
	LogBytes int64 `json:"logBytes"`
}

// WorkDir is one job's work directory.
type WorkDir struct {
	Job      string `json:"job"`
	Bytes    int64  `json:"bytes"`
	Finished bool   `json:"finished"`
}

// DiskUsage measures the data directory.
func (s System) DiskUsage(ctx context.Context) (DiskUsage, error) {
	u := DiskUsage{DataDir: s.Layout.Root, LayersMaxBytes: s.LayersMaxBytes}
	var errs []error
	if s.Cache != nil {
		st := s.Cache.Stats()
		u.Cache = CacheUsage{Entries: st.Entries, Bytes: st.Bytes, MaxBytes: st.MaxBytes, PinnedBytes: st.PinnedBytes}
	}
	if s.Node != nil {
		nu, err := s.Node.Usage()
		errs = append(errs, err)
		u.Node = nu
	}
	reg, err := registry.Usage(s.Layout.Registry())
	errs = append(errs, err)
	u.Registry = reg
	u.IndexBytes = dirBytes(s.Layout.Indexes())
	u.Jobs.LogBytes = dirBytes(logsDir(s.Layout))
	wds, err := s.workDirs(ctx)
	errs = append(errs, err)
	u.Jobs.WorkDirs = wds
	for _, w := range wds {
		u.Jobs.WorkBytes += w.Bytes
	}
	return u, errors.Join(errs...)
}

func workRoot(l node.Layout) string { return filepath.Join(l.Root, "batch", "work") }
func logsDir(l node.Layout) string  { return filepath.Join(l.Root, "batch", "logs") }

// workDirs lists DATA/batch/work/PROJECT/LOCATION/JOB, saying which belong
// to jobs that are finished (or gone) according to the store.
func (s System) workDirs(ctx context.Context) ([]WorkDir, error) {
	root := workRoot(s.Layout)
	var out []WorkDir
	projects, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	for _, p := range projects {
		locs, _ := os.ReadDir(filepath.Join(root, p.Name()))
		for _, l := range locs {
			jobs, _ := os.ReadDir(filepath.Join(root, p.Name(), l.Name()))
			for _, j := range jobs {
				name := "projects/" + p.Name() + "/locations/" + l.Name() + "/jobs/" + j.Name()
				w := WorkDir{Job: name, Bytes: dirBytes(filepath.Join(root, p.Name(), l.Name(), j.Name()))}
				if s.Store != nil {
					job, err := s.Store.GetJob(ctx, name)
					w.Finished = errors.Is(err, store.ErrNotFound) || (err == nil && finished(job.GetStatus().GetState()))
				}
				out = append(out, w)
			}
		}
	}
	return out, nil
}

// finished reports whether a job in state st will never run again.
func finished(st batchpb.JobStatus_State) bool {
	return st == batchpb.JobStatus_SUCCEEDED || st == batchpb.JobStatus_FAILED || st == batchpb.JobStatus_CANCELLED
}

// PruneOptions says what `riffle system prune` frees
// (POST /riffle/v1/system/prune takes it as its JSON body).
type PruneOptions struct {
	// KeepLayerBytes: remove unused layers and flat images, least recently
	// used first, until they take at most this (0: every unused one).
	KeepLayerBytes int64 `json:"keepLayerBytes"`
	// KeepCacheBytes: evict unused cache entries down to this (0: all).
	KeepCacheBytes int64 `json:"keepCacheBytes"`
	// Registry also collects the registry's unreferenced blobs.
	Registry bool `json:"registry"`
}

// PruneReport is what a prune freed.
type PruneReport struct {
	// Layers is what left the layer store and the flat images.
	Layers node.PruneResult `json:"layers"`
	// CacheEntries and CacheBytes were evicted from the node cache.
	CacheEntries int64 `json:"cacheEntries"`
	CacheBytes   int64 `json:"cacheBytes"`
	// WorkDirs lists the jobs whose leftover work directory went.
	WorkDirs     []string `json:"workDirs"`
	WorkDirBytes int64    `json:"workDirBytes"`
	// Registry is what registry garbage collection removed, if asked.
	Registry *registry.GCResult `json:"registry,omitempty"`
	// FreedBytes sums it all.
	FreedBytes int64 `json:"freedBytes"`
}

// Prune frees what nothing uses: layers and flat images no task or mount
// uses, unused cache entries, the work directories of finished jobs and,
// with Registry, unreferenced registry blobs. It is safe while tasks run.
func (s System) Prune(ctx context.Context, o PruneOptions) (PruneReport, error) {
	var r PruneReport
	var errs []error
	if s.Node != nil {
		lr, err := s.Node.Prune(ctx, o.KeepLayerBytes)
		errs = append(errs, err)
		r.Layers = lr
	}
	if s.Cache != nil {
		r.CacheEntries, r.CacheBytes = s.Cache.Trim(o.KeepCacheBytes)
	}
	wds, err := s.workDirs(ctx)
	errs = append(errs, err)
	for _, w := range wds {
		if !w.Finished {
			continue
		}
		if err := os.RemoveAll(filepath.Join(workRoot(s.Layout), filepath.FromSlash(jobPath(w.Job)))); err != nil {
			errs = append(errs, fmt.Errorf("server: %w", err))
			continue
		}
		r.WorkDirs = append(r.WorkDirs, w.Job)
		r.WorkDirBytes += w.Bytes
	}
	if o.Registry && s.GC != nil {
		g, err := s.GC(ctx)
		errs = append(errs, err)
		r.Registry = &g
		r.FreedBytes += g.Bytes
	}
	r.FreedBytes += r.Layers.Bytes + r.CacheBytes + r.WorkDirBytes
	return r, errors.Join(errs...)
}

// jobPath is PROJECT/LOCATION/JOB of projects/P/locations/L/jobs/J.
func jobPath(name string) string {
	p := strings.Split(name, "/")
	return p[1] + "/" + p[3] + "/" + p[5]
}

// dirBytes sums the sizes of the files below dir (0 when it is missing).
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// system is the server's own view of its data directory.
func (s *Server) system() System {
	return System{
		Layout: s.cfg.Layout(), Node: s.node, Cache: s.cache, Store: s.store,
		GC:             func(ctx context.Context) (registry.GCResult, error) { return s.registry.GC(ctx, 0) },
		LayersMaxBytes: s.cfg.Layers.MaxBytes,
	}
}

// The system API, for `riffle system` (guard checks the roles):
//
//	GET  /riffle/v1/system/df     -> DiskUsage (viewer in every project)
//	POST /riffle/v1/system/prune  PruneOptions -> PruneReport (admin)
func (s *Server) registerSystemAPI() {
	s.mux.HandleFunc("GET /riffle/v1/system/df", func(w http.ResponseWriter, r *http.Request) {
		u, err := s.system().DiskUsage(r.Context())
		if err != nil {
			s.log.Warn("system df: part of the data directory could not be measured", "err", err)
		}
		writeJSON(w, u)
	})
	s.mux.HandleFunc("POST /riffle/v1/system/prune", func(w http.ResponseWriter, r *http.Request) {
		var o PruneOptions
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o); err != nil && !errors.Is(err, io.EOF) {
			jsonError(w, http.StatusBadRequest, "body: %v; send {\"keepLayerBytes\": N, \"keepCacheBytes\": N, \"registry\": true|false}", err)
			return
		}
		if o.KeepLayerBytes < 0 || o.KeepCacheBytes < 0 {
			jsonError(w, http.StatusBadRequest, "keepLayerBytes and keepCacheBytes must not be negative")
			return
		}
		rep, err := s.system().Prune(r.Context(), o)
		if err != nil {
			s.log.Error("system prune", "err", err)
			jsonError(w, http.StatusInternalServerError, "prune: %v", err)
			return
		}
		s.log.Info("system prune", "freed", rep.FreedBytes, "layers", len(rep.Layers.Removed), "cacheEntries", rep.CacheEntries, "workDirs", len(rep.WorkDirs))
		writeJSON(w, rep)
	})
}

// layerCapInterval is how often the server holds the layer store to
// layers.maxBytes.
const layerCapInterval = time.Minute

// capLayers evicts unused layers and flat images, least recently used
// first, whenever they take more than layers.maxBytes, until ctx ends.
func (s *Server) capLayers(ctx context.Context) {
	max := s.cfg.Layers.MaxBytes
	t := time.NewTicker(layerCapInterval)
	defer t.Stop()
	for {
		if u, err := s.node.Usage(); err == nil && u.LayerBytes+u.FlatBytes > max {
			r, err := s.node.Prune(ctx, max)
			s.log.Info("layer store over layers.maxBytes: evicted unused layers", "removed", len(r.Removed), "bytes", r.Bytes, "kept", r.Kept, "max", max, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
