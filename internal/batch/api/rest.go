package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	"google.golang.org/genproto/googleapis/cloud/location"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

// HTTPHandler serves the Batch v1 REST API. Mount it at the root of the
// server's mux for the /v1/ prefix (it only answers paths under /v1/).
//
// It follows Google's HTTP/JSON transcoding: bodies and responses are
// proto-JSON; query parameters may use lowerCamel or snake_case names;
// alt/$alt=json (optionally ";enum-encoding=int", which the official
// client sends and which makes enums numbers in the response) and the
// other standard system parameters are accepted; unknown parameters and
// body fields are refused; errors use the google.rpc.Status envelope
// {"error":{"code","message","status","details"}}.
func (s *Server) HTTPHandler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

// systemParams are Google's standard query parameters, accepted and
// (except alt and prettyPrint) ignored.
var systemParams = map[string]bool{
	"alt": true, "prettyPrint": true, "fields": true, "key": true, "quotaUser": true,
	"access_token": true, "upload_protocol": true, "uploadType": true, "callback": true, "oauth_token": true,
}

type restReq struct {
	r         *http.Request
	q         url.Values
	enumInts  bool
	pretty    bool
	paramSeen map[string]bool
}

// param returns a query parameter given in lowerCamel or snake_case.
func (rr *restReq) param(camel string) string {
	if v := rr.q.Get(camel); v != "" {
		return v
	}
	return rr.q.Get(snake(camel))
}

