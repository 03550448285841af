package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/opencontainers/go-digest"
	"google.golang.org/api/option"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// bearer sends tok to the index service, as the CLI's client does.
type bearer string

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(b))
	return http.DefaultTransport.RoundTrip(r)
}

// TestProjectNodeReadsWindowsOfItsRepository: a node whose token is
// viewer in one project streams an image of that project through the
// server's index service, fetching the windows of its detached indexes
// by naming the repository; a viewer of another project, or a repository
// without the layer, gets none.
func TestProjectNodeReadsWindowsOfItsRepository(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx, srv, addr := startServerWith(t, server.Config{})
	admin := adminToken(t, srv)
	viewerP := viewerToken(t, addr, admin, "viewer-p", "p")
	viewerQ := viewerToken(t, addr, admin, "viewer-q", "q")
	ref := addr + "/p/r/big:v1"
	data, layer := pushIndexedBig(t, ctx, addr, admin, ref)
	small, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "small", Data: []byte("small")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := registryClient(admin).Push(ctx, addr+"/p/r/small:v1", small, nil); err != nil {
		t.Fatal(err)
	}

	streamBig(t, ctx, t.TempDir(), addr, viewerP, ref, node.Auth{Username: "viewer-p", Password: viewerP}, data)

	for _, c := range []struct {
		src  indexsvc.HTTPSource
		repo string
		want string
	}{
		{indexsvc.HTTPSource{BaseURL: "http://" + addr, Client: &http.Client{Transport: bearer(viewerQ)}}, addr + "/p/r/big", "403"},
		{indexsvc.HTTPSource{BaseURL: "http://" + addr, Client: &http.Client{Transport: bearer(viewerP)}}, "", "403"},
		{indexsvc.HTTPSource{BaseURL: "http://" + addr, Client: &http.Client{Transport: bearer(viewerP)}}, addr + "/p/r/small", "404"},
	} {
		_, err := c.src.Window(ctx, c.repo, layer, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("window of repository %q: %v, want %s", c.repo, err, c.want)
		}
	}
}

// call makes a JSON request to the server with tok and decodes the
// answer into out (if not nil).
func call(t *testing.T, method, url, tok string, body, out any) *http.Response {
	t.Helper()
	resp := request(t, context.Background(), method, url, tok, body)
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp
}

// TestNodeWithoutWindowsBuildsIndex: a node whose index-service token may
// not read a layer's windows (viewer in p, the image in q) learns so from
// the detached index (indexsvc.HeaderLayerData) and builds the index
// itself from the registry, which it may read, instead of failing every
// read that needs a window with EIO.
func TestNodeWithoutWindowsBuildsIndex(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx, srv, addr := startServerWith(t, server.Config{})
	admin := adminToken(t, srv)
	viewerP := viewerToken(t, addr, admin, "viewer-p", "p")
	ref := addr + "/q/r/big:v1"
	data, layer := pushIndexedBig(t, ctx, addr, admin, ref)
	pushIndexedBig(t, ctx, addr, admin, addr+"/p/r/big:v1")
	for _, c := range []struct{ tok, repo, want string }{
		{viewerP, addr + "/q/r/big", indexsvc.LayerDataDenied},
		{viewerP, addr + "/p/r/big", indexsvc.LayerDataAllowed},
		// Viewer in p, but p/r/none does not hold the layer: its windows
		// would be refused (404).
		{viewerP, addr + "/p/r/none", indexsvc.LayerDataDenied},
		{viewerP, "", indexsvc.LayerDataDenied},
		{admin, addr + "/q/r/big", indexsvc.LayerDataAllowed},
		{admin, "", indexsvc.LayerDataAllowed},
	} {
		resp := request(t, ctx, http.MethodGet, "http://"+addr+"/index/v1/layers/"+layer.String()+"?windows=detached&repository="+c.repo, c.tok, nil)
		resp.Body.Close()
		if got := resp.Header.Get(indexsvc.HeaderLayerData); resp.StatusCode != http.StatusOK || got != c.want {
			t.Errorf("detached index for %q: %s, %s %q; want 200 and %q", c.repo, resp.Status, indexsvc.HeaderLayerData, got, c.want)
		}
	}

	// The node reads the registry as admin, the index service as viewer-p.
	streamBig(t, ctx, t.TempDir(), addr, viewerP, ref, node.Auth{Username: "admin", Password: admin}, data)
}

