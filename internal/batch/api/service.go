package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	"google.golang.org/genproto/googleapis/cloud/location"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/batch/store"
)

// Runner is what the API needs from whatever runs jobs (the scheduler).
// Both methods must return quickly; the work happens elsewhere.
//
// Submit is called once for each newly created job (state QUEUED). The
// runner then reports progress through the store (SetJobState,
// SetTaskState, ...).
//
// Cancel is called when a job is being cancelled or deleted (its state is
// CANCELLATION_IN_PROGRESS or DELETION_IN_PROGRESS). The runner stops the
// job's tasks, if it runs any, and then must call store.FinishStop, which
// completes the pending operation, also for jobs it never started. A
// delete of a job that had already ended goes to the runner too, so it can
// remove what it keeps of the job (logs, work files) before the ID can be
// reused; a cancel of one is refused by the store.
type Runner interface {
	Submit(ctx context.Context, jobName string)
	Cancel(ctx context.Context, jobName string)
}

// Options configure a Server. The zero value is valid.
type Options struct {
	// Locations are the locations this server serves, listed by
	// ListLocations. When set, jobs are created and listed only in them
	// (listing in "-" covers all): a job in another location would run
	// here under a name that says it runs elsewhere. When empty, any
	// well-formed location is accepted and ListLocations lists "local".
	Locations []string
	// MaxBodyBytes limits REST request bodies; default job.MaxConfigSize
	// (4 MiB). Larger bodies get HTTP 413.
	MaxBodyBytes int64
	// Logger receives request errors (5xx) and runner hand-offs; default
	// discards, as a library should.
	Logger *slog.Logger
	// Now is the clock for job creation; default time.Now.
	Now func() time.Time
	// Admit, when set, is called on each new job after validation and
	// defaults and before it is stored, for checks that need I/O (e.g.
	// that every container image exists and is not schema 1). A
	// *job.FieldError, job.FieldErrors or *job.UnsupportedError it returns
	// becomes INVALID_ARGUMENT naming the field under "job."; a gRPC
	// status error is passed through; anything else is INTERNAL.
	Admit func(ctx context.Context, j *batchpb.Job) error
}

// Server is the Batch v1 API over one store: served as REST by
// HTTPHandler and as gRPC by RegisterGRPC, both through the same methods.
type Server struct {
	batchpb.UnimplementedBatchServiceServer
	longrunningpb.UnimplementedOperationsServer
	location.UnimplementedLocationsServer

	st     *store.Store
	runner Runner
	opts   Options
	log    *slog.Logger
	bg     context.Context // for runner calls that outlive a request
	// onlyServed: Options.Locations was given, so other locations are
	// refused (see checkServed).
	onlyServed bool
}

var (
	_ batchpb.BatchServiceServer     = (*Server)(nil)
	_ longrunningpb.OperationsServer = (*Server)(nil)
	_ location.LocationsServer       = (*Server)(nil)
)

// New returns a Server over st. runner may be nil: jobs then stay QUEUED,
// and cancel and delete complete at once. With a nil runner, New also
// completes stops that a previous process left in progress; with a
// runner, recovering those is the runner's job (store.JobsInState).
func New(st *store.Store, runner Runner, opts Options) (*Server, error) {
	if st == nil {
		return nil, errors.New("api: a store is required")
	}
	served := len(opts.Locations) > 0
	if !served {
		opts.Locations = []string{"local"}
	}
	for _, l := range opts.Locations {
		if !validID(l) {
			return nil, fmt.Errorf("api: location %q: use lowercase letters, digits and hyphens", l)
		}
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = job.MaxConfigSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{st: st, runner: runner, opts: opts, log: opts.Logger, bg: context.Background(), onlyServed: served}
	if runner == nil {
		ctx := context.Background()
		jobs, err := st.JobsInState(ctx, batchpb.JobStatus_CANCELLATION_IN_PROGRESS, batchpb.JobStatus_DELETION_IN_PROGRESS)
		if err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		for _, j := range jobs {
			if err := st.FinishStop(ctx, j.Name); err != nil {
				return nil, fmt.Errorf("api: finishing stop of %s: %w", j.Name, err)
			}
		}
	}
	return s, nil
}

// RegisterGRPC registers google.cloud.batch.v1.BatchService,
// google.longrunning.Operations and google.cloud.location.Locations on g.
// Serve g on its own listener; GRPCServerOptions gives the message size
// limit matching the REST body limit.
func (s *Server) RegisterGRPC(g *grpc.Server) {
	batchpb.RegisterBatchServiceServer(g, s)
	longrunningpb.RegisterOperationsServer(g, s)
	location.RegisterLocationsServer(g, s)
}

// GRPCServerOptions returns the options a grpc.Server serving s should
// be built with (the receive size limit).
func (s *Server) GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(int(s.opts.MaxBodyBytes))}
}

