package indexsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// MaxProfileSpans bounds a layer's stored startup profile. At the default
// 1 MiB span size that is 4 GiB of layer data, more than any start needs;
// spans past it are dropped (the latest first-uses are the least useful).
const MaxProfileSpans = 4096

// ErrNoProfile is returned (wrapped) for a layer nobody has reported a
// profile of.
var ErrNoProfile = errors.New("indexsvc: no startup profile for layer")

// LayerProfile is the stored startup profile of one layer: the spans of its
// index that tasks read first, in order of first use, merged over runs.
type LayerProfile struct {
	Spans []int `json:"spans"`
	// Runs is how many reports were merged into it.
	Runs int `json:"runs"`
}

// profiles is the part of a Service that keeps startup profiles, as JSON
// files by layer digest: DIR/profiles/sha256/<hex>.json.
type profiles struct {
	mu sync.Mutex // serialises read-merge-write of one file
}

func (s *Service) profilePath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("indexsvc: %q is not a sha256 layer digest", d)
	}
	return filepath.Join(s.dir, "profiles", "sha256", d.Encoded()+".json"), nil
}

// Profile returns the startup profile of layer d, or an error wrapping
// ErrNoProfile.
func (s *Service) Profile(_ context.Context, d digest.Digest) (*LayerProfile, error) {
	p, err := s.profilePath(d)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s", ErrNoProfile, d)
	}
	if err != nil {
		return nil, fmt.Errorf("indexsvc: %w", err)
	}
	var lp LayerProfile
	if err := json.Unmarshal(raw, &lp); err != nil {
		return nil, fmt.Errorf("indexsvc: stored profile of %s: %w", d, err)
	}
	return &lp, nil
}

// AddProfile merges one run's startup profile of layer d (span numbers in
// order of first use) into the stored one: the union, in order of first
// use over all runs (spans already known keep their place, new ones follow
// in the order this run used them), bounded by MaxProfileSpans. Span
// numbers must be distinct and, when the layer's index is here, inside it.
// With repo (the repository the layer was read from, "HOST/NAME"), the
// layer's prefetch pack is then (re)built from it in the background.
func (s *Service) AddProfile(_ context.Context, repo string, d digest.Digest, spans []int) error {
	p, err := s.profilePath(d)
	if err != nil {
		return err
	}
	// The span count from the detached form kept for nodes, when it is
	// there (the node that reports read the layer through it): parsing
	// the stored index for it took 60 ms for the bench image's big layer,
	// and riffle run waits for its report before it exits.
	limit := -1
	if n, ok := s.detachedSpans(d); ok {
		limit = n
	} else if x, _, err := s.Get(d); err == nil {
		limit = len(x.Spans)
	}
	seen := make(map[int]bool, len(spans))
	for i, n := range spans {
		if n < 0 || (limit >= 0 && n >= limit) {
			return fmt.Errorf("indexsvc: profile of %s: spans[%d] = %d is not a span of the layer (it has %d)", d, i, n, limit)
		}
		if seen[n] {
			return fmt.Errorf("indexsvc: profile of %s: span %d is listed twice; list each span once, at its first use", d, n)
		}
		seen[n] = true
	}
	s.prof.mu.Lock()
	defer s.prof.mu.Unlock()
	lp, err := s.Profile(context.Background(), d)
	if errors.Is(err, ErrNoProfile) {
		lp, err = &LayerProfile{}, nil
	}
	if err != nil {
		return err
	}
	known := make(map[int]bool, len(lp.Spans))
	for _, n := range lp.Spans {
		known[n] = true
	}
	for _, n := range spans {
		if !known[n] && len(lp.Spans) < MaxProfileSpans {
			lp.Spans = append(lp.Spans, n)
			known[n] = true
		}
	}
	lp.Runs++
	raw, err := json.Marshal(lp)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	s.profilesAdded.Inc()
	if repo != "" {
		s.schedulePack(repo, d)
	}
	return nil
}

// profileHandlers serves
//
//	GET  /index/v1/profiles/{digest}   {"spans": [...], "runs": N}, 404 if none
//	POST /index/v1/profiles/{digest}   {"spans": [...], "repository": R}: merge one
//	                                   run's profile; with R, (re)build the pack
func (s *Service) profileHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /index/v1/profiles/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := digest.Parse(r.PathValue("digest"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "digest %q: use the layer's digest, like sha256:<64 hex digits>", r.PathValue("digest"))
			return
		}
		lp, err := s.Profile(r.Context(), d)
		if errors.Is(err, ErrNoProfile) {
			httpError(w, http.StatusNotFound, "no startup profile for layer %s yet; the first streamed task of an image records one", d)
			return
		}
		if err != nil {
			httpError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(lp)
	})
	mux.HandleFunc("POST /index/v1/profiles/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := digest.Parse(r.PathValue("digest"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "digest %q: use the layer's digest, like sha256:<64 hex digits>", r.PathValue("digest"))
			return
		}
		var req struct {
			Spans      []int  `json:"spans"`
			Repository string `json:"repository"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			httpError(w, http.StatusBadRequest, "body: %v; send {\"spans\": [span numbers in order of first use]}", err)
			return
		}
		if err := s.AddProfile(r.Context(), req.Repository, d, req.Spans); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// Profile fetches layer d's startup profile from the service; an error
// wrapping ErrNoProfile when it has none.
func (h HTTPSource) Profile(ctx context.Context, d digest.Digest) (*LayerProfile, error) {
	resp, err := h.get(ctx, "/index/v1/profiles/"+d.String())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%w %s", ErrNoProfile, d)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp)
	}
	var lp LayerProfile
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&lp); err != nil {
		return nil, fmt.Errorf("indexsvc: profile of %s: %w", d, err)
	}
	return &lp, nil
}

// AddProfile reports one run's startup profile of layer d, read from
// repository repo, to the service.
func (h HTTPSource) AddProfile(ctx context.Context, repo string, d digest.Digest, spans []int) error {
	body, err := json.Marshal(struct {
		Spans      []int  `json:"spans"`
		Repository string `json:"repository,omitempty"`
	}{spans, repo})
	if err != nil {
		return err
	}
	u := strings.TrimSuffix(h.BaseURL, "/") + "/index/v1/profiles/" + d.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.client().Do(req)
	if err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("indexsvc: POST %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

func (h HTTPSource) client() *http.Client {
	if h.Client != nil {
		return h.Client
	}
	return defaultClient
}

// defaultClient is HTTPSource's client when none is given. A node fetches
// windows alongside its range reads, several at once: more than the two
// idle connections per host of http.DefaultTransport, past which each
// request would open a new connection (a round trip more).
var defaultClient = &http.Client{Transport: func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}()}
