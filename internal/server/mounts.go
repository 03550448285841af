package server

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// cliMounts are the mounts `riffle mount` asked this server to make
// (POST /riffle/v1/system/mounts) when it runs on the server's data
// directory: they read through the server's node cache, so the node
// cache has one owner and one LRU, and the server keeps their layers from
// prune. `riffle unmount DIR` ends one (the kernel's unmount ends its FUSE
// session here); Close ends the rest.
type cliMounts struct {
	mu sync.Mutex
	m  map[string]*streamfs.MountPoint // by directory
	wg sync.WaitGroup
}

// MountRequest is the body of POST /riffle/v1/system/mounts.
type MountRequest struct {
	// Image is the reference to mount.
	Image string `json:"image"`
	// Dir is the absolute directory to mount it at (created if missing).
	Dir string `json:"dir"`
}

// MountReply is its answer.
type MountReply struct {
	Dir    string `json:"dir"`
	Digest string `json:"digest"`
	Layers int    `json:"layers"`
}

func (s *Server) registerMountAPI() {
	s.mux.HandleFunc("POST /riffle/v1/system/mounts", s.mountForCLI)
}

// mountForCLI mounts an image lazily at a directory for riffle mount
// (admin only: it mounts anywhere on the host).
func (s *Server) mountForCLI(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		jsonError(w, http.StatusBadRequest, "body: %v; send {\"image\": REF, \"dir\": ABSOLUTE_DIR}", err)
		return
	}
	if req.Image == "" || !filepath.IsAbs(req.Dir) || filepath.Clean(req.Dir) != req.Dir {
		jsonError(w, http.StatusBadRequest, "image must be set and dir an absolute, clean path")
		return
	}
	s.cli.mu.Lock()
	if s.cli.m == nil {
		s.cli.m = map[string]*streamfs.MountPoint{}
	}
	_, busy := s.cli.m[req.Dir]
	if !busy {
		s.cli.m[req.Dir] = nil // reserved while mounting
	}
	s.cli.mu.Unlock()
	if busy {
		jsonError(w, http.StatusConflict, "%s: riffle serve already has an image mounted there; riffle unmount it first", req.Dir)
		return
	}
	mp, img, release, err := s.node.MountHeld(r.Context(), req.Image, node.Auth{}, req.Dir)
	if err != nil {
		s.cli.mu.Lock()
		delete(s.cli.m, req.Dir)
		s.cli.mu.Unlock()
		code := http.StatusBadGateway
		if errors.Is(err, streamfs.ErrNotEligible) {
			code = http.StatusUnprocessableEntity
		}
		jsonError(w, code, "%v", err)
		return
	}
	s.cli.mu.Lock()
	s.cli.m[req.Dir] = mp
	s.cli.mu.Unlock()
	s.cli.wg.Add(1)
	go func() {
		defer s.cli.wg.Done()
		mp.Wait()
		s.node.ReportProfile(mp)
		release()
		s.cli.mu.Lock()
		delete(s.cli.m, req.Dir)
		s.cli.mu.Unlock()
		s.log.Info("riffle mount ended", "dir", req.Dir, "image", req.Image)
	}()
	s.log.Info("riffle mount", "dir", req.Dir, "image", req.Image, "digest", img.Digest)
	writeJSON(w, MountReply{Dir: req.Dir, Digest: img.Digest.String(), Layers: len(img.Manifest.Layers)})
}

// closeCLIMounts unmounts what riffle mount left with the server.
func (s *Server) closeCLIMounts() {
	s.cli.mu.Lock()
	var mps []*streamfs.MountPoint
	for _, mp := range s.cli.m {
		if mp != nil {
			mps = append(mps, mp)
		}
	}
	s.cli.mu.Unlock()
	for _, mp := range mps {
		if err := mp.Unmount(); err != nil {
			_ = streamfs.UnmountDir(mp.Dir(), true)
		}
	}
	s.cli.wg.Wait()
}
