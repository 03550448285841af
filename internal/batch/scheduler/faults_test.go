package scheduler_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// faultyRegistry is the real registry behind a handler that corrupts or
// freezes ranged reads of one layer (the data layer of its image).
type faultyRegistry struct {
	ref       string
	dataLayer string // digest of the layer with /data
	corrupt   atomic.Bool
	// freezeOnData freezes the registry at the first ranged read of the
	// data layer: from then on nothing is answered.
	freezeOnData atomic.Bool
	frozen       atomic.Bool
	// armed turns the faults on; before, the node indexes and mounts the
	// image normally.
	armed atomic.Bool
}

func newFaultyRegistry(t *testing.T) *faultyRegistry {
	t.Helper()
	testutil.RequiresBinary(t, "busybox")
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	f := &faultyRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ranged := f.armed.Load() && r.Method == http.MethodGet && r.Header.Get("Range") != "" && strings.Contains(r.URL.Path, f.dataLayer)
		if ranged && f.freezeOnData.Load() {
			f.frozen.Store(true)
		}
		if f.frozen.Load() {
			<-r.Context().Done()
			return
		}
		if ranged && f.corrupt.Load() {
			w = &flipWriter{ResponseWriter: w}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close(); reg.Close() })

	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	data := imagegen.Layer{Compression: imagegen.Uncompressed, Entries: []imagegen.Entry{{Type: imagegen.Dir, Name: "data"}}}
	for _, n := range []string{"a", "b", "c"} {
		data.Entries = append(data.Entries, imagegen.Entry{Type: imagegen.File, Name: "data/" + n + ".bin", Size: 1 << 20, Seed: uint64(n[0]), Fill: imagegen.Random})
	}
	spec.Layers = append(spec.Layers, data)
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	d, _ := layers[len(layers)-1].Digest()
	f.dataLayer = d.String()
	f.ref = strings.TrimPrefix(srv.URL, "http://") + "/test/faulty:latest"
	r, err := name.ParseReference(f.ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return f
}

// flipWriter flips a byte in the middle of the first write.
type flipWriter struct {
	http.ResponseWriter
	done bool
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if !f.done && len(p) > 0 {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 0x40
		p, f.done = q, true
	}
	return f.ResponseWriter.Write(p)
}

// faultEnv is newEnv with a node that reads only by range (no background
// layer stream), with short timeouts.
func faultEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	return newEnv(t, "", true, func(o *scheduler.Options) {
		n, err := node.New(node.Options{
			Layout:   node.Layout{Root: filepath.Join(dir, "node")},
			Registry: remote.Options{UnreachableAfter: time.Second, ProbeInterval: 200 * time.Millisecond},
			Mount:    streamfs.Options{NoBackground: true, ReadTimeout: 5 * time.Second, NoPrefetch: true},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		o.Images = n
	})
}

// runArmed runs sh in a streamed container of f's image once the
// container has started and f's faults are armed, and returns the job
// once it has failed and how long it ran after the faults were armed.
func runArmed(t *testing.T, e *env, f *faultyRegistry, id, sh string) (*batchpb.Job, time.Duration) {
	t.Helper()
	ctl := t.TempDir()
	r := container(f.ref, "sh", "-c", "until [ -e /ctl/go ]; do sleep 0.05; done; "+sh)
	r.GetContainer().EnableImageStreaming = true
	r.GetContainer().Volumes = []string{ctl + ":/ctl"}
	j := e.submit(id, newJob(1, 1, r))
	e.wait(j.Name, 2*time.Minute, func(j *batchpb.Job) bool {
		ts, _ := e.st.Tasks(context.Background(), j.Name)
		return store.Terminal(j.GetStatus().GetState()) || len(ts) == 1 && hasEvent(ts[0].GetStatus().GetStatusEvents(), "IMAGE_STREAMED", "")
	})
	if j := e.waitState(j.Name, batchpb.JobStatus_RUNNING, time.Second); j == nil {
		return nil, 0
	}
	f.armed.Store(true)
	start := time.Now()
	if err := os.WriteFile(filepath.Join(ctl, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	j = e.waitState(j.Name, batchpb.JobStatus_FAILED, 2*time.Minute)
	return j, time.Since(start)
}

// TestCorruptSpanIsNamed: a streamed task that failed because a span did
// not match its digest gets an event naming the layer and the span.
func TestCorruptSpanIsNamed(t *testing.T) {
	t.Parallel()
	f := newFaultyRegistry(t)
	f.corrupt.Store(true)
	e := faultEnv(t)
	j, _ := runArmed(t, e, f, "corrupt", "cat /data/a.bin > /dev/null")
	tevs := e.tasks(j.Name)[0].GetStatus().GetStatusEvents()
	if !hasEvent(tevs, "IMAGE_DATA_CORRUPT", "layer "+f.dataLayer+" span 0 ") || !hasEvent(tevs, "IMAGE_DATA_CORRUPT", "does not match its digest") {
		t.Errorf("no event names the corrupt layer and span:\n%s", events(tevs))
	}
	t.Logf("task events:\n%s", events(tevs))
}

// TestUnreachableRegistryFailsTask: with the registry frozen, the task
// fails in bounded time (reads after the first fail at once) and its
// events say the registry is unreachable and which image.
func TestUnreachableRegistryFailsTask(t *testing.T) {
	t.Parallel()
	f := newFaultyRegistry(t)
	f.freezeOnData.Store(true)
	e := faultEnv(t)
	sh := "for f in a b c; do cat /data/$f.bin > /dev/null && exit 0; done; exit 7"
	j, took := runArmed(t, e, f, "unreachable", sh)
	tevs := e.tasks(j.Name)[0].GetStatus().GetStatusEvents()
	t.Logf("failed after %v; task events:\n%s", took, events(tevs))
	if !hasEvent(tevs, "IMAGE_REGISTRY_UNREACHABLE", "Image "+f.ref+": its registry is unreachable") {
		t.Errorf("no event says the image's registry is unreachable:\n%s", events(tevs))
	}
	// Three files with a 5s read timeout (the kernel retries a failed
	// read once): without failing fast this takes at least 30s; with it,
	// only the first read waits.
	if took > 20*time.Second {
		t.Errorf("the task took %v to fail; reads of an unreachable registry must fail at once", took)
	}
}