func validID(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkParent validates "projects/P/locations/L".
func checkParent(field, parent string, allowAnyLocation bool) error {
	p := strings.Split(parent, "/")
	if len(p) != 4 || p[0] != "projects" || p[2] != "locations" || p[1] == "" || p[3] == "" || strings.ContainsAny(parent, " ?#") {
		return invalid(field, fmt.Sprintf("%q must be projects/PROJECT/locations/LOCATION", clip(parent)))
	}
	if err := checkProject(field, p[1]); err != nil {
		return err
	}
	if p[3] == "-" && allowAnyLocation {
		return nil
	}
	if !validID(p[3]) {
		return invalid(field, fmt.Sprintf("location %q: use lowercase letters, digits and hyphens", clip(p[3])))
	}
	return nil
}

// checkProject refuses project IDs that could not name a Google Cloud
// project and would reach the data dir's paths: "..", "a/b", 5,000
// characters. Riffle is looser than Google's 6 to 30 characters, since
// local projects are often called "p" or "default".
func checkProject(field, project string) error {
	if !validID(project) {
		return invalid(field, fmt.Sprintf("project %q: use 1 to 63 lowercase letters, digits and hyphens, like my-project", clip(project)))
	}
	return nil
}

// checkServed refuses a location this server does not serve (see
// Options.Locations); "-" (every location) passes when allowAny.
func (s *Server) checkServed(field, parent string, allowAny bool) error {
	loc := parent[strings.LastIndexByte(parent, '/')+1:]
	if !s.onlyServed || (allowAny && loc == "-") || slices.Contains(s.opts.Locations, loc) {
		return nil
	}
	return invalid(field, fmt.Sprintf("location %q is not served here; this server serves %s (riffle serve --location)", clip(loc), strings.Join(s.opts.Locations, ", ")))
}

func checkJobName(field, name string) error {
	if p, l, id, ok := job.SplitName(name); !ok || !validID(p) || !validID(l) || job.ValidateJobID(id) != nil {
		return invalid(field, fmt.Sprintf("%q must be projects/PROJECT/locations/LOCATION/jobs/JOB", clip(name)))
	}
	return nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// invalid is an INVALID_ARGUMENT status with a BadRequest detail naming
// the field.
func invalid(field, msg string) error {
	return badRequest(fmt.Sprintf("%s: %s", field, msg), []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}})
}

func badRequest(msg string, vs []*errdetails.BadRequest_FieldViolation) error {
	st := status.New(codes.InvalidArgument, msg)
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: vs}); err == nil {
		st = d
	}
	return st.Err()
}

// jobErr turns a job package error into INVALID_ARGUMENT, prefixing field
// paths with prefix ("job" for the request's job field).
func jobErr(err error, prefix string) error {
	var vs []*errdetails.BadRequest_FieldViolation
	var msgs []string
	add := func(path, msg string) {
		f := prefix
		if path != "" {
			f = prefix + "." + path
		}
		vs = append(vs, &errdetails.BadRequest_FieldViolation{Field: f, Description: msg})
		msgs = append(msgs, f+": "+msg)
	}
	var fe *job.FieldError
	var fes job.FieldErrors
	var ue *job.UnsupportedError
	switch {
	case errors.As(err, &ue):
		for _, f := range ue.Features {
			add(f.Path, strings.TrimPrefix(f.String(), f.Path+": "))
		}
	case errors.As(err, &fes):
		for _, e := range fes {
			add(e.Path, e.Msg)
		}
	case errors.As(err, &fe):
		add(fe.Path, fe.Msg)
	default:
		return toStatus(err)
	}
	return badRequest(strings.Join(msgs, "; "), vs)
}

// toStatus maps store and context errors to gRPC status errors.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	msg := err.Error()
	for _, sentinel := range []error{store.ErrNotFound, store.ErrAlreadyExists, store.ErrInvalidArgument, store.ErrFailedPrecondition} {
		msg = strings.Replace(msg, sentinel.Error()+": ", "", 1)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, "not found: "+msg)
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, msg)
	case errors.Is(err, store.ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, store.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, msg)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, msg)
	}
	return status.Error(codes.Internal, msg)
}

func (s *Server) internal(ctx context.Context, what string, err error) error {
	st := toStatus(err)
	if status.Code(st) == codes.Internal {
		s.log.ErrorContext(ctx, "batch api: "+what, "err", err)
	}
	return st
}

