package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/console"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// Server is a running `riffle serve`: every component and the HTTP handler
// that routes to them.
type Server struct {
	cfg      Config
	log      *slog.Logger
	metrics  *prometheus.Registry
	registry *registry.Registry
	store    *store.Store
	batch    *api.Server
	grpc     *grpc.Server
	sched    *scheduler.Scheduler
	node     *node.Node
	cache    *cache.Cache
	client   *remote.Client
	indexes  *indexsvc.Service
	other    *indexsvc.HTTPSource // another server's index service (index.service), if configured
	addr     atomic.Value         // string: the address Serve listens on
	mux      *http.ServeMux
	handler  http.Handler
	lock     *dataDirLock
	stopCaps context.CancelFunc // ends capLayers (system.go)
	capsDone chan struct{}
	cli      cliMounts // riffle mount's mounts (mounts.go)

	tokens    *auth.Store            // access control (auth.go)
	selfToken string                 // the server's own token for its registry; never stored
	refusals  *prometheus.CounterVec // riffle_auth_refused_total
	outbound  *outbound              // where job-named registries may be
	stopping  stopping               // ends long requests at shutdown (shutdown.go)
}

// New builds every component from cfg (defaults filled in) under its data
// directory. Close releases them.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Files the config names are read before anything is written: a bad
	// one leaves no data directory or admin token behind.
	var other *indexsvc.HTTPSource
	if cfg.Index.Service != "" {
		o, err := otherIndexService(cfg.Index)
		if err != nil {
			return nil, err
		}
		other = &o
	}
	// Every path below it is the real one: runc refuses a container root
	// under a symbolic link.
	layout, err := node.Layout{Root: cfg.DataDir}.Create(0o700)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	cfg.DataDir = layout.Root
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, metrics: prometheus.NewRegistry(), mux: http.NewServeMux(), lock: lock, stopping: newStopping(), other: other}
	s.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := s.openAuth(); err != nil {
		s.Close()
		return nil, err
	}
	s.outbound = newOutbound(cfg.Outbound.AllowRegistries)
	s.client = remote.New(remote.Options{Insecure: cfg.InsecureRegistries, Keychain: selfKeychain{s}, Transport: s.registryTransport()})
	idx, err := indexsvc.New(cfg.Layout().Indexes(), s.client, indexsvc.Options{Logger: log})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.indexes = idx
	s.metrics.MustRegister(idx.Collectors()...)
	s.mux.Handle("/index/", idx.Handler())

	reg, err := registry.New(ctx, registry.Options{
		RootDir:      cfg.Layout().Registry(),
		MaxBlobBytes: cfg.Registry.MaxBlobBytes,
		Logger:       log,
		OnPush:       s.onPush,
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.registry = reg

	s.mux.Handle("/v2/", reg)

	st, err := store.Open(cfg.DataDir, store.Options{})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.store = st
	if err := s.startScheduler(cfg, log); err != nil {
		s.Close()
		return nil, err
	}
	b, err := api.New(st, s.sched, api.Options{Locations: []string{cfg.Location}, Logger: log, Admit: s.admitImages})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.batch = b
	// Recovery (leftover containers, tasks left running) happens here,
	// before any request is served.
	if err := s.sched.Start(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.mux.Handle("GET /riffle/v1/logs/{job...}", http.HandlerFunc(s.serveLogs))
	s.mux.Handle("GET /riffle/v1/arrival/{job...}", http.HandlerFunc(s.serveArrival))
	s.mux.Handle("/v1/", b.HTTPHandler())
	s.grpc = grpc.NewServer(append(b.GRPCServerOptions(), s.grpcAuthOptions()...)...)
	b.RegisterGRPC(s.grpc)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{Registry: s.metrics}))
	s.registerTokenAPI()
	s.registerSystemAPI()
	s.registerMountAPI()
	cctx, stop := context.WithCancel(context.Background())
	s.stopCaps, s.capsDone = stop, make(chan struct{})
	go func() { defer close(s.capsDone); s.capLayers(cctx) }()
	s.mux.Handle("GET /{$}", console.Handler()) // the web console; its assets under /console/
	s.mux.Handle("GET /console/", console.Handler())
	s.handler = instrument(s.metrics, grpcOrHTTP(s.grpc, s.guard(s.mux)))
	return s, nil
}

// onPush queues every image pushed to the embedded registry for indexing,
// so it can stream by the time a job asks for it.
func (s *Server) onPush(e registry.Event) {
	s.log.Info("image pushed", "repository", e.Repository, "reference", e.Reference, "digest", e.Digest)
	addr, _ := s.addr.Load().(string)
	if addr == "" || e.Digest == "" {
		return
	}
	s.indexes.Enqueue(addr + "/" + e.Repository + "@" + e.Digest.String())
}

// Indexes is the index service.
func (s *Server) Indexes() *indexsvc.Service { return s.indexes }

// Config returns the configuration the server runs with, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Mux lets later components (Batch API, index service) add routes.
func (s *Server) Mux() *http.ServeMux { return s.mux }

// Metrics is the Prometheus registry served on /metrics.
func (s *Server) Metrics() *prometheus.Registry { return s.metrics }

