package indexsvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// Options configures a Service. Zero values are defaults.
type Options struct {
	// SpanSize is passed to index.Build (0: index.DefaultSpanSize).
	SpanSize int64
	// Workers bounds images indexed at once from the push queue (default 2).
	Workers int
	// Parallel bounds layers of one image built at once (default 3).
	Parallel int
	// Logger receives progress and failures (default: discard).
	Logger *slog.Logger
}

// Service builds, stores and serves layer indexes.
type Service struct {
	dir    string
	client *remote.Client
	opts   Options
	log    *slog.Logger
	group  singleflight.Group

	queue  chan string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	prof    profiles
	detach  detachedCache
	pack    packs
	members members

	built         prometheus.Counter
	failed        prometheus.Counter
	profilesAdded prometheus.Counter
	packsBuilt    prometheus.Counter
	packsFailed   prometheus.Counter
	packBytes     prometheus.Counter
	buildDur      prometheus.Histogram
	bytesIn       prometheus.Counter
}

// ImageResult reports the indexes of one image.
type ImageResult struct {
	Image  string        `json:"image"`
	Digest digest.Digest `json:"digest"`
	Layers []LayerResult `json:"layers"`
}

// LayerResult reports one layer's index.
type LayerResult struct {
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType"`
	Kind       string        `json:"kind"`
	IndexBytes int           `json:"indexBytes"`
	Spans      int           `json:"spans"`
	Files      int           `json:"files"`
	// NotStreamable says why the layer cannot be read lazily; empty when it can.
	NotStreamable string `json:"notStreamable,omitempty"`
	// FromTOC is set for eStargz and zstd:chunked layers, which are read
	// through their own table of contents; no index is stored for them.
	FromTOC bool `json:"fromTOC,omitempty"`
}

// New opens (creating) the index store in dir. Close stops its workers.
func New(dir string, client *remote.Client, opts Options) (*Service, error) {
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("indexsvc: %w", err)
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 3
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		dir: dir, client: client, opts: opts, log: log.With("component", "indexsvc"),
		queue: make(chan string, 256), ctx: ctx, cancel: cancel,
		built:         prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_layers_built_total", Help: "Layer indexes built."}),
		failed:        prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_build_failures_total", Help: "Layer index builds that failed."}),
		profilesAdded: prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_profiles_reported_total", Help: "Startup profiles of layers reported by nodes and merged."}),
		buildDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "riffle_index_build_seconds", Help: "Time to build one layer index.",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 10),
		}),
		bytesIn:     prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_blob_bytes_total", Help: "Layer blob bytes read to build indexes."}),
		packsBuilt:  prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_packs_built_total", Help: "Prefetch packs built (or rebuilt after a profile changed)."}),
		packsFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_pack_build_failures_total", Help: "Prefetch pack builds that failed."}),
		packBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "riffle_index_pack_bytes_total", Help: "Compressed span bytes written into prefetch packs."}),
	}
	s.pack.building = map[digest.Digest]bool{}
	s.pack.again = map[digest.Digest]string{}
	s.pack.idle = make(chan struct{})
	close(s.pack.idle)
	s.pack.slots = make(chan struct{}, opts.Parallel)
	for range opts.Workers {
		s.wg.Add(1)
		go s.worker()
	}
	return s, nil
}

// Collectors are the service's metrics, for registration on /metrics.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.built, s.failed, s.buildDur, s.bytesIn, s.profilesAdded, s.packsBuilt, s.packsFailed, s.packBytes}
}

// Close stops the workers and pack builds; queued images are dropped (they
// are indexed on demand later).
func (s *Service) Close() error {
	s.stopPacks()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Enqueue asks for ref to be indexed in the background. It never blocks: when
// the queue is full the request is dropped and logged, and the image is
// indexed on demand instead.
func (s *Service) Enqueue(ref string) {
	select {
	case s.queue <- ref:
	default:
		s.log.Warn("index queue full; image will be indexed on demand", "image", ref)
	}
}

func (s *Service) worker() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case ref := <-s.queue:
			start := time.Now()
			res, err := s.IndexImage(s.ctx, ref)
			switch {
			case errors.Is(err, errNotAnImage):
				s.log.Debug("not indexing a manifest that is not an image", "ref", ref)
			case err != nil:
				s.log.Warn("indexing a pushed image failed", "image", ref, "err", err)
			default:
				s.log.Info("image indexed", "image", ref, "layers", len(res.Layers), "took", time.Since(start).Round(time.Millisecond))
			}
		}
	}
}

var errNotAnImage = errors.New("indexsvc: the manifest is not a container image")

