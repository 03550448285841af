package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	bolt "go.etcd.io/bbolt"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

// Page sizes for list calls.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ListQuery holds the list parameters the Batch API takes.
//
// Filter is the AIP-160 subset described in filter.go: for jobs the
// fields name, uid, status.state, create_time, update_time and
// labels.KEY; for tasks name and status.state (also spelt State, as
// ListTasksRequest documents). OrderBy for jobs is a comma-separated list
// of name, create_time or update_time, each optionally followed by desc
// (Batch documents "name", "name desc", "create_time", "create_time
// desc"); the default is name. Tasks are always in index order.
// PageSize 0 means DefaultPageSize; larger than MaxPageSize is capped.
// PageToken is the NextPageToken of the previous page of the same query.
type ListQuery struct {
	Filter    string
	OrderBy   string
	PageSize  int32
	PageToken string
}

func sortStrings(s []string) { sort.Strings(s) }

func rfc3339(t interface{ AsTime() time.Time }, valid bool) string {
	if !valid {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

var jobFields = fieldSet[*batchpb.Job]{
	fields: map[string]fieldDef[*batchpb.Job]{
		"name":         {get: func(j *batchpb.Job) string { return j.GetName() }},
		"uid":          {get: func(j *batchpb.Job) string { return j.GetUid() }},
		"status.state": {kind: kindEnum, get: func(j *batchpb.Job) string { return j.GetStatus().GetState().String() }, norm: enumNorm(batchpb.JobStatus_State_value, batchpb.JobStatus_State_name)},
		"create_time":  {kind: kindTime, get: func(j *batchpb.Job) string { return rfc3339(j.GetCreateTime(), j.GetCreateTime() != nil) }},
		"update_time":  {kind: kindTime, get: func(j *batchpb.Job) string { return rfc3339(j.GetUpdateTime(), j.GetUpdateTime() != nil) }},
	},
	prefix: map[string]func(*batchpb.Job, string) (string, bool){
		"labels": func(j *batchpb.Job, k string) (string, bool) { v, ok := j.GetLabels()[k]; return v, ok },
	},
}

func init() {
	// camelCase spellings, which gcloud users also write.
	jobFields.fields["createTime"] = jobFields.fields["create_time"]
	jobFields.fields["updateTime"] = jobFields.fields["update_time"]
}

var taskState = fieldDef[*batchpb.Task]{kind: kindEnum, get: func(t *batchpb.Task) string { return t.GetStatus().GetState().String() }, norm: enumNorm(batchpb.TaskStatus_State_value, batchpb.TaskStatus_State_name)}

var taskFields = fieldSet[*batchpb.Task]{
	fields: map[string]fieldDef[*batchpb.Task]{
		"name":         {get: func(t *batchpb.Task) string { return t.GetName() }},
		"status.state": taskState,
		"State":        taskState,
		"state":        taskState,
	},
}

type sortVal struct {
	s string
	t int64
}

func (a sortVal) cmp(b sortVal) int {
	if a.t != b.t {
		if a.t < b.t {
			return -1
		}
		return 1
	}
	return strings.Compare(a.s, b.s)
}

type orderKey[T any] struct {
	get  func(T) sortVal
	desc bool
}

var jobOrderFields = map[string]func(*batchpb.Job) sortVal{
	"name":        func(j *batchpb.Job) sortVal { return sortVal{s: j.GetName()} },
	"create_time": func(j *batchpb.Job) sortVal { return sortVal{t: j.GetCreateTime().AsTime().UnixNano()} },
	"update_time": func(j *batchpb.Job) sortVal { return sortVal{t: j.GetUpdateTime().AsTime().UnixNano()} },
}

func parseOrderBy(orderBy string) ([]orderKey[*batchpb.Job], error) {
	var keys []orderKey[*batchpb.Job]
	if strings.TrimSpace(orderBy) == "" {
		orderBy = "name"
	}
	seenName := false
	for _, part := range strings.Split(orderBy, ",") {
		f := strings.Fields(part)
		if len(f) == 0 || len(f) > 2 || (len(f) == 2 && f[1] != "desc" && f[1] != "asc") {
			return nil, fmt.Errorf("%w: orderBy: %q is not FIELD or FIELD desc", ErrInvalidArgument, strings.TrimSpace(part))
		}
		name := map[string]string{"createTime": "create_time", "updateTime": "update_time"}[f[0]]
		if name == "" {
			name = f[0]
		}
		get := jobOrderFields[name]
		if get == nil {
			return nil, fmt.Errorf("%w: orderBy: cannot order by %q; use name, create_time or update_time, optionally with desc", ErrInvalidArgument, f[0])
		}
		seenName = seenName || name == "name"
		keys = append(keys, orderKey[*batchpb.Job]{get: get, desc: len(f) == 2 && f[1] == "desc"})
	}
	if !seenName {
		// Names break ties, so pages never overlap or skip.
		keys = append(keys, orderKey[*batchpb.Job]{get: jobOrderFields["name"]})
	}
	return keys, nil
}

// pageToken records where a page ended, by sort key rather than offset,
// so creating or deleting jobs between pages neither repeats nor skips
// the rest. Q fingerprints the query: a token is only good for the query
// that made it.
type pageToken struct {
	Q    string   `json:"q"`
	Keys []string `json:"k"`
	Nums []int64  `json:"n"`
}

func fingerprint(q ListQuery, scope string) string {
	h := sha256.Sum256([]byte(scope + "\x00" + q.Filter + "\x00" + q.OrderBy))
	return base64.RawURLEncoding.EncodeToString(h[:9])
}

func paginate[T any](items []T, q ListQuery, scope string, keys []orderKey[T]) ([]T, string, error) {
	if q.PageSize < 0 {
		return nil, "", fmt.Errorf("%w: pageSize must not be negative", ErrInvalidArgument)
	}
	size := int(q.PageSize)
	if size == 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)
	vals := func(x T) []sortVal {
		v := make([]sortVal, len(keys))
		for i, k := range keys {
			v[i] = k.get(x)
		}
		return v
	}
	cmp := func(a, b []sortVal) int {
		for i, k := range keys {
			c := a[i].cmp(b[i])
			if k.desc {
				c = -c
			}
			if c != 0 {
				return c
			}
		}
		return 0
	}
	type kv struct {
		v []sortVal
		x T
	}
	all := make([]kv, len(items))
	for i, x := range items {
		all[i] = kv{vals(x), x}
	}
	sort.SliceStable(all, func(i, j int) bool { return cmp(all[i].v, all[j].v) < 0 })
	fp := fingerprint(q, scope)
	start := 0
	if q.PageToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(q.PageToken)
		var tok pageToken
		if err == nil {
			err = json.Unmarshal(raw, &tok)
		}
		if err != nil || tok.Q != fp || len(tok.Keys) != len(keys) || len(tok.Nums) != len(keys) {
			return nil, "", fmt.Errorf("%w: pageToken is not from this query; repeat the same filter and orderBy, or start without a token", ErrInvalidArgument)
		}
		last := make([]sortVal, len(keys))
		for i := range keys {
			last[i] = sortVal{s: tok.Keys[i], t: tok.Nums[i]}
		}
		start = sort.Search(len(all), func(i int) bool { return cmp(all[i].v, last) > 0 })
	}
	end := min(start+size, len(all))
	out := make([]T, 0, end-start)
	for _, e := range all[start:end] {
		out = append(out, e.x)
	}
	next := ""
	if end < len(all) {
		tok := pageToken{Q: fp}
		for _, v := range all[end-1].v {
			tok.Keys = append(tok.Keys, v.s)
			tok.Nums = append(tok.Nums, v.t)
		}
		raw, _ := json.Marshal(tok)
		next = base64.RawURLEncoding.EncodeToString(raw)
	}
	return out, next, nil
}

