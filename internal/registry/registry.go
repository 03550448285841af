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
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers the "filesystem" driver
	"github.com/distribution/reference"
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
	// blobRoot, when set, is distribution's storage root, and blob reads
	// are served from it directly (see serveBlob).
	blobRoot string
	// writes lets GC run between pushes (gc.go).
	writes writes
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
	// The YAML loader defaults catalog.maxentries to 1000; a Configuration
	// built in code must set it, or /v2/_catalog is always empty.
	cfg.Catalog.MaxEntries = 1000
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
	r = &Registry{app: app, opts: opts}
	if len(cfg.Auth) == 0 {
		r.blobRoot = filepath.Join(opts.RootDir, "storage", "docker", "registry", "v2")
	}
	return r, nil
}

// Close stops the registry's background work.
func (r *Registry) Close() error {
	var err error
	r.once.Do(func() { err = r.app.Shutdown() })
	return err
}

// ServeHTTP serves the OCI distribution API.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if r.blobRoot != "" && (req.Method == http.MethodGet || req.Method == http.MethodHead) && r.serveBlob(w, req) {
		return
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		r.writes.begin()
		defer r.writes.end()
	}
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

// serveBlob serves a blob GET or HEAD straight from the filesystem driver's
// files, when the blob is linked into the repository as distribution
// requires. Distribution itself reads every blob request through a 4 MiB
// buffer, which costs about 8 ms per small ranged read; streaming makes many
// such reads. It reports false to let distribution answer anything else
// (missing blobs, odd paths), so errors keep distribution's format.
func (r *Registry) serveBlob(w http.ResponseWriter, req *http.Request) bool {
	p := strings.TrimPrefix(req.URL.Path, "/v2/")
	i := strings.LastIndex(p, "/blobs/")
	if i <= 0 || p == req.URL.Path {
		return false
	}
	repo, ds := p[:i], p[i+len("/blobs/"):]
	d, err := digest.Parse(ds)
	if err != nil || d.Algorithm() != digest.SHA256 || !reference.NameRegexp.MatchString(repo) || len(repo) > 255 {
		return false
	}
	for _, part := range strings.Split(repo, "/") {
		if part == "." || part == ".." || part == "_uploads" || strings.HasPrefix(part, "_") {
			return false
		}
	}
	link, err := os.ReadFile(filepath.Join(r.blobRoot, "repositories", filepath.FromSlash(repo), "_layers", "sha256", d.Encoded(), "link"))
	if err != nil || strings.TrimSpace(string(link)) != d.String() {
		return false
	}
	f, err := os.Open(filepath.Join(r.blobRoot, "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data"))
	if err != nil {
		return false
	}
	defer f.Close()
	h := w.Header()
	h.Set("Docker-Distribution-API-Version", "registry/2.0")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000")
	// ServeContent answers Range requests with 206 and Content-Range.
	http.ServeContent(w, req, "", time.Time{}, f)
	return true
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
	case clientError(e):
		// A 4xx answer is the client's business and usually no error at
		// all: every push asks HEAD for each blob and the tag first, and
		// distribution logs each 404 as ERROR.
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

// clientError reports whether e is distribution's line for a request it
// answered with a 4xx status.
func clientError(e *logrus.Entry) bool {
	code, ok := e.Data["http.response.status"].(int)
	return ok && code >= 400 && code < 500
}