// CreateJob validates, defaults and stores a job, then hands it to the
// runner. A missing job_id is generated; request_id makes retries safe.
func (s *Server) CreateJob(ctx context.Context, req *batchpb.CreateJobRequest) (*batchpb.Job, error) {
	if err := checkParent("parent", req.GetParent(), false); err != nil {
		return nil, err
	}
	if err := s.checkServed("parent", req.GetParent(), false); err != nil {
		return nil, err
	}
	if len(req.GetRequestId()) > 256 {
		return nil, invalid("requestId", "must be at most 256 characters; use a UUID")
	}
	id := req.GetJobId()
	if id == "" {
		id = job.NewJobID("", s.opts.Now())
	} else if err := job.ValidateJobID(id); err != nil {
		var fe *job.FieldError
		errors.As(err, &fe)
		return nil, invalid("jobId", fe.Msg)
	}
	if req.GetJob() == nil {
		return nil, invalid("job", "is required")
	}
	j := req.GetJob()
	if err := job.Validate(j); err != nil {
		return nil, jobErr(err, "job")
	}
	ignored, err := job.CheckSupport(j)
	if err != nil {
		return nil, jobErr(err, "job")
	}
	job.Prepare(j, req.GetParent(), id, s.opts.Now(), ignored)
	if s.opts.Admit != nil {
		if err := s.opts.Admit(ctx, j); err != nil {
			return nil, jobErr(err, "job")
		}
	}
	stored, created, err := s.st.CreateJob(ctx, j, req.GetRequestId())
	if err != nil {
		return nil, s.internal(ctx, "create job", err)
	}
	if created && s.runner != nil {
		s.runner.Submit(s.bg, stored.Name)
	}
	return stored, nil
}

// GetJob returns a job.
func (s *Server) GetJob(ctx context.Context, req *batchpb.GetJobRequest) (*batchpb.Job, error) {
	if err := checkJobName("name", req.GetName()); err != nil {
		return nil, err
	}
	j, err := s.st.GetJob(ctx, req.GetName())
	if err != nil {
		return nil, s.internal(ctx, "get job", err)
	}
	return j, nil
}

