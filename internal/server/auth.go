package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/indexsvc"
)

// access is what a request needs: a role in a project, or nothing.
type access struct {
	api      string    // metrics label and audit field: batch, registry, index, logs, auth, metrics, health
	open     bool      // no token needed
	project  string    // "" means the role in any project
	need     auth.Role // the role needed in project
	also     []string  // more projects the viewer role is needed in (a registry cross-repository mount)
	mutating bool      // audited when allowed
	ping     bool      // the registry's GET /v2/
	// layerData, for a detached index, is the project whose viewers may
	// read the layer's windows with the same ?repository=: the answer
	// goes back in indexsvc.HeaderLayerData, so that a node whose token
	// may not finds out before it reads (it builds the index itself, or
	// pulls) instead of failing reads with EIO.
	layerData string
}

// guard authenticates and authorizes every HTTP request (everything but
// gRPC, which the interceptors check) before it reaches the mux.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, err := s.classify(r)
		if err != nil {
			aerr := &auth.Error{Denied: true, Reason: auth.ReasonPolicy, Msg: err.Error()}
			s.refused(r.Context(), apiGroup(r.URL.Path), nil, "", r.Method, r.URL.EscapedPath(), aerr)
			writeRefusal(w, apiGroup(r.URL.Path), aerr)
			return
		}
		if a.open {
			next.ServeHTTP(w, r)
			return
		}
		id, err := s.authenticate(auth.FromRequest(r), a.project, a.need)
		if err == nil {
			err = authorizeAll(id, a)
		}
		if err != nil {
			// The registry clients' first, anonymous ping is how they
			// learn to log in: part of the protocol, not a refused call.
			if !(a.ping && auth.FromRequest(r) == "") {
				s.refused(r.Context(), a.api, id, a.project, r.Method, r.URL.Path, err)
			}
			writeRefusal(w, a.api, err)
			return
		}
		if a.mutating {
			s.audit(r.Context(), "allowed", a.api, id, a.project, r.Method, r.URL.Path, "")
		}
		if a.layerData != "" {
			v := indexsvc.LayerDataDenied
			if auth.Authorize(id, a.layerData, auth.RoleViewer) == nil {
				v = indexsvc.LayerDataAllowed
			}
			w.Header().Set(indexsvc.HeaderLayerData, v)
		}
		next.ServeHTTP(w, r.WithContext(auth.WithIdentity(r.Context(), id)))
	})
}

func authorizeAll(id *auth.Identity, a access) error {
	if err := auth.Authorize(id, a.project, a.need); err != nil {
		return err
	}
	for _, p := range a.also {
		if err := auth.Authorize(id, p, auth.RoleViewer); err != nil {
			return err
		}
	}
	return nil
}

// authenticate looks a token up. A refusal says what the request needed
// (need in project). Store errors (not refusals) become a refusal too,
// logged, so a broken database never turns into a 500 that says more than
// it should.
func (s *Server) authenticate(secret, project string, need auth.Role) (*auth.Identity, error) {
	if secret == "" {
		return nil, auth.Authorize(nil, project, need)
	}
	id, err := s.tokens.Lookup(secret)
	if err == nil {
		return id, nil
	}
	ae, ok := err.(*auth.Error)
	if !ok {
		s.log.Error("token lookup failed", "err", err)
		ae = &auth.Error{Reason: auth.ReasonBadToken, Msg: "the token could not be checked; see the server log"}
	}
	where := "project " + project
	if project == "" {
		where = "any project"
	}
	return nil, &auth.Error{Reason: ae.Reason, Msg: fmt.Sprintf("%s; this needs the %s role in %s", ae.Msg, need, where)}
}