// IndexImage resolves ref and makes sure every layer of it has an index,
// building the missing ones from the registry.
func (s *Service) IndexImage(ctx context.Context, ref string) (*ImageResult, error) {
	img, err := s.client.Resolve(ctx, ref, nil)
	if err != nil {
		return nil, err
	}
	switch img.Manifest.Config.MediaType {
	case ocispec.MediaTypeImageConfig, "application/vnd.docker.container.image.v1+json":
	default:
		return nil, fmt.Errorf("%w (config media type %q)", errNotAnImage, img.Manifest.Config.MediaType)
	}
	res := &ImageResult{Image: ref, Digest: img.Digest, Layers: make([]LayerResult, len(img.Manifest.Layers))}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Parallel)
	for i, desc := range img.Manifest.Layers {
		g.Go(func() error {
			x, raw, err := s.layer(gctx, img, desc)
			if err != nil {
				return err
			}
			res.Layers[i] = LayerResult{
				Digest: desc.Digest, MediaType: desc.MediaType, Kind: x.Kind.String(),
				IndexBytes: len(raw), Spans: len(x.Spans), Files: len(x.Files), NotStreamable: x.NotStreamable,
				FromTOC: raw == nil,
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return res, nil
}

// layer returns the index of one layer of img, building it once. raw is nil
// for layers read through their own TOC.
func (s *Service) layer(ctx context.Context, img *remote.Image, desc ocispec.Descriptor) (*index.Index, []byte, error) {
	if x, raw, err := s.Get(desc.Digest); err == nil {
		return x, raw, nil
	} else if !errors.Is(err, streamfs.ErrNoIndex) {
		return nil, nil, err
	}
	type built struct {
		x   *index.Index
		raw []byte
	}
	v, err, _ := s.group.Do(desc.Digest.String(), func() (any, error) {
		start := time.Now()
		x, raw, err := s.build(ctx, img, desc)
		if err != nil {
			s.failed.Inc()
			return nil, err
		}
		s.built.Inc()
		s.buildDur.Observe(time.Since(start).Seconds())
		return built{x, raw}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	b := v.(built)
	return b.x, b.raw, nil
}

func (s *Service) build(ctx context.Context, img *remote.Image, desc ocispec.Descriptor) (*index.Index, []byte, error) {
	blob, err := s.client.RepositoryBlob(ctx, img.Repository, desc.Digest, desc.Size)
	if err != nil {
		return nil, nil, err
	}
	// eStargz and zstd:chunked layers carry their own TOC: read it instead
	// of the whole blob, and store nothing, since the layer is its own index.
	if x, err := index.FromTOC(blob, desc.Size, desc.Digest, desc.MediaType, index.TOCOptions{TOCDigest: tocDigest(desc)}); err == nil {
		return x, nil, nil
	} else if !errors.Is(err, index.ErrNoTOC) {
		s.log.Debug("TOC unreadable; indexing the whole layer", "layer", desc.Digest, "err", err)
	}
	rc, err := blob.Open(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	x, err := index.Build(&countingReader{r: rc, c: s.bytesIn}, desc.MediaType, index.Options{SpanSize: s.opts.SpanSize})
	if err != nil {
		return nil, nil, fmt.Errorf("indexsvc: layer %s: %w", desc.Digest, err)
	}
	if x.BlobDigest != desc.Digest {
		return nil, nil, fmt.Errorf("indexsvc: layer %s: the registry served a blob with digest %s", desc.Digest, x.BlobDigest)
	}
	return s.store(desc.Digest, x)
}

// tocDigest is the TOC digest a manifest records for an eStargz or
// zstd:chunked layer, so the TOC read from the blob can be checked.
func tocDigest(desc ocispec.Descriptor) digest.Digest {
	for _, k := range []string{"containerd.io/snapshot/stargz/toc.digest", "io.github.containers.zstd-chunked.manifest-checksum"} {
		if d, err := digest.Parse(desc.Annotations[k]); err == nil {
			return d
		}
	}
	return ""
}

func (s *Service) store(d digest.Digest, x *index.Index) (*index.Index, []byte, error) {
	raw, err := x.MarshalBinary()
	if err != nil {
		return nil, nil, err
	}
	p, err := s.path(d)
	if err != nil {
		return nil, nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return nil, nil, fmt.Errorf("indexsvc: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return nil, nil, fmt.Errorf("indexsvc: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, nil, fmt.Errorf("indexsvc: %w", err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return nil, nil, fmt.Errorf("indexsvc: %w", err)
	}
	s.detach.forget(d)
	return x, raw, nil
}

// Get returns the stored index of layer d, or an error wrapping
// streamfs.ErrNoIndex.
func (s *Service) Get(d digest.Digest) (*index.Index, []byte, error) {
	p, err := s.path(d)
	if err != nil {
		return nil, nil, err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("indexsvc: layer %s: %w", d, streamfs.ErrNoIndex)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("indexsvc: %w", err)
	}
	x, err := index.Unmarshal(raw)
	if errors.Is(err, index.ErrVersion) {
		// Written by another release: built again on the next LayerIndex.
		return nil, nil, fmt.Errorf("indexsvc: layer %s: %w (%w)", d, streamfs.ErrNoIndex, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("indexsvc: stored index of %s: %w", d, err)
	}
	return x, raw, nil
}

// LayerIndex implements streamfs.IndexSource from the local store, building
// a missing index from the layer's repository.
func (s *Service) LayerIndex(ctx context.Context, repo string, desc ocispec.Descriptor) (*index.Index, error) {
	if x, _, err := s.Get(desc.Digest); err == nil || !errors.Is(err, streamfs.ErrNoIndex) {
		return x, err
	}
	r, err := s.client.ParseRepository(repo)
	if err != nil {
		return nil, err
	}
	x, _, err := s.layer(ctx, &remote.Image{Repository: r}, desc)
	return x, err
}

var _ streamfs.IndexSource = (*Service)(nil)

func (s *Service) path(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("indexsvc: %q is not a sha256 layer digest", d)
	}
	return filepath.Join(s.dir, "sha256", d.Encoded()+".idx"), nil
}

type countingReader struct {
	r interface{ Read([]byte) (int, error) }
	c prometheus.Counter
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.c.Add(float64(n))
	return n, err
}