// parentPrefix checks a "projects/P/locations/L" parent and returns the
// key prefix of its jobs; location "-" means every location, as in Batch.
func parentPrefix(parent string) (prefix string, anyLocation bool, err error) {
	p := strings.Split(parent, "/")
	if len(p) != 4 || p[0] != "projects" || p[2] != "locations" || p[1] == "" || p[3] == "" {
		return "", false, fmt.Errorf("%w: parent %q must be projects/PROJECT/locations/LOCATION", ErrInvalidArgument, parent)
	}
	if p[3] == "-" {
		return "projects/" + p[1] + "/locations/", true, nil
	}
	return parent + "/jobs/", false, nil
}

// ListJobs lists the jobs under parent ("projects/P/locations/L", or
// location "-" for all) that match q.Filter, ordered by q.OrderBy, one
// page at a time. It reads every job of the parent: fine for one machine.
func (s *Store) ListJobs(ctx context.Context, parent string, q ListQuery) ([]*batchpb.Job, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	prefix, anyLoc, err := parentPrefix(parent)
	if err != nil {
		return nil, "", err
	}
	pred, err := parseFilter(q.Filter, jobFields)
	if err != nil {
		return nil, "", err
	}
	keys, err := parseOrderBy(q.OrderBy)
	if err != nil {
		return nil, "", err
	}
	var all []*batchpb.Job
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bJobs).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			if anyLoc {
				if _, _, _, ok := job.SplitName(string(k)); !ok {
					continue
				}
			}
			j := new(batchpb.Job)
			if err := proto.Unmarshal(v, j); err != nil {
				return fmt.Errorf("store: corrupt job %q: %w", k, err)
			}
			if pred(j) {
				s.liveRunDuration(tx, j)
				all = append(all, j)
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return paginate(all, q, parent, keys)
}

