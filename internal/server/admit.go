package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/remote"
)

// admitImages checks every container image of a new job before it is
// accepted, as Batch users expect a bad image to fail the submit rather
// than every task: a malformed reference, an image that does not exist and
// a schema 1 manifest are INVALID_ARGUMENT naming the runnable.
func (s *Server) admitImages(ctx context.Context, j *batchpb.Job) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.admitSecurity(ctx, j); err != nil {
		return err
	}
	var errs job.FieldErrors
	for gi, g := range j.GetTaskGroups() {
		for ri, r := range g.GetTaskSpec().GetRunnables() {
			c := r.GetContainer()
			if c == nil || c.GetImageUri() == "" {
				continue
			}
			path := fmt.Sprintf("taskGroups[%d].taskSpec.runnables[%d].container.imageUri", gi, ri)
			if _, err := s.client.Resolve(ctx, c.GetImageUri(), nil); err != nil {
				errs = append(errs, &job.FieldError{Path: path, Msg: imageProblem(c.GetImageUri(), err)})
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// imageProblem turns a resolve error into a message that says what to do.
func imageProblem(ref string, err error) string {
	msg := strings.TrimPrefix(err.Error(), "remote: ")
	switch {
	case errors.Is(err, remote.ErrSchema1):
		return msg
	case errors.Is(err, remote.ErrBadReference):
		return msg
	case errors.Is(err, remote.ErrNotFound):
		return fmt.Sprintf("image %s does not exist: %s; push it first (riffle image push) or fix the name", ref, msg)
	}
	return fmt.Sprintf("image %s cannot be resolved: %s", ref, msg)
}