// Close releases every component.
func (s *Server) Close() error {
	s.stopping.stop()
	var errs []error
	if s.grpc != nil {
		s.grpc.Stop()
	}
	// The scheduler stops tasks before the images under them go away, and
	// both before the store closes.
	if s.sched != nil {
		errs = append(errs, s.sched.Close())
	}
	// After the scheduler: a prune waits for pulls, which end with it.
	if s.stopCaps != nil {
		s.stopCaps()
		<-s.capsDone
	}
	if s.node != nil {
		s.closeCLIMounts()
		errs = append(errs, s.node.Close())
	}
	if s.cache != nil {
		errs = append(errs, s.cache.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	if s.indexes != nil {
		errs = append(errs, s.indexes.Close())
	}
	if s.registry != nil {
		errs = append(errs, s.registry.Close())
	}
	if s.tokens != nil {
		errs = append(errs, s.tokens.Close())
	}
	// Last: another server may take the directory once this returns.
	errs = append(errs, s.lock.Close())
	return errors.Join(errs...)
}

// grpcOrHTTP sends gRPC requests (HTTP/2 with a grpc content type) to g and
// everything else to h, so the Batch API's two transports share one port.
func grpcOrHTTP(g *grpc.Server, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			g.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Listen opens the configured address, as the package's Listen does.
func (s *Server) Listen() (net.Listener, error) { return listen(s.cfg, false) }

// Listen opens cfg's address (DefaultListen when none is) without building
// a server: `riffle serve` calls it before New, so that a server that
// cannot listen leaves no data directory behind. It never falls back to
// another port: clients were told the address, and a server elsewhere
// would be a silent surprise. When another riffle serve holds cfg's data
// directory, the error says so.
func Listen(cfg Config) (net.Listener, error) { return listen(cfg, true) }

// listen opens cfg's address; checkDir looks for another server on the data
// directory when the address is taken (a Server holds its own directory).
func listen(cfg Config, checkDir bool) (net.Listener, error) {
	cfg = cfg.WithDefaults()
	addr, key := cfg.Listen, "--listen or the listen key"
	if addr == "" {
		addr = DefaultListen
	}
	if err := cfg.checkListen(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if checkDir {
		if inUse := checkDataDir(cfg.DataDir); inUse != nil {
			return nil, inUse
		}
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("server: listen %s: the address is already in use by another process; choose another with %s (127.0.0.1:0 picks a free port)", addr, key)
	}
	return nil, fmt.Errorf("server: listen %s: %w (choose another address with %s)", addr, err, key)
}

// Serve serves on ln until ctx is done, then shuts down gracefully: it stops
// accepting, lets requests in flight finish for up to grace, and closes.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	// Before serve.addr, so a CLI that finds the address finds the
	// certificate too (tls.go).
	tlsConf, err := s.serveTLS()
	if err != nil {
		return err
	}
	if tlsConf != nil {
		defer os.Remove(CertFile(s.cfg.DataDir))
	}
	s.addr.Store(ln.Addr().String())
	addrFile := AddrFile(s.cfg.DataDir)
	if err := os.WriteFile(addrFile, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	defer os.Remove(addrFile)

	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	hs.RegisterOnShutdown(s.stopping.stop)
	// gRPC clients speak HTTP/2 without TLS ("prior knowledge"); REST clients
	// speak HTTP/1.1. Serving both lets one port carry both transports.
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	if tlsConf != nil {
		hs.Protocols.SetHTTP2(true)
		hs.TLSConfig = tlsConf
		ln = tls.NewListener(ln, tlsConf)
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("riffle serving", "addr", ln.Addr().String(), "dataDir", s.cfg.DataDir, "location", s.cfg.Location)

	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		s.log.Warn("requests still running at shutdown were cut", "err", err)
		hs.Close()
	}
	return nil
}

// AddrFile is where a running server records its address in dataDir.
func AddrFile(dataDir string) string { return filepath.Join(dataDir, "serve.addr") }

// ReadAddr returns the address of the server running on dataDir, if any.
func ReadAddr(dataDir string) (string, error) {
	b, err := os.ReadFile(AddrFile(dataDir))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// instrument counts requests and their latency per API group.
func instrument(reg prometheus.Registerer, next http.Handler) http.Handler {
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "riffle_http_requests_total",
		Help: "HTTP requests served, by API group, method and status code.",
	}, []string{"api", "method", "code"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "riffle_http_request_duration_seconds",
		Help:    "HTTP request latency by API group.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
	}, []string{"api"})
	reg.MustRegister(reqs, dur)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api := apiGroup(r.URL.Path)
		start := time.Now()
		rec := &codeRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		reqs.WithLabelValues(api, r.Method, fmt.Sprint(rec.code)).Inc()
		dur.WithLabelValues(api).Observe(time.Since(start).Seconds())
	})
}

func apiGroup(path string) string {
	switch {
	case strings.HasPrefix(path, "/v2/"):
		return "registry"
	case strings.HasPrefix(path, "/v1/"):
		return "batch"
	case strings.HasPrefix(path, "/index/"):
		return "index"
	default:
		return "other"
	}
}

type codeRecorder struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (c *codeRecorder) WriteHeader(code int) {
	if !c.wroteHeader {
		c.code, c.wroteHeader = code, true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeRecorder) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Flush keeps streaming responses (log follow, blob downloads) flowing.
func (c *codeRecorder) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