// TestSharedLayerWindowsPerRepository: a node that may read windows in p
// keeps the detached index of a layer it streamed from p; streaming an
// image of q with the same layer must not use that index (its windows
// from q are denied) but find another (here: build it).
func TestSharedLayerWindowsPerRepository(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx, srv, addr := startServerWith(t, server.Config{})
	admin := adminToken(t, srv)
	viewerP := viewerToken(t, addr, admin, "viewer-p", "p")
	data, layer := pushIndexedBig(t, ctx, addr, admin, addr+"/p/r/big:v1")
	// q's image: the same layer and one more, so it is another image.
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{
		{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "big", Data: data}}},
		{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "small", Data: []byte("q")}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := img.Layers(); err != nil {
		t.Fatal(err)
	} else if d, _ := l[0].Digest(); d.String() != layer.String() {
		t.Fatalf("q's first layer is %s, want %s", d, layer)
	}
	refQ := addr + "/q/r/big:v1"
	if err := registryClient(admin).Push(ctx, refQ, img, nil); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	a := node.Auth{Username: "admin", Password: admin}
	// Mount p's image: its detached index is cached; nothing is read, so
	// q's reads below need windows.
	n := indexNode(t, root, addr, viewerP)
	if rfs, err := n.Stream(ctx, addr+"/p/r/big:v1", a); err != nil || rfs.Method != node.MethodStreamed {
		t.Fatalf("streaming p's image: %v", err)
	}
	n.Close()
	streamBig(t, ctx, root, addr, viewerP, refQ, a, data)
}

// viewerToken creates a token named name with the viewer role in project.
func viewerToken(t *testing.T, addr, admin, name, project string) string {
	t.Helper()
	var out struct {
		Secret string `json:"secret"`
	}
	resp := call(t, http.MethodPost, "http://"+addr+"/riffle/v1/auth/tokens", admin,
		map[string]any{"name": name, "bindings": []auth.Binding{{Project: project, Role: auth.RoleViewer}}}, &out)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("creating token %s: %s", name, resp.Status)
	}
	return out.Secret
}

// pushIndexedBig pushes to ref an image of one file, big: three spans of
// gzip data, of which spans 1 and 2 need their windows. The server
// indexes it. It returns the file's data and the layer's digest.
func pushIndexedBig(t *testing.T, ctx context.Context, addr, admin, ref string) ([]byte, digest.Digest) {
	t.Helper()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "big", Data: data}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := registryClient(admin).Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	if resp := call(t, http.MethodPost, "http://"+addr+"/index/v1/images", admin, map[string]any{"image": ref}, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("indexing %s: %s", ref, resp.Status)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	h, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return data, digest.Digest(h.String())
}