// classify says what r needs. An error refuses the request as malformed
// (a path that is not in its clean form could route differently from how
// it was classified).
func (s *Server) classify(r *http.Request) (access, error) {
	p := r.URL.Path
	if r.URL.RawPath != "" || (path.Clean(p) != p && path.Clean(p)+"/" != p) {
		return access{}, fmt.Errorf("path %q is not in clean form", r.URL.EscapedPath())
	}
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	role := auth.RoleViewer
	if write {
		role = auth.RoleEditor
	}
	switch {
	case p == "/healthz":
		return access{api: "health", open: true}, nil
	case p == "/" || strings.HasPrefix(p, "/console/"):
		// The console's static pages hold no data; what they show comes
		// from the APIs below, with the user's token.
		return access{api: "console", open: true}, nil
	case p == "/metrics":
		return s.metricsAccess(r), nil
	case p == "/v2" || p == "/v2/":
		// The registry "ping": clients learn the auth scheme here and
		// docker login checks credentials.
		return access{api: "registry", need: auth.RoleViewer, ping: true}, nil
	case p == "/v2/_catalog":
		return access{api: "registry", project: auth.AllProjects, need: auth.RoleViewer}, nil
	case strings.HasPrefix(p, "/v2/"):
		return registryAccess(r, role, write), nil
	case strings.HasPrefix(p, "/v1/"):
		return access{api: "batch", project: projectOf(strings.TrimPrefix(p, "/v1/")), need: role, mutating: write}, nil
	case strings.HasPrefix(p, "/riffle/v1/logs/"):
		return access{api: "logs", project: projectOf(strings.TrimPrefix(p, "/riffle/v1/logs/")), need: auth.RoleViewer}, nil
	case p == "/riffle/v1/system/df":
		// Disk use names images and jobs of every project.
		return access{api: "system", project: auth.AllProjects, need: auth.RoleViewer}, nil
	case strings.HasPrefix(p, "/riffle/v1/system/"):
		return access{api: "system", project: auth.AllProjects, need: auth.RoleAdmin, mutating: write}, nil
	case strings.HasPrefix(p, "/riffle/v1/arrival/"):
		return access{api: "batch", project: projectOf(strings.TrimPrefix(p, "/riffle/v1/arrival/")), need: auth.RoleViewer}, nil
	case p == "/riffle/v1/auth/whoami":
		return access{api: "auth", need: auth.RoleViewer}, nil
	case strings.HasPrefix(p, "/riffle/v1/auth/"):
		return access{api: "auth", project: auth.AllProjects, need: auth.RoleAdmin, mutating: write}, nil
	case p == "/index/v1/images" && r.Method == http.MethodPost:
		return access{api: "index", project: indexRequestProject(r, "image"), need: auth.RoleEditor, mutating: true}, nil
	case strings.HasPrefix(p, "/index/v1/profiles/") && r.Method == http.MethodPost:
		// Reporting a startup profile makes the service read the layer
		// from the repository named in the body (to build its prefetch
		// pack): editor in that repository's project, as for indexing.
		return access{api: "index", project: indexRequestProject(r, "repository"), need: auth.RoleEditor, mutating: true}, nil
	case strings.HasPrefix(p, "/index/v1/packs/"):
		// A pack holds layer data, not just metadata as an index does,
		// and is addressed by digest alone: only a caller that may read
		// every project's images (a node's token) may read it. Others
		// get 403 and their nodes fetch the same spans by range from the
		// registry, under its own per-project checks.
		return access{api: "index", project: auth.AllProjects, need: auth.RoleViewer}, nil
	case !write && strings.HasPrefix(p, "/index/v1/layers/") &&
		(strings.Contains(p, "/windows/") || r.URL.Query().Get("windows") != "detached"):
		// A span's window, and so a whole index, is 32 KiB of the layer's
		// data per span: a caller that names a repository of this
		// server's registry needs viewer in its project (the index
		// service then checks the layer is a blob of that repository);
		// any other caller, every project's images (a node's token).
		return access{api: "index", project: s.layerDataProject(r), need: auth.RoleViewer}, nil
	case !write && strings.HasPrefix(p, "/index/v1/layers/"):
		// Detached layer indexes (file names, sizes and span digests, no
		// file data) are addressed by digest and belong to no project:
		// any role anywhere may read them. The answer says whether the
		// caller may read the windows too.
		return access{api: "index", need: role, layerData: s.layerDataProject(r)}, nil
	case strings.HasPrefix(p, "/index/"):
		return access{api: "index", need: role, mutating: write}, nil
	}
	return access{api: "other", need: auth.RoleViewer}, nil
}

