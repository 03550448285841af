package server

import (
	"context"
	"net/http"
)

// stopping is done once the server shuts down (Serve's context ends, or
// Close). Requests that would otherwise last as long as a job (logs
// --follow) end with it, so they do not hold shutdown for its whole grace.
type stopping struct {
	ctx  context.Context
	stop context.CancelFunc
}

func newStopping() stopping {
	ctx, stop := context.WithCancel(context.Background())
	return stopping{ctx: ctx, stop: stop}
}

// untilShutdown returns r's context, also cancelled when the server shuts
// down.
func (s *Server) untilShutdown(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	unhook := context.AfterFunc(s.stopping.ctx, cancel)
	return ctx, func() { unhook(); cancel() }
}

// cutAtShutdown aborts the response when the server is shutting down, so
// that the client sees the stream cut (riffle logs --follow says so)
// rather than a clean end it would take for the job's.
func (s *Server) cutAtShutdown(r *http.Request) {
	if s.stopping.ctx.Err() != nil && r.Context().Err() == nil {
		panic(http.ErrAbortHandler)
	}
}
