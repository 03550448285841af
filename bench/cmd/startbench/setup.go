package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// setupState is what the untimed setup made, shared by every link.
type setupState struct {
	dir               string // scratch
	bin               string // riffle binary
	runHelp           string // `riffle run --help`, "" when the binary has no run
	containerdVersion string
	regAddr           string // the registry on loopback, without the link
	repo              string // bench/images/KIND
	digest            string // the image's manifest digest
	indexDir          string // the index service's store (DIR/sha256/HEX.idx)
	layers            int
	compressed        int64
	uncompressed      int64
	indexBytes        int64
	detachedBytes     int64 // the indexes as nodes fetch them (detached, gzipped)
	srv               *http.Server
	svc               *indexsvc.Service
}

func setup(ctx context.Context, f flags, dir string) (*setupState, error) {
	s := &setupState{dir: dir, repo: "bench/images/" + f.imageKind}
	if _, err := exec.LookPath("containerd"); err != nil && strings.ContainsAny(f.cases, "aw") {
		return nil, fmt.Errorf("startbench: cases a and w need Debian's containerd (apt-get install containerd, or scripts/setup.sh): %w", err)
	}
	s.containerdVersion = output("containerd", "--version")
	img, err := buildImage(ctx, f.imageKind, f.fixtures)
	if err != nil {
		return nil, err
	}
	s.bin = f.riffleBin
	if s.bin == "" {
		s.bin = filepath.Join(dir, "riffle")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", s.bin, "./cmd/riffle").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("startbench: go build ./cmd/riffle: %w\n%s", err, out)
		}
	}
	if out, err := exec.Command(s.bin, "run", "--help").CombinedOutput(); err == nil && strings.Contains(string(out), "run") {
		s.runHelp = string(out)
	}
	if f.riffleRun && s.runHelp == "" {
		return nil, fmt.Errorf("startbench: --riffle-run: %s has no `run` command; build it from a tree that has it, or leave the flag off", s.bin)
	}
	if err := s.startRegistry(ctx, f.spanSize); err != nil {
		return nil, err
	}
	direct := s.regAddr + "/" + s.repo + ":v1"
	if err := remote.New(remote.Options{}).Push(ctx, direct, img, nil); err != nil {
		return nil, err
	}
	res, err := s.svc.IndexImage(ctx, direct)
	if err != nil {
		return nil, err
	}
	for _, l := range res.Layers {
		s.indexBytes += int64(l.IndexBytes)
		// What a node reads before the first file: the index detached,
		// as the service sends it (gzipped).
		req := httptest.NewRequest(http.MethodGet, "/index/v1/layers/"+l.Digest.String()+"?windows=detached", nil)
		req.Header.Set("Accept-Encoding", "gzip")
		rec := httptest.NewRecorder()
		s.svc.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			return nil, fmt.Errorf("startbench: detached index of %s: %d %s", l.Digest, rec.Code, rec.Body.String())
		}
		s.detachedBytes += int64(rec.Body.Len())
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	s.digest = d.String()
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	s.layers = len(layers)
	for _, l := range layers {
		n, _ := l.Size()
		s.compressed += n
		if u, err := uncompressedSize(l); err == nil {
			s.uncompressed += u
		}
	}
	return s, nil
}

// uncompressedSize counts a layer's tar bytes (for the report only).
func uncompressedSize(l v1.Layer) (int64, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	var n int64
	buf := make([]byte, 1<<20)
	for {
		k, err := rc.Read(buf)
		n += int64(k)
		if err != nil {
			return n, nil
		}
	}
}

func (s *setupState) close() {
	if s.srv != nil {
		s.srv.Close()
	}
	if s.svc != nil {
		s.svc.Close()
	}
}

func buildImage(ctx context.Context, kind, cacheDir string) (v1.Image, error) {
	switch kind {
	case "debian-python":
		return imagegen.Debian(ctx, imagegen.DebianOptions{CacheDir: cacheDir,
			Include: []string{"python3-numpy", "python3-scipy", "python3-pandas"}})
	case "debian":
		return imagegen.DebianImage(ctx, cacheDir)
	case "busybox":
		spec, err := imagegen.Busybox("/bin/busybox")
		if err != nil {
			return nil, err
		}
		return imagegen.Build(spec)
	}
	return nil, fmt.Errorf("startbench: --image %q: use debian-python, debian or busybox", kind)
}

// startRegistry serves the registry and the index service on loopback; the
// cases reach both only through the link.
func (s *setupState) startRegistry(ctx context.Context, spanSize int64) error {
	reg, err := registry.New(ctx, registry.Options{RootDir: filepath.Join(s.dir, "registry")})
	if err != nil {
		return err
	}
	s.indexDir = filepath.Join(s.dir, "indexes")
	s.svc, err = indexsvc.New(s.indexDir, remote.New(remote.Options{}), indexsvc.Options{SpanSize: spanSize})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	mux.Handle("/index/", s.svc.Handler())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.regAddr = ln.Addr().String()
	s.srv = &http.Server{Handler: mux}
	go s.srv.Serve(ln)
	return nil
}

// workload is a command run in the container.
type workload struct {
	Name string
	Cmd  string // a shell command line
	// FirstLine: the time is to the first line of output that is Expect,
	// not to exit.
	FirstLine bool
	Expect    string
}

// selectWorkloads returns the named workloads, in the commands the image
// has (busybox links few applets).
func selectWorkloads(names, kind string) ([]workload, error) {
	readAll := "find / -xdev -type f -exec cat {} + > /dev/null"
	if kind == "busybox" {
		readAll = "busybox find / -xdev -type f -exec cat {} + > /dev/null"
	}
	all := map[string]workload{
		"echo":    {Name: "echo", Cmd: "echo hello", FirstLine: true, Expect: "hello"},
		"python":  {Name: "python", Cmd: `python3 -c "import numpy, scipy, pandas"`},
		"readall": {Name: "readall", Cmd: readAll},
	}
	var out []workload
	for _, n := range strings.Split(names, ",") {
		w, ok := all[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("startbench: --workloads: %q is not one of echo, python, readall", n)
		}
		if w.Name == "python" && kind != "debian-python" {
			fmt.Fprintf(os.Stderr, "startbench: skipping the python workload: --image %s has no numpy\n", kind)
			continue
		}
		out = append(out, w)
	}
	return out, nil
}
