package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

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
	token := func(name, project string) string {
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
	viewerP, viewerQ := token("viewer-p", "p"), token("viewer-q", "q")

	// Three spans of gzip data: spans 1 and 2 need their windows.
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "big", Data: data}}}}})
	if err != nil {
		t.Fatal(err)
	}
	ref := addr + "/p/r/big:v1"
	if err := registryClient(admin).Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	small, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "small", Data: []byte("small")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := registryClient(admin).Push(ctx, addr+"/p/r/small:v1", small, nil); err != nil {
		t.Fatal(err)
	}
	if resp := call(t, http.MethodPost, "http://"+addr+"/index/v1/images", admin, map[string]any{"image": ref}, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("indexing %s: %s", ref, resp.Status)
	}

	src := indexsvc.HTTPSource{BaseURL: "http://" + addr, Client: &http.Client{Transport: bearer(viewerP)}}
	n, err := node.New(node.Options{
		Layout:  node.Layout{Root: t.TempDir()},
		Indexes: src,
		// Every read by range: spans after the first need their windows.
		Mount: streamfs.Options{NoBackground: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	rfs, err := n.Stream(ctx, ref, node.Auth{Username: "viewer-p", Password: viewerP})
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

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	h, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	layer := digest.Digest(h.String())
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
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp
}
