package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/riffle-dev/riffle/internal/auth"
)

// Token management over HTTP, for `riffle auth tokens` (admin in every
// project; guard checks it):
//
//	POST   /riffle/v1/auth/tokens       {"name": N, "bindings": [{"project": P, "role": R}]}
//	                                    -> {"secret": S, "token": {...}}
//	GET    /riffle/v1/auth/tokens       -> {"tokens": [...]}
//	DELETE /riffle/v1/auth/tokens/{id}  -> the revoked token (an ID or a unique name)
//	GET    /riffle/v1/auth/whoami       -> the caller's identity (any role)
func (s *Server) registerTokenAPI() {
	s.mux.HandleFunc("POST /riffle/v1/auth/tokens", s.createToken)
	s.mux.HandleFunc("GET /riffle/v1/auth/tokens", func(w http.ResponseWriter, _ *http.Request) {
		ts, err := s.tokens.List()
		if err != nil {
			s.log.Error("listing tokens", "err", err)
			jsonError(w, http.StatusInternalServerError, "listing tokens failed; see the server log")
			return
		}
		writeJSON(w, map[string]any{"tokens": ts})
	})
	s.mux.HandleFunc("DELETE /riffle/v1/auth/tokens/{id}", func(w http.ResponseWriter, r *http.Request) {
		t, err := s.tokens.Revoke(r.PathValue("id"))
		if errors.Is(err, auth.ErrNotFound) {
			jsonError(w, http.StatusNotFound, "%v", err)
			return
		}
		if err != nil {
			jsonError(w, http.StatusBadRequest, "%v", err)
			return
		}
		writeJSON(w, t)
	})
	s.mux.HandleFunc("GET /riffle/v1/auth/whoami", func(w http.ResponseWriter, r *http.Request) {
		id := auth.IdentityFrom(r.Context())
		writeJSON(w, map[string]any{"id": id.TokenID, "name": id.Name, "bindings": id.Bindings})
	})
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name     string         `json:"name"`
		Bindings []auth.Binding `json:"bindings"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		jsonError(w, http.StatusBadRequest, "body: %v; send {\"name\": N, \"bindings\": [{\"project\": P, \"role\": viewer|editor|admin}]}", err)
		return
	}
	secret, t, err := s.tokens.Create(req.Name, req.Bindings)
	if err != nil {
		jsonError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.log.Info("audit", "outcome", "token created", "identity", auth.IdentityFrom(r.Context()).String(), "token", t.ID, "name", t.Name, "bindings", fmt.Sprint(t.Bindings))
	writeJSON(w, map[string]any{"secret": secret, "token": t})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func jsonError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": fmt.Sprintf(format, args...)}})
}