// layerDataProject is the project whose viewers may read layer data from
// the index service with r: that of r's ?repository= if it is a
// repository of this server's registry, else every project. Projects are
// this registry's namespaces; another registry's repository proves
// nothing (its registry could claim any blob).
func (s *Server) layerDataProject(r *http.Request) string {
	v := r.URL.Query().Get("repository")
	if v == "" {
		return auth.AllProjects
	}
	repo, err := name.NewRepository(v, name.Insecure)
	if err != nil || !s.isSelf(repo.RegistryStr()) {
		return auth.AllProjects
	}
	proj, _, _ := strings.Cut(repo.RepositoryStr(), "/")
	if proj == "" {
		return auth.AllProjects
	}
	return proj
}

// projectOf is P of "projects/P/...", or "*" (which only a binding to every
// project satisfies) for a path that names no project.
func projectOf(p string) string {
	rest, ok := strings.CutPrefix(p, "projects/")
	if !ok {
		return auth.AllProjects
	}
	proj, _, _ := strings.Cut(rest, "/")
	proj, _, _ = strings.Cut(proj, ":") // projects/P:method
	if proj == "" || proj == auth.AllProjects {
		return auth.AllProjects
	}
	return proj
}

// registryAccess: the project of /v2/PROJECT/REPO/IMAGE/... is its first
// path component (Artifact Registry's HOST/PROJECT/REPO/IMAGE). Reads need
// viewer, pushes and deletes editor; a cross-repository blob mount also
// needs viewer where the blob comes from.
func registryAccess(r *http.Request, role auth.Role, write bool) access {
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	proj, _, _ := strings.Cut(rest, "/")
	a := access{api: "registry", project: proj, need: role, mutating: write}
	if from := r.URL.Query().Get("from"); from != "" {
		fp, _, _ := strings.Cut(from, "/")
		a.also = append(a.also, fp)
	}
	return a
}

// indexRequestProject reads the image or repository named by field of a
// POST /index/v1/... JSON body (and puts the body back): indexing an image
// or building a prefetch pack reads it (and indexing may push an index
// artifact next to it), so it needs editor in that project. A body that
// names none needs every project.
func indexRequestProject(r *http.Request, field string) string {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxIndexBody))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return auth.AllProjects
	}
	var req map[string]any
	if json.Unmarshal(body, &req) != nil {
		return auth.AllProjects
	}
	v, _ := req[field].(string)
	var repo string
	if field == "repository" {
		rp, err := name.NewRepository(v, name.Insecure)
		if err != nil {
			return auth.AllProjects
		}
		repo = rp.RepositoryStr()
	} else {
		ref, err := name.ParseReference(v, name.Insecure)
		if err != nil {
			return auth.AllProjects
		}
		repo = ref.Context().RepositoryStr()
	}
	proj, _, _ := strings.Cut(repo, "/")
	return proj
}

// maxIndexBody bounds the index request bodies read to find their project;
// the handlers take at most this much (a profile of MaxProfileSpans spans
// is far smaller).
const maxIndexBody = 1 << 20

// metricsAccess applies auth.metrics.
func (s *Server) metricsAccess(r *http.Request) access {
	a := access{api: "metrics", project: auth.AllProjects, need: auth.RoleViewer}
	switch s.cfg.Auth.Metrics {
	case MetricsOpen:
		a.open = true
	case MetricsLoopback:
		a.open = fromLoopback(r)
	}
	return a
}

