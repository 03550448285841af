package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers the "filesystem" driver
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// DefaultMaxBlobBytes is the largest blob upload accepted by default.
const DefaultMaxBlobBytes = 32 << 30

// Options configures a Registry. The zero value of every field but RootDir
// is a working default.
type Options struct {
	// RootDir holds the registry's storage. Required.
	RootDir string

	// MaxBlobBytes caps a single blob upload (default DefaultMaxBlobBytes).
	MaxBlobBytes int64

	// OnPush, if set, is called after every successful manifest PUT, once the
	// response has been written. It runs on the request's goroutine and should
	// hand long work elsewhere.
	OnPush func(Event)

	// Logger receives distribution's logs (its per-request lines at Debug
	// level). Nil discards them.
	Logger *slog.Logger

	// Configure, if set, may adjust distribution's configuration before the
	// registry starts (auth, validation, ...). It is for tests and for
	// advanced configuration; the defaults need none.
	Configure func(*configuration.Configuration)
}

// Event describes a pushed manifest.
type Event struct {
	// Repository is the image name without the host, e.g. "proj/repo/img".
	Repository string
	// Reference is the tag or digest the manifest was pushed by.
	Reference string
	// Digest is the manifest's digest.
	Digest digest.Digest
	// MediaType is the manifest's media type as the client sent it.
	MediaType string
}

// Registry is an embedded OCI registry. It is an http.Handler for the
// /v2/ API.
type Registry struct {
	app  *handlers.App
	opts Options
	once sync.Once
}

// New starts a registry storing its data under opts.RootDir.
func New(ctx context.Context, opts Options) (r *Registry, err error) {
	if opts.RootDir == "" {
		return nil, errors.New("registry: RootDir is required")
	}
	if opts.MaxBlobBytes <= 0 {
		opts.MaxBlobBytes = DefaultMaxBlobBytes
	}
	if err := os.MkdirAll(opts.RootDir, 0o700); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	secret, err := loadSecret(filepath.Join(opts.RootDir, "http-secret"))
	if err != nil {
		return nil, err
	}
	configureLogging(opts.Logger)

	cfg := &configuration.Configuration{
		Version: configuration.CurrentVersion,
		Storage: configuration.Storage{
			"filesystem":  configuration.Parameters{"rootdirectory": filepath.Join(opts.RootDir, "storage")},
			"delete":      configuration.Parameters{"enabled": true},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
	}
	cfg.HTTP.Secret = secret
	if opts.Configure != nil {
		opts.Configure(cfg)
	}

	// NewApp panics on bad configuration; turn that into an error.
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("registry: starting distribution: %v", p)
		}
	}()
	app := handlers.NewApp(ctx, cfg)
	return &Registry{app: app, opts: opts}, nil
}

// Close stops the registry's background work.
func (r *Registry) Close() error {
	var err error
	r.once.Do(func() { err = r.app.Shutdown() })
	return err
}

// ServeHTTP serves the OCI distribution API.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if isBlobUpload(req) {
		if !r.admitUpload(w, req) {
			return
		}
		req.Body = http.MaxBytesReader(w, req.Body, r.opts.MaxBlobBytes)
	}
	if r.opts.OnPush == nil || req.Method != http.MethodPut || !strings.Contains(req.URL.Path, "/manifests/") {
		r.app.ServeHTTP(w, req)
		return
	}
	rec := &statusRecorder{ResponseWriter: w}
	r.app.ServeHTTP(rec, req)
	if rec.status != http.StatusCreated {
		return
	}
	repo, ref, ok := splitManifestPath(req.URL.Path)
	if !ok {
		return
	}
	d, _ := digest.Parse(rec.Header().Get("Docker-Content-Digest"))
	r.opts.OnPush(Event{
		Repository: repo,
		Reference:  ref,
		Digest:     d,
		MediaType:  req.Header.Get("Content-Type"),
	})
}

// admitUpload refuses uploads that announce a size past the limit, before any
// byte is read. Streams of unknown size are cut by MaxBytesReader instead.
func (r *Registry) admitUpload(w http.ResponseWriter, req *http.Request) bool {
	size := req.ContentLength
	if cr := req.Header.Get("Content-Range"); cr != "" {
		// Distribution's chunk ranges are "start-end", inclusive.
		if _, end, ok := strings.Cut(cr, "-"); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(end), 10, 64); err == nil && n+1 > size {
				size = n + 1
			}
		}
	}
	if size <= r.opts.MaxBlobBytes {
		return true
	}
	writeError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID",
		fmt.Sprintf("blob upload of %d bytes exceeds this registry's limit of %d bytes (registry.maxBlobBytes in the config file)", size, r.opts.MaxBlobBytes))
	return false
}

func isBlobUpload(req *http.Request) bool {
	return (req.Method == http.MethodPatch || req.Method == http.MethodPut || req.Method == http.MethodPost) &&
		strings.Contains(req.URL.Path, "/blobs/uploads/")
}

// splitManifestPath splits /v2/NAME/manifests/REF.
func splitManifestPath(p string) (repo, ref string, ok bool) {
	p = strings.TrimPrefix(p, "/v2/")
	i := strings.LastIndex(p, "/manifests/")
	if i <= 0 {
		return "", "", false
	}
	return p[:i], p[i+len("/manifests/"):], true
}

// writeError writes an error in the distribution API's envelope.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`+"\n", code, msg)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// loadSecret returns the registry's HTTP secret, creating it on first use.
// A stable secret keeps upload sessions valid across restarts.
func loadSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("registry: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("registry: %w", err)
	}
	s := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		return "", fmt.Errorf("registry: %w", err)
	}
	return s, nil
}

var logOnce sync.Once

// configureLogging sends logrus (distribution's logger) to slog.
func configureLogging(l *slog.Logger) {
	logOnce.Do(func() {
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.InfoLevel)
		if l != nil {
			logrus.AddHook(&slogHook{l: l.With("component", "registry")})
		}
	})
}

type slogHook struct{ l *slog.Logger }

func (h *slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *slogHook) Fire(e *logrus.Entry) error {
	// Distribution logs every request at Info; that is debug detail for us.
	lvl := slog.LevelDebug
	switch {
	case e.Level <= logrus.ErrorLevel:
		lvl = slog.LevelError
	case e.Level == logrus.WarnLevel:
		lvl = slog.LevelWarn
	}
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.l.Log(context.Background(), lvl, e.Message, attrs...)
	return nil
}