func snake(camel string) string {
	var b strings.Builder
	for _, c := range camel {
		if c >= 'A' && c <= 'Z' {
			b.WriteByte('_')
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (rr *restReq) int32Param(camel string) (int32, error) {
	v := rr.param(camel)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, invalid(camel, fmt.Sprintf("%q is not an integer", v))
	}
	return int32(n), nil
}

// checkParams refuses query parameters the method does not take, as
// Google's front end does, naming the parameter.
func (rr *restReq) checkParams() error {
	for k := range rr.q {
		name := strings.TrimPrefix(k, "$")
		if systemParams[name] {
			continue
		}
		camel := name
		if strings.Contains(name, "_") {
			parts := strings.Split(name, "_")
			for i := 1; i < len(parts); i++ {
				if parts[i] != "" {
					parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
				}
			}
			camel = strings.Join(parts, "")
		}
		if !rr.paramSeen[camel] {
			return invalid(k, "unknown query parameter")
		}
	}
	return nil
}

// parseQuery splits only on '&': Go's url.ParseQuery drops pairs with a
// raw ';', which "$alt=json;enum-encoding=int" has when not escaped.
func parseQuery(raw string) url.Values {
	q := url.Values{}
	for _, kv := range strings.Split(raw, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		ku, err1 := url.QueryUnescape(k)
		vu, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			ku, vu = k, v
		}
		q.Add(ku, vu)
	}
	return q
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	rr := &restReq{r: r, q: parseQuery(r.URL.RawQuery), paramSeen: map[string]bool{}}
	resp, err := s.route(r.Context(), rr)
	if err != nil {
		s.writeError(w, rr, err)
		return
	}
	mo := protojson.MarshalOptions{UseEnumNumbers: rr.enumInts}
	if rr.pretty {
		mo.Multiline = true
	}
	b, err := mo.Marshal(resp)
	if err != nil {
		s.writeError(w, rr, status.Errorf(codes.Internal, "encoding response: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// alt checks the alt/$alt parameter: only JSON is served.
func (rr *restReq) alt() error {
	for _, k := range []string{"alt", "$alt"} {
		for _, v := range rr.q[k] {
			parts := strings.Split(v, ";")
			if parts[0] != "json" {
				return invalid(k, fmt.Sprintf("%q is not supported; use json", v))
			}
			for _, p := range parts[1:] {
				switch strings.TrimSpace(p) {
				case "enum-encoding=int":
					rr.enumInts = true
				case "enum-encoding=string", "":
				default:
					return invalid(k, fmt.Sprintf("unknown option %q; use json or json;enum-encoding=int", p))
				}
			}
		}
	}
	for _, k := range []string{"prettyPrint", "$prettyPrint"} {
		if v := rr.q.Get(k); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return invalid(k, fmt.Sprintf("%q is not true or false", v))
			}
			rr.pretty = b
		}
	}
	return nil
}

var errMethod = errors.New("method not allowed")

func (s *Server) route(ctx context.Context, rr *restReq) (proto.Message, error) {
	if err := rr.alt(); err != nil {
		return nil, err
	}
	r := rr.r
	// Use the escaped path, so a job ID containing %2F cannot pose as
	// another path segment.
	path := r.URL.EscapedPath()
	if !strings.HasPrefix(path, "/v1/") {
		return nil, status.Errorf(codes.NotFound, "no such path %q; the Batch API is under /v1/", path)
	}
	path = strings.TrimPrefix(path, "/v1/")
	verb := ""
	if i := strings.LastIndex(path, ":"); i > strings.LastIndex(path, "/") {
		path, verb = path[:i], path[i+1:]
	}
	segs := strings.Split(path, "/")
	for i, sgm := range segs {
		u, err := url.PathUnescape(sgm)
		if err != nil || u == "" || strings.Contains(u, "/") {
			return nil, status.Errorf(codes.NotFound, "no such path %q", r.URL.Path)
		}
		segs[i] = u
	}
	name := strings.Join(segs, "/")
	n := len(segs)
	shape := func(want ...string) bool {
		if n != len(want) {
			return false
		}
		for i, w := range want {
			if w != "*" && segs[i] != w {
				return false
			}
		}
		return true
	}
	method := r.Method
	// do runs f for the route's method after refusing parameters the
	// method does not take.
	do := func(want string, params []string, f func() (proto.Message, error)) (proto.Message, error) {
		if method != want && !(want == http.MethodGet && method == http.MethodHead) {
			return nil, errMethod
		}
		for _, p := range params {
			rr.paramSeen[p] = true
		}
		if err := rr.checkParams(); err != nil {
			return nil, err
		}
		return f()
	}
	list := []string{"filter", "pageSize", "pageToken"}
	var resp proto.Message
	var err error
	switch {
	case verb == "" && shape("projects", "*", "locations"):
		resp, err = do(http.MethodGet, list, func() (proto.Message, error) {
			ps, err := rr.int32Param("pageSize")
			if err != nil {
				return nil, err
			}
			_ = ps // one short page: locations are few
			rr.param("pageToken")
			return s.ListLocations(ctx, &location.ListLocationsRequest{Name: name[:strings.LastIndex(name, "/")], Filter: rr.param("filter")})
		})
	case verb == "" && shape("projects", "*", "locations", "*"):
		resp, err = do(http.MethodGet, nil, func() (proto.Message, error) {
			return s.GetLocation(ctx, &location.GetLocationRequest{Name: name})
		})
	case verb == "" && shape("projects", "*", "locations", "*", "jobs"):
		parent := name[:strings.LastIndex(name, "/")]
		switch method {
		case http.MethodPost:
			resp, err = do(http.MethodPost, []string{"jobId", "requestId"}, func() (proto.Message, error) {
				j := new(batchpb.Job)
				if err := s.readBody(rr, j, "job"); err != nil {
					return nil, err
				}
				return s.CreateJob(ctx, &batchpb.CreateJobRequest{
					Parent: parent, JobId: rr.param("jobId"), RequestId: rr.param("requestId"), Job: j,
				})
			})
		default:
			resp, err = do(http.MethodGet, append(list, "orderBy"), func() (proto.Message, error) {
				ps, err := rr.int32Param("pageSize")
				if err != nil {
					return nil, err
				}
				return s.ListJobs(ctx, &batchpb.ListJobsRequest{
					Parent: parent, Filter: rr.param("filter"), OrderBy: rr.param("orderBy"), PageSize: ps, PageToken: rr.param("pageToken"),
				})
			})
		}
	case verb == "" && shape("projects", "*", "locations", "*", "jobs", "*"):
		switch method {
		case http.MethodDelete:
			resp, err = do(http.MethodDelete, []string{"reason", "requestId"}, func() (proto.Message, error) {
				return s.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: name, Reason: rr.param("reason"), RequestId: rr.param("requestId")})
			})
		default:
			resp, err = do(http.MethodGet, nil, func() (proto.Message, error) {
				return s.GetJob(ctx, &batchpb.GetJobRequest{Name: name})
			})
		}
	case verb == "cancel" && shape("projects", "*", "locations", "*", "jobs", "*"):
		resp, err = do(http.MethodPost, []string{"requestId"}, func() (proto.Message, error) {
			req := new(batchpb.CancelJobRequest)
			if err := s.readBody(rr, req, ""); err != nil {
				return nil, err
			}
			if req.Name != "" && req.Name != name {
				return nil, invalid("name", fmt.Sprintf("%q in the body does not match %q in the URL", req.Name, name))
			}
			req.Name = name
			if id := rr.param("requestId"); id != "" && req.RequestId == "" {
				req.RequestId = id
			}
			return s.CancelJob(ctx, req)
		})
	case verb == "" && shape("projects", "*", "locations", "*", "jobs", "*", "taskGroups", "*", "tasks"):
		resp, err = do(http.MethodGet, list, func() (proto.Message, error) {
			ps, err := rr.int32Param("pageSize")
			if err != nil {
				return nil, err
			}
			return s.ListTasks(ctx, &batchpb.ListTasksRequest{
				Parent: name[:strings.LastIndex(name, "/")], Filter: rr.param("filter"), PageSize: ps, PageToken: rr.param("pageToken"),
			})
		})
	case verb == "" && shape("projects", "*", "locations", "*", "jobs", "*", "taskGroups", "*", "tasks", "*"):
		resp, err = do(http.MethodGet, nil, func() (proto.Message, error) {
			return s.GetTask(ctx, &batchpb.GetTaskRequest{Name: name})
		})
	case verb == "" && shape("projects", "*", "locations", "*", "operations"):
		resp, err = do(http.MethodGet, list, func() (proto.Message, error) {
			ps, err := rr.int32Param("pageSize")
			if err != nil {
				return nil, err
			}
			return s.ListOperations(ctx, &longrunningpb.ListOperationsRequest{
				Name: name[:strings.LastIndex(name, "/")], Filter: rr.param("filter"), PageSize: ps, PageToken: rr.param("pageToken"),
			})
		})
	case verb == "" && shape("projects", "*", "locations", "*", "operations", "*"):
		switch method {
		case http.MethodDelete:
			resp, err = do(http.MethodDelete, nil, func() (proto.Message, error) {
				return s.DeleteOperation(ctx, &longrunningpb.DeleteOperationRequest{Name: name})
			})
		default:
			resp, err = do(http.MethodGet, nil, func() (proto.Message, error) {
				return s.GetOperation(ctx, &longrunningpb.GetOperationRequest{Name: name})
			})
		}
	case verb == "cancel" && shape("projects", "*", "locations", "*", "operations", "*"):
		resp, err = do(http.MethodPost, nil, func() (proto.Message, error) {
			if err := s.readBody(rr, new(longrunningpb.CancelOperationRequest), ""); err != nil {
				return nil, err
			}
			return s.CancelOperation(ctx, &longrunningpb.CancelOperationRequest{Name: name})
		})
	default:
		return nil, status.Errorf(codes.NotFound, "no such method: %s %s", method, r.URL.Path)
	}
	if errors.Is(err, errMethod) {
		return nil, status.Errorf(codes.Unimplemented, "%s is not supported on %s", method, r.URL.Path)
	}
	return resp, err
}

// readBody decodes a proto-JSON body strictly into m; errors name the
// field under prefix ("job" for a CreateJob body). An empty body is an
// empty message, except for a job.
func (s *Server) readBody(rr *restReq, m proto.Message, prefix string) error {
	body := http.MaxBytesReader(nil, rr.r.Body, s.opts.MaxBodyBytes)
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &tooLarge{limit: mbe.Limit}
		}
		return status.Errorf(codes.InvalidArgument, "reading request body: %v", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		if prefix == "job" {
			return invalid("job", "the request body must be the job, e.g. {\"taskGroups\": [...]}")
		}
		return nil
	}
	if err := job.Unmarshal(data, m, job.Strict); err != nil {
		if prefix == "" {
			prefix = "body"
		}
		return jobErr(err, prefix)
	}
	return nil
}

