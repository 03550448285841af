package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/riffle-dev/riffle/internal/batch/logs"
	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/runtime"
)

// startScheduler builds the executor side: the node cache, the image
// sources (streamed through the index service, or pulled), runc and the
// scheduler. Without runc (not root, or not installed) script runnables
// still run and container runnables fail with an event saying why.
func (s *Server) startScheduler(cfg Config, log *slog.Logger) error {
	c, err := cache.Open(cfg.Layout().Cache(), cache.Options{MaxBytes: cfg.Cache.MaxBytes})
	if err != nil {
		return err
	}
	s.cache = c
	s.metrics.MustRegister(c.Collector())

	nopts := node.Options{
		Layout: cfg.Layout(),
		Registry: remote.Options{Insecure: cfg.InsecureRegistries, Keychain: selfKeychain{s}, Transport: s.registryTransport(),
			UnreachableAfter: cfg.Stream.unreachableAfter()},
		Cache:     c,
		Indexes:   s.indexes,
		Profiles:  s.indexes,
		Referrers: cfg.Index.Referrers,
		Logger:    log,
		Metrics:   s.metrics,
	}
	if s.other != nil {
		nopts.Indexes = node.IndexSources{*s.other, s.indexes}
		nopts.Profiles = *s.other
	}
	if cfg.Stream.NoProfiles {
		nopts.Profiles = nil
	}
	nopts.Mount.NoBackground = cfg.Stream.NoBackground
	nopts.Mount.MaxBackgroundBytes = cfg.Stream.MaxBackgroundBytes
	nopts.Mount.ProfileTime = time.Duration(cfg.Stream.ProfileSeconds) * time.Second
	nopts.Mount.ProfileBytes = cfg.Stream.ProfileBytes
	n, err := node.New(nopts)
	if err != nil {
		return err
	}
	s.node = n

	rt, err := runtime.New(runtime.Config{Root: cfg.Layout().Runtime(), Logger: log})
	if err != nil {
		log.Warn("container runnables cannot run on this node", "err", err)
		rt = nil
	}
	sched, err := scheduler.New(s.store, scheduler.Options{DataDir: cfg.DataDir, Runtime: rt, Images: n, Logger: log, Scripts: s.scriptPolicy(),
		Capacity: scheduler.Capacity{CPUMilli: cfg.Capacity.CPUMilli, MemoryMiB: cfg.Capacity.MemoryMib, Overcommit: cfg.Capacity.Overcommit}})
	if err != nil {
		return err
	}
	s.sched = sched
	return nil
}

// serveLogs serves a job's task logs as text:
//
//	GET /riffle/v1/logs/projects/P/locations/L/jobs/J[?task=N][&follow=true]
//
// Without task, every task's lines come prefixed "task N: ". With follow,
// the response streams until the job ends or the client goes away.
func (s *Server) serveLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("job")
	j, err := s.store.GetJob(r.Context(), name)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) {
			code = http.StatusNotFound
		}
		http.Error(w, fmt.Sprintf("job %s: %v", name, err), code)
		return
	}
	opts := logs.ReadOptions{Task: logs.AllTasks, Prefix: true}
	if t := r.URL.Query().Get("task"); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil || n < 0 {
			http.Error(w, fmt.Sprintf("task %q: give the task index, a number from 0", t), http.StatusBadRequest)
			return
		}
		if count := j.GetTaskGroups()[0].GetTaskCount(); n >= count {
			http.Error(w, fmt.Sprintf("task %d: job %s has tasks 0 to %d", n, name, count-1), http.StatusNotFound)
			return
		}
		opts.Task, opts.Prefix = n, false
	}
	if f := r.URL.Query().Get("follow"); f != "" {
		b, err := strconv.ParseBool(f)
		if err != nil {
			http.Error(w, fmt.Sprintf("follow %q: use true or false", f), http.StatusBadRequest)
			return
		}
		opts.Follow = b
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
	ctx, cancel := s.untilShutdown(r)
	defer cancel()
	err = s.sched.Logs().Read(ctx, name, opts, fw)
	s.cutAtShutdown(r)
	if err != nil && r.Context().Err() == nil {
		if !fw.wrote {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.log.Warn("reading logs", "job", name, "err", err)
	}
}

// flushWriter flushes after every write so followed logs arrive as lines.
type flushWriter struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	wrote bool
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.wrote = true
	n, err := f.w.Write(p)
	f.rc.Flush()
	return n, err
}