// ListTasks lists the tasks of a task group
// ("projects/P/locations/L/jobs/J/taskGroups/group0") in index order.
func (s *Store) ListTasks(ctx context.Context, taskGroup string, q ListQuery) ([]*batchpb.Task, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	i := strings.LastIndex(taskGroup, "/taskGroups/")
	if i < 0 {
		return nil, "", fmt.Errorf("%w: parent %q must be projects/P/locations/L/jobs/J/taskGroups/group0", ErrInvalidArgument, taskGroup)
	}
	jobName, group := taskGroup[:i], taskGroup[i+len("/taskGroups/"):]
	if _, _, _, ok := job.SplitName(jobName); !ok {
		return nil, "", fmt.Errorf("%w: parent %q must be projects/P/locations/L/jobs/J/taskGroups/group0", ErrInvalidArgument, taskGroup)
	}
	if q.OrderBy != "" {
		return nil, "", fmt.Errorf("%w: orderBy: tasks are listed in index order", ErrInvalidArgument)
	}
	pred, err := parseFilter(q.Filter, taskFields)
	if err != nil {
		return nil, "", err
	}
	var all []*batchpb.Task
	err = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bJobs).Get([]byte(jobName)) == nil {
			return fmt.Errorf("%w: job %q", ErrNotFound, jobName)
		}
		if group != job.TaskGroupID {
			return fmt.Errorf("%w: task group %q (jobs have only %s)", ErrNotFound, taskGroup, job.TaskGroupID)
		}
		ts, err := scanTasks(tx, jobName)
		for _, t := range ts {
			if pred(t) {
				all = append(all, t)
			}
		}
		return err
	})
	if err != nil {
		return nil, "", err
	}
	index := func(t *batchpb.Task) sortVal {
		_, n, _ := ParseTaskName(t.GetName())
		return sortVal{t: n}
	}
	return paginate(all, q, taskGroup, []orderKey[*batchpb.Task]{{get: index}})
}

func statusProto(code int32, msg string) *rpcstatus.Status {
	return &rpcstatus.Status{Code: code, Message: msg}
}