// tooLarge is an oversized body, answered with HTTP 413.
type tooLarge struct{ limit int64 }

func (e *tooLarge) Error() string {
	return fmt.Sprintf("request body is larger than the %d-byte limit", e.limit)
}

// httpCode is the HTTP status for each canonical code (google.rpc.Code).
var httpCode = map[codes.Code]int{
	codes.OK: 200, codes.Canceled: 499, codes.Unknown: 500, codes.InvalidArgument: 400,
	codes.DeadlineExceeded: 504, codes.NotFound: 404, codes.AlreadyExists: 409,
	codes.PermissionDenied: 403, codes.ResourceExhausted: 429, codes.FailedPrecondition: 400,
	codes.Aborted: 409, codes.OutOfRange: 400, codes.Unimplemented: 501, codes.Internal: 500,
	codes.Unavailable: 503, codes.DataLoss: 500, codes.Unauthenticated: 401,
}

// codeName is google.rpc.Code's enum name, which the envelope's "status"
// carries (grpc-go's String differs for some codes, e.g. "Canceled").
var codeName = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
	codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
	codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
	codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

type envelope struct {
	Error envelopeBody `json:"error"`
}

type envelopeBody struct {
	Code    int               `json:"code"`
	Message string            `json:"message"`
	Status  string            `json:"status"`
	Details []json.RawMessage `json:"details,omitempty"`
}

func (s *Server) writeError(w http.ResponseWriter, rr *restReq, err error) {
	var tl *tooLarge
	var st *status.Status
	httpStatus := 0
	if errors.As(err, &tl) {
		st, _ = status.New(codes.InvalidArgument, tl.Error()).WithDetails(&errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "body", Description: tl.Error()}},
		})
		httpStatus = http.StatusRequestEntityTooLarge
		// Don't read the rest of a huge body; close the connection.
		w.Header().Set("Connection", "close")
	} else {
		st = status.Convert(toStatus(err))
		httpStatus = httpCode[st.Code()]
		if httpStatus == 0 {
			httpStatus = 500
		}
	}
	env := envelope{Error: envelopeBody{Code: httpStatus, Message: st.Message(), Status: codeName[st.Code()]}}
	for _, d := range st.Proto().GetDetails() {
		if b, err := protojson.Marshal(d); err == nil {
			env.Error.Details = append(env.Error.Details, b)
		}
	}
	b, _ := json.Marshal(env)
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(httpStatus)
	w.Write(b)
}