// indexNode is a node on data directory root that takes indexes from
// the index service at addr with token tok, with no background streams.
func indexNode(t *testing.T, root, addr, tok string) *node.Node {
	t.Helper()
	n, err := node.New(node.Options{
		Layout:  node.Layout{Root: root},
		Indexes: indexsvc.HTTPSource{BaseURL: "http://" + addr, Client: &http.Client{Transport: bearer(tok)}},
		Mount:   streamfs.Options{NoBackground: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// streamBig streams ref (from pushIndexedBig) on a new node on data
// directory root that takes indexes from the server's index service with
// token tok and reads the registry with a, and checks big reads back as
// data. Every read is by range, so spans after the first need their
// windows.
func streamBig(t *testing.T, ctx context.Context, root, addr, tok, ref string, a node.Auth, data []byte) {
	t.Helper()
	n := indexNode(t, root, addr, tok)
	defer n.Close()
	rfs, err := n.Stream(ctx, ref, a)
	if err != nil {
		t.Fatal(err)
	}
	if rfs.Method != node.MethodStreamed {
		t.Fatalf("image arrived %s, want streamed", rfs.Method)
	}
	got, err := os.ReadFile(filepath.Join(rfs.Lower[0], "big"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the streamed file differs from the pushed one")
	}
}

// TestNodeUsesAnotherServersIndexService: a riffle serve configured with
// index.service and index.tokenFile streams an image of the other server
// with that server's indexes (building none itself) and reports the
// startup profile there.
func TestNodeUsesAnotherServersIndexService(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	testutil.RequiresBinary(t, "fusermount3")
	ctx, srvB, addrB := startServerWith(t, server.Config{})
	adminB := adminToken(t, srvB)
	var node struct {
		Secret string `json:"secret"`
	}
	if resp := call(t, http.MethodPost, "http://"+addrB+"/riffle/v1/auth/tokens", adminB,
		map[string]any{"name": "node-a", "bindings": []auth.Binding{{Project: "*", Role: auth.RoleEditor}}}, &node); resp.StatusCode != http.StatusOK {
		t.Fatalf("creating the node's token: %s", resp.Status)
	}
	tokenFile := filepath.Join(t.TempDir(), "index.token")
	if err := os.WriteFile(tokenFile, []byte(node.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The node pulls from B's registry with the same token, as after
	// docker login.
	dockerConfig := t.TempDir()
	authJSON, _ := json.Marshal(map[string]any{"auths": map[string]any{addrB: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte("node-a:" + node.Secret))}}})
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), authJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dockerConfig)

	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	ref := addrB + "/demo/images/busybox:v1"
	if err := registryClient(adminB).Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, h.String())
	}
	has := func(addr, tok, path string) bool {
		resp := get(t, "http://"+addr+path, tok)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	waitFor(t, func() bool { // B indexes what is pushed to it
		for _, d := range digests {
			if !has(addrB, adminB, "/index/v1/layers/"+d+"?windows=detached") {
				return false
			}
		}
		return true
	})

	_, srvA, addrA := startServerWith(t, server.Config{Index: server.IndexConfig{Service: "http://" + addrB, TokenFile: tokenFile}})
	adminA := adminToken(t, srvA)
	c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addrA), withToken(adminA))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{
		Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{
			ImageUri: ref, EnableImageStreaming: true, Commands: []string{"cat", "/data/hello.txt"}}}}}}}}}
	got := runJob(t, ctx, c, "projects/demo/locations/us-central1", "elsewhere", job)
	if got.GetStatus().GetState() != batchpb.JobStatus_SUCCEEDED {
		t.Fatalf("job ended %v; events: %v", got.GetStatus().GetState(), got.GetStatus().GetStatusEvents())
	}
	task, err := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: got.GetName() + "/taskGroups/group0/tasks/0"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := fmt.Sprint(task.GetStatus().GetStatusEvents()); !strings.Contains(ev, "streamed") {
		t.Errorf("the task's image was not streamed: %s", ev)
	}
	for _, d := range digests {
		if has(addrA, adminA, "/index/v1/layers/"+d+"?windows=detached") {
			t.Errorf("layer %s: A built its own index instead of taking B's", d)
		}
	}
	waitFor(t, func() bool { // the profile went to B
		for _, d := range digests {
			if has(addrB, adminB, "/index/v1/profiles/"+d) {
				return true
			}
		}
		return false
	})
}

// TestIndexServiceConfigNeedsToken: index.service without a token file is
// refused at load, naming the key to add; a token file that is missing or
// empty stops the server at start.
func TestIndexServiceConfigNeedsToken(t *testing.T) {
	for _, c := range []struct {
		idx  server.IndexConfig
		want string
	}{
		{server.IndexConfig{Service: "http://127.0.0.1:1"}, "index.tokenFile"},
		{server.IndexConfig{TokenFile: "/x"}, "index.service"},
		{server.IndexConfig{CAFile: "/x"}, "index.service"},
	} {
		cfg := server.Config{Index: c.idx}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %s", c.idx, err, c.want)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty.token")
	os.WriteFile(empty, nil, 0o600)
	for _, file := range []string{empty, filepath.Join(t.TempDir(), "missing.token")} {
		cfg := server.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Index: server.IndexConfig{Service: "http://127.0.0.1:1", TokenFile: file}}
		srv, err := server.New(context.Background(), cfg, nil)
		if err == nil {
			srv.Close()
			t.Errorf("token file %s: the server started", file)
		} else if !strings.Contains(err.Error(), "index.tokenFile") {
			t.Errorf("token file %s: %v, want an error naming index.tokenFile", file, err)
		}
	}
}

// TestBadIndexTokenFileWritesNothing: a server whose index.tokenFile is
// missing or empty refuses to start, naming the field, before it creates
// its data directory or an admin token.
func TestBadIndexTokenFileWritesNothing(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.token")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(t.TempDir(), "missing.token"), "config: index.tokenFile: "},
		{empty, "config: index.tokenFile " + empty + " is empty"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		cfg := server.Config{DataDir: dir, Index: server.IndexConfig{Service: "http://127.0.0.1:9", TokenFile: tc.file}}
		srv, err := server.New(context.Background(), cfg, nil)
		if err == nil {
			srv.Close()
			t.Fatalf("server.New with index.tokenFile %s started", tc.file)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("server.New: %v, want an error with %q", err, tc.want)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the data directory was created (%v)", err)
		}
	}
}
