package indexsvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// MediaTypeIndex is the media type of a marshalled layer index, on the wire
// and as a blob of a referrer artifact.
const MediaTypeIndex = "application/vnd.riffle.layer.index.v1"

// Handler serves the index API:
//
//	GET  /index/v1/layers/{digest}   the index of a layer (MediaTypeIndex), 404 if none;
//	                                 ?windows=detached: without its windows
//	GET  /index/v1/layers/{digest}/windows/{span}  one span's window (detached indexes)
//	POST /index/v1/images            {"image": REF, "pushReferrer": bool}: index REF now
//	GET  /index/v1/profiles/{digest} a layer's startup profile, 404 if none
//	POST /index/v1/profiles/{digest} {"spans": [...], "repository": R}: merge one run's profile
//	GET  /index/v1/packs/{digest}    a layer's prefetch pack (Range works), 404 if none
//
// A window is 32 KiB of the layer's data, so the whole index and the
// windows take ?repository=R: they are served only if repository R holds
// the layer (the server in front checks that the caller may read R).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	s.profileHandlers(mux)
	s.packHandlers(mux)
	mux.HandleFunc("GET /index/v1/layers/{digest}/windows/{span}", s.windowHandler)
	mux.HandleFunc("GET /index/v1/layers/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := digest.Parse(r.PathValue("digest"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "digest %q: use the layer's digest, like sha256:<64 hex digits>", r.PathValue("digest"))
			return
		}
		var raw, gz []byte
		switch v := r.URL.Query().Get("windows"); v {
		case "":
			if !s.inRepository(w, r, d) {
				return
			}
			_, raw, err = s.Get(d)
		case "detached":
			if repo := r.URL.Query().Get("repository"); repo != "" && w.Header().Get(HeaderLayerData) == LayerDataAllowed &&
				s.members.check(r.Context(), s, repo, d) != nil {
				w.Header().Set(HeaderLayerData, LayerDataDenied)
			}
			var l *detachedLayer
			if l, err = s.detached(d); err == nil {
				raw = l.raw
				if acceptsGzip(r) {
					gz = l.gzipped()
				}
			}
		default:
			httpError(w, http.StatusBadRequest, "windows=%q: leave it out for the whole index, or say windows=detached", v)
			return
		}
		if errors.Is(err, streamfs.ErrNoIndex) {
			httpError(w, http.StatusNotFound, "no index for layer %s; POST /index/v1/images with an image that has it", d)
			return
		}
		if err != nil {
			httpError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		w.Header().Set("Content-Type", MediaTypeIndex)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(raw).String())
		w.Header().Set("Vary", "Accept-Encoding")
		if gz != nil {
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", strconv.Itoa(len(gz)))
			w.Write(gz)
			return
		}
		w.Write(raw)
	})
	mux.HandleFunc("POST /index/v1/images", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Image        string `json:"image"`
			PushReferrer bool   `json:"pushReferrer"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			httpError(w, http.StatusBadRequest, "body: %v; send {\"image\": \"HOST/REPO:TAG\"}", err)
			return
		}
		if req.Image == "" {
			httpError(w, http.StatusBadRequest, "image: give the reference of the image to index")
			return
		}
		res, err := s.IndexImage(r.Context(), req.Image)
		if err != nil {
			httpError(w, http.StatusBadRequest, "image %s: %v", req.Image, err)
			return
		}
		out := struct {
			*ImageResult
			Referrer digest.Digest `json:"referrer,omitempty"`
		}{ImageResult: res}
		if req.PushReferrer {
			d, err := s.PushReferrer(r.Context(), req.Image)
			if err != nil {
				httpError(w, http.StatusBadGateway, "pushing the index artifact for %s: %v", req.Image, err)
				return
			}
			out.Referrer = d
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	return mux
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": fmt.Sprintf(format, args...)}})
}

// HeaderLayerData, on a detached index from a riffle serve, says whether
// the caller may also read the layer's windows (LayerDataAllowed or
// LayerDataDenied), for the ?repository= it named: its token may read
// the index of any layer, but the windows (layer data) only of layers in
// its projects' repositories. The server in front sets it from the
// caller's roles; the handler turns allowed into denied when the
// repository does not hold the layer (its windows would be refused too,
// see inRepository).
const (
	HeaderLayerData  = "Riffle-Layer-Data"
	LayerDataAllowed = "allowed"
	LayerDataDenied  = "denied"
)

// HTTPSource reads layer indexes from a Riffle index service. It implements
// streamfs.IndexSource for nodes that are not the server.
type HTTPSource struct {
	// BaseURL is the server's URL, like http://127.0.0.1:8080.
	BaseURL string
	// Client defaults to a client like http.DefaultClient that keeps up
	// to 64 idle connections to the service.
	Client *http.Client
}

var _ streamfs.IndexSource = HTTPSource{}

// LayerIndex fetches and validates the index of desc, detached (see
// Window): the node fetches the window of a span only when it reads it,
// from repository repo. A service that says the caller may not read
// those windows (HeaderLayerData) gives no index: ErrNoIndex, so that
// the node finds one elsewhere (or builds it, or pulls the image).
func (h HTTPSource) LayerIndex(ctx context.Context, repo string, desc ocispec.Descriptor) (*index.Index, error) {
	p := "/index/v1/layers/" + desc.Digest.String() + "?windows=detached"
	if repo != "" {
		p += "&repository=" + url.QueryEscape(repo)
	}
	resp, err := h.get(ctx, p)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("indexsvc: layer %s: %w", desc.Digest, streamfs.ErrNoIndex)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxIndexBytes+1))
	if err != nil {
		return nil, fmt.Errorf("indexsvc: %w", err)
	}
	if len(raw) > maxIndexBytes {
		return nil, fmt.Errorf("indexsvc: index of %s is larger than %d bytes", desc.Digest, maxIndexBytes)
	}
	x, err := checked(raw, desc)
	if err != nil {
		return nil, err
	}
	// Only a detached index needs windows (gzip layers); a zstd or tar
	// index is whole as it is.
	if x.Detached && resp.Header.Get(HeaderLayerData) == LayerDataDenied {
		return nil, fmt.Errorf("indexsvc: layer %s: the index service will not give this token the layer's windows from %q (it needs the viewer role in that repository's project, or in every project for an image on another registry): %w", desc.Digest, repo, streamfs.ErrNoIndex)
	}
	return x, nil
}

// acceptsGzip reports whether r's Accept-Encoding allows gzip (Go's
// client asks for it unless told otherwise, and undoes it).
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}

// get sends GET BaseURL+path to the service; the caller closes the body.
func (h HTTPSource) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(h.BaseURL, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("indexsvc: %w", err)
	}
	return resp, nil
}

// statusError reports a response of get with an unexpected status.
func statusError(resp *http.Response) error {
	return fmt.Errorf("indexsvc: GET %s: %s", resp.Request.URL, resp.Status)
}

// maxIndexBytes bounds an index read from elsewhere. A layer with a million
// files and 4 MiB spans of a 50 GB stream stays well under it.
const maxIndexBytes = 512 << 20

// checked parses raw and makes sure it describes desc.
func checked(raw []byte, desc ocispec.Descriptor) (*index.Index, error) {
	x, err := index.Unmarshal(raw)
	if errors.Is(err, index.ErrVersion) {
		// A source on another release: the node goes on to the next one
		// (or builds the index) rather than failing the layer.
		return nil, fmt.Errorf("indexsvc: index of %s: %w (%w)", desc.Digest, streamfs.ErrNoIndex, err)
	}
	if err != nil {
		return nil, fmt.Errorf("indexsvc: index of %s: %w", desc.Digest, err)
	}
	if x.BlobDigest != desc.Digest || (desc.Size > 0 && x.BlobSize != desc.Size) {
		return nil, fmt.Errorf("indexsvc: index claims to describe %s (%d bytes), not layer %s (%d bytes)", x.BlobDigest, x.BlobSize, desc.Digest, desc.Size)
	}
	return x, nil
}
