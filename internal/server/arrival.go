package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/batch/store"
)

// taskArrival is one task's entry in GET /riffle/v1/arrival/JOB.
type taskArrival struct {
	Task     string                   `json:"task"`
	State    string                   `json:"state"`
	Arrivals []scheduler.ImageArrival `json:"arrivals"`
}

// serveArrival answers GET /riffle/v1/arrival/projects/P/locations/L/jobs/J
// with how each task's images arrived: the numbers of the tasks' IMAGE_*
// status events, structured, since the Batch API has only their text. It
// needs viewer in P (classify) and is read-only.
func (s *Server) serveArrival(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("job")
	if _, err := s.store.GetJob(r.Context(), name); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) {
			code = http.StatusNotFound
		}
		jsonError(w, code, "%s", fmt.Errorf("job %s: %w", name, err))
		return
	}
	tasks, err := s.store.Tasks(r.Context(), name)
	if err != nil {
		jsonError(w, http.StatusInternalServerError, "%s", fmt.Errorf("tasks of job %s: %w", name, err))
		return
	}
	out := make([]taskArrival, 0, len(tasks))
	for _, t := range tasks {
		out = append(out, taskArrival{Task: t.GetName(), State: t.GetStatus().GetState().String(),
			Arrivals: scheduler.ImageArrivals(t.GetStatus().GetStatusEvents())})
	}
	writeJSON(w, map[string]any{"job": name, "tasks": out})
}
