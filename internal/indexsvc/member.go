package indexsvc

import (
	"context"
	"net/http"
	"sync"

	"github.com/opencontainers/go-digest"
)

// inRepository checks a request's ?repository=R, if it names one: layer d
// must be a blob of repository R, asked of R's registry with the
// service's credentials. The server in front lets a caller with viewer in
// R's project through to layer data (windows, whole indexes) on that
// condition; without the check, viewer in any project would read any
// layer whose digest is known. It answers the request and returns false
// when d is not there.
func (s *Service) inRepository(w http.ResponseWriter, r *http.Request, d digest.Digest) bool {
	repo := r.URL.Query().Get("repository")
	if repo == "" {
		return true
	}
	if err := s.members.check(r.Context(), s, repo, d); err != nil {
		httpError(w, http.StatusNotFound, "layer %s in repository %s: %v; name the repository the layer is read from", d, repo, err)
		return false
	}
	return true
}

// members remembers which (repository, layer) pairs the registry
// confirmed, so that a node's window requests cost one HEAD per layer.
type members struct {
	mu  sync.Mutex
	ok  map[string]bool
	max int
}

// maxMembers bounds the pairs remembered (about 200 bytes each).
const maxMembers = 1 << 14

func (m *members) check(ctx context.Context, s *Service, repo string, d digest.Digest) error {
	key := repo + "@" + d.String()
	m.mu.Lock()
	ok := m.ok[key]
	m.mu.Unlock()
	if ok {
		return nil
	}
	r, err := s.client.ParseRepository(repo)
	if err != nil {
		return err
	}
	// A negative size makes RepositoryBlob ask the registry (HEAD).
	if _, err := s.client.RepositoryBlob(ctx, r, d, -1); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ok == nil || len(m.ok) >= maxMembers {
		m.ok = make(map[string]bool)
	}
	m.ok[key] = true
	return nil
}