// ListJobs lists jobs with filter, orderBy and paging (see store.ListQuery).
func (s *Server) ListJobs(ctx context.Context, req *batchpb.ListJobsRequest) (*batchpb.ListJobsResponse, error) {
	if err := checkParent("parent", req.GetParent(), true); err != nil {
		return nil, err
	}
	if err := s.checkServed("parent", req.GetParent(), true); err != nil {
		return nil, err
	}
	jobs, next, err := s.st.ListJobs(ctx, req.GetParent(), store.ListQuery{
		Filter: req.GetFilter(), OrderBy: req.GetOrderBy(), PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.internal(ctx, "list jobs", err)
	}
	return &batchpb.ListJobsResponse{Jobs: jobs, NextPageToken: next}, nil
}

// DeleteJob starts deleting a job and returns the operation tracking it.
func (s *Server) DeleteJob(ctx context.Context, req *batchpb.DeleteJobRequest) (*longrunningpb.Operation, error) {
	return s.stop(ctx, req.GetName(), store.VerbDelete, req.GetRequestId())
}

// CancelJob starts cancelling a job and returns the operation tracking it.
func (s *Server) CancelJob(ctx context.Context, req *batchpb.CancelJobRequest) (*longrunningpb.Operation, error) {
	return s.stop(ctx, req.GetName(), store.VerbCancel, req.GetRequestId())
}

func (s *Server) stop(ctx context.Context, name, verb, requestID string) (*longrunningpb.Operation, error) {
	if err := checkJobName("name", name); err != nil {
		return nil, err
	}
	before, err := s.st.GetJob(ctx, name)
	if err != nil {
		return nil, s.internal(ctx, verb+" job", err)
	}
	op, err := s.st.BeginStop(ctx, name, verb, requestID)
	if err != nil {
		return nil, s.internal(ctx, verb+" job", err)
	}
	if s.runner != nil && (verb == store.VerbDelete || !store.Terminal(before.GetStatus().GetState())) {
		s.runner.Cancel(s.bg, name)
		return op, nil
	}
	// Nothing runs: finish now. The operation returned is still the
	// pending one, as Batch returns it; the client polls and sees it done.
	if err := s.st.FinishStop(ctx, name); err != nil {
		return nil, s.internal(ctx, verb+" job", err)
	}
	return op, nil
}

// GetTask returns a task.
func (s *Server) GetTask(ctx context.Context, req *batchpb.GetTaskRequest) (*batchpb.Task, error) {
	if _, _, err := store.ParseTaskName(req.GetName()); errors.Is(err, store.ErrInvalidArgument) {
		return nil, invalid("name", fmt.Sprintf("%q must be projects/P/locations/L/jobs/J/taskGroups/group0/tasks/N", req.GetName()))
	}
	t, err := s.st.GetTask(ctx, req.GetName())
	if err != nil {
		return nil, s.internal(ctx, "get task", err)
	}
	return t, nil
}

// ListTasks lists the tasks of a task group in index order.
func (s *Server) ListTasks(ctx context.Context, req *batchpb.ListTasksRequest) (*batchpb.ListTasksResponse, error) {
	ts, next, err := s.st.ListTasks(ctx, req.GetParent(), store.ListQuery{
		Filter: req.GetFilter(), PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.internal(ctx, "list tasks", err)
	}
	return &batchpb.ListTasksResponse{Tasks: ts, NextPageToken: next}, nil
}

// GetOperation returns a long-running operation.
func (s *Server) GetOperation(ctx context.Context, req *longrunningpb.GetOperationRequest) (*longrunningpb.Operation, error) {
	op, err := s.st.GetOperation(ctx, req.GetName())
	if err != nil {
		return nil, s.internal(ctx, "get operation", err)
	}
	return op, nil
}

// ListOperations lists the operations of a location
// (name "projects/P/locations/L").
func (s *Server) ListOperations(ctx context.Context, req *longrunningpb.ListOperationsRequest) (*longrunningpb.ListOperationsResponse, error) {
	if err := checkParent("name", req.GetName(), false); err != nil {
		return nil, err
	}
	ops, next, err := s.st.ListOperations(ctx, req.GetName(), store.ListQuery{
		Filter: req.GetFilter(), PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.internal(ctx, "list operations", err)
	}
	return &longrunningpb.ListOperationsResponse{Operations: ops, NextPageToken: next}, nil
}

// DeleteOperation forgets an operation record.
func (s *Server) DeleteOperation(ctx context.Context, req *longrunningpb.DeleteOperationRequest) (*emptypb.Empty, error) {
	if err := s.st.DeleteOperation(ctx, req.GetName()); err != nil {
		return nil, s.internal(ctx, "delete operation", err)
	}
	return &emptypb.Empty{}, nil
}

// CancelOperation is refused: cancel and delete operations cannot be
// undone, as in Batch.
func (s *Server) CancelOperation(ctx context.Context, req *longrunningpb.CancelOperationRequest) (*emptypb.Empty, error) {
	if _, err := s.st.GetOperation(ctx, req.GetName()); err != nil {
		return nil, s.internal(ctx, "cancel operation", err)
	}
	return nil, status.Error(codes.Unimplemented, "operations of job cancel and delete cannot be cancelled")
}

// WaitOperation waits until the operation is done or the timeout (default
// and maximum 60s) passes, then returns it.
func (s *Server) WaitOperation(ctx context.Context, req *longrunningpb.WaitOperationRequest) (*longrunningpb.Operation, error) {
	wait := 60 * time.Second
	if d := req.GetTimeout(); d != nil && d.AsDuration() > 0 && d.AsDuration() < wait {
		wait = d.AsDuration()
	}
	deadline := time.Now().Add(wait)
	for {
		op, err := s.st.GetOperation(ctx, req.GetName())
		if err != nil || op.Done || time.Now().After(deadline) {
			if err != nil {
				return nil, s.internal(ctx, "wait operation", err)
			}
			return op, nil
		}
		select {
		case <-ctx.Done():
			return nil, toStatus(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Server) location(project, id string) *location.Location {
	return &location.Location{
		Name:        "projects/" + project + "/locations/" + id,
		LocationId:  id,
		DisplayName: id,
	}
}

// ListLocations lists the configured locations of a project
// (name "projects/P").
func (s *Server) ListLocations(ctx context.Context, req *location.ListLocationsRequest) (*location.ListLocationsResponse, error) {
	p := strings.Split(req.GetName(), "/")
	if len(p) != 2 || p[0] != "projects" || p[1] == "" {
		return nil, invalid("name", fmt.Sprintf("%q must be projects/PROJECT", req.GetName()))
	}
	if req.GetFilter() != "" {
		return nil, invalid("filter", "locations cannot be filtered")
	}
	resp := &location.ListLocationsResponse{}
	for _, l := range s.opts.Locations {
		resp.Locations = append(resp.Locations, s.location(p[1], l))
	}
	return resp, nil
}

// GetLocation describes one location; every well-formed location is
// described, whether or not this server serves it (see Options.Locations).
func (s *Server) GetLocation(ctx context.Context, req *location.GetLocationRequest) (*location.Location, error) {
	if err := checkParent("name", req.GetName(), false); err != nil {
		return nil, err
	}
	p := strings.Split(req.GetName(), "/")
	return s.location(p[1], p[3]), nil
}