func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// writeRefusal answers 401 or 403 in the shape the API's clients parse:
// the registry's errors list with a Basic challenge (so docker, skopeo and
// crane send their login), Google's error JSON elsewhere.
func writeRefusal(w http.ResponseWriter, api string, err error) {
	ae, ok := err.(*auth.Error)
	if !ok {
		ae = &auth.Error{Reason: auth.ReasonBadToken, Msg: err.Error()}
	}
	code, status, regCode := http.StatusUnauthorized, "UNAUTHENTICATED", "UNAUTHORIZED"
	if ae.Denied {
		code, status, regCode = http.StatusForbidden, "PERMISSION_DENIED", "DENIED"
	}
	w.Header().Set("Content-Type", "application/json")
	if api == "registry" {
		if !ae.Denied {
			w.Header().Set("WWW-Authenticate", `Basic realm="riffle"`)
		}
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]any{"errors": []any{map[string]any{"code": regCode, "message": ae.Error()}}})
		return
	}
	if !ae.Denied {
		w.Header().Set("WWW-Authenticate", `Bearer realm="riffle"`)
	}
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": ae.Error(), "status": status}})
}

// refused counts and audits a refusal.
func (s *Server) refused(ctx context.Context, api string, id *auth.Identity, project, method, resource string, err error) {
	reason := string(auth.ReasonBadToken)
	if ae, ok := err.(*auth.Error); ok {
		reason = string(ae.Reason)
	}
	s.refusals.WithLabelValues(api, reason).Inc()
	s.audit(ctx, "refused", api, id, project, method, resource, err.Error())
}

// audit logs one access decision: every refusal and every allowed
// mutating call.
func (s *Server) audit(ctx context.Context, outcome, api string, id *auth.Identity, project, method, resource, msg string) {
	attrs := []any{"outcome", outcome, "api", api, "identity", id.String(), "project", project, "method", method, "resource", resource}
	if msg != "" {
		attrs = append(attrs, "reason", msg)
	}
	s.log.InfoContext(ctx, "audit", attrs...)
}

func newRefusalCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "riffle_auth_refused_total",
		Help: "Requests refused by access control, by API group and reason (no_token, bad_token, revoked_token, missing_role, policy).",
	}, []string{"api", "reason"})
}

// isSelf reports whether a registry host ("host:port") is this server: its
// port, on loopback or one of this machine's addresses.
func (s *Server) isSelf(hostport string) bool {
	addr, _ := s.addr.Load().(string)
	if addr == "" {
		return false
	}
	_, myPort, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || port != myPort {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range ifaddrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil && pfx.Addr() == ip.Unmap() {
			return true
		}
	}
	return false
}

// openAuth opens the token store, makes sure the local admin token exists
// (DataDir/admin.token) and mints the server's own in-memory token. It
// also loads the TLS certificate, so a bad one stops the start before
// anything says it serves.
func (s *Server) openAuth() error {
	if s.cfg.TLS.Enabled() {
		if _, err := tls.LoadX509KeyPair(s.cfg.TLS.Cert, s.cfg.TLS.Key); err != nil {
			return fmt.Errorf("server: tls.cert/tls.key (--tls-cert, --tls-key): %w", err)
		}
	}
	st, err := auth.Open(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.tokens = st
	created, err := st.EnsureAdminToken(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if created {
		s.log.Info("created the local admin token", "file", auth.AdminTokenPath(s.cfg.DataDir))
	}
	s.selfToken = auth.NewSecret()
	st.AddEphemeral(s.selfToken, &auth.Identity{TokenID: "riffle-server", Name: "riffle serve itself",
		Bindings: []auth.Binding{{Project: auth.AllProjects, Role: auth.RoleAdmin}}})
	s.refusals = newRefusalCounter()
	s.metrics.MustRegister(s.refusals)
	return nil
}
