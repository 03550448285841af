package store

import (
	"errors"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func FuzzFilter(f *testing.F) {
	for _, s := range []string{
		`status.state="SUCCEEDED"`, `name="projects/p/locations/l/jobs/a" OR status.state=FAILED`,
		`NOT (labels.team:"x" AND -uid="u") create_time>"2026-01-01T00:00:00Z"`, `(((`, `a=`, `"unterminated`,
	} {
		f.Add(s)
	}
	j := &batchpb.Job{Name: "projects/p/locations/l/jobs/a", Uid: "u", Labels: map[string]string{"team": "x"},
		Status: &batchpb.JobStatus{State: batchpb.JobStatus_RUNNING}, CreateTime: timestamppb.New(time.Unix(1e9, 0))}
	f.Fuzz(func(t *testing.T, filter string) {
		pred, err := parseFilter(filter, jobFields)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error %v is not ErrInvalidArgument", err)
			}
			return
		}
		pred(j)
	})
}
