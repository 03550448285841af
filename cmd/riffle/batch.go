package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/googleapis/gax-go/v2"
	"github.com/spf13/cobra"
	"google.golang.org/api/iterator"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

func init() { subcommands = append(subcommands, newBatchCmd) }

// Defaults when neither a flag nor the environment names a project or a
// location. us-central1 is the location `riffle serve` presents by
// default; the server accepts jobs in any location, so configs written for
// another region work unchanged.
const (
	batchDefaultProject  = "default"
	batchDefaultLocation = "us-central1"
)

// batchOpts are the flags every `riffle batch` command shares, as gcloud's
// wide flags (--project, --format) and batch/location property are.
type batchOpts struct {
	server   string
	dataDir  string
	project  string
	location string
	format   string
}

// projectID is --project, else $RIFFLE_PROJECT, else $CLOUDSDK_CORE_PROJECT
// (what gcloud reads), else "default".
func (o *batchOpts) projectID() string {
	for _, v := range []string{o.project, os.Getenv("RIFFLE_PROJECT"), os.Getenv("CLOUDSDK_CORE_PROJECT")} {
		if v != "" {
			return v
		}
	}
	return batchDefaultProject
}

// locationID is --location, else $RIFFLE_LOCATION, else
// $CLOUDSDK_BATCH_LOCATION (gcloud's batch/location property), else
// fallback.
func (o *batchOpts) locationID(fallback string) string {
	for _, v := range []string{o.location, os.Getenv("RIFFLE_LOCATION"), os.Getenv("CLOUDSDK_BATCH_LOCATION")} {
		if v != "" {
			return v
		}
	}
	return fallback
}

func (o *batchOpts) parent() string {
	return "projects/" + o.projectID() + "/locations/" + o.locationID(batchDefaultLocation)
}

// addr is the server's HOST:PORT (see resolveServer).
func (o *batchOpts) addr() string { return resolveServer(o.server, o.dataDir) }

// client returns an official Batch client for the server and the
// server's address, for error messages. The caller closes the client.
func (o *batchOpts) client(ctx context.Context) (*batch.Client, string, error) {
	addr := o.addr()
	c, err := newBatchClient(ctx, addr, o.dataDir)
	if err != nil {
		return nil, addr, err
	}
	return c, addr, nil
}

// jobName turns JOB, a job ID or a full name
// projects/P/locations/L/jobs/J, into a full name; IDs get the project and
// location of the flags.
func (o *batchOpts) jobName(arg string) (string, error) {
	if strings.HasPrefix(arg, "projects/") {
		if _, _, id, ok := job.SplitName(arg); !ok || job.ValidateJobID(id) != nil {
			return "", fmt.Errorf("batch: job %q: give a job ID or projects/PROJECT/locations/LOCATION/jobs/JOB", arg)
		}
		return arg, nil
	}
	if err := job.ValidateJobID(arg); err != nil {
		return "", fmt.Errorf("batch: job %q: not a job ID or name: %w", arg, err)
	}
	return job.Name(o.parent(), arg), nil
}

// taskName turns TASK, a task index or a full task name, into a full name
// under jobArg's task group.
func (o *batchOpts) taskName(arg, jobArg, group string) (string, error) {
	if strings.HasPrefix(arg, "projects/") {
		return arg, nil
	}
	if jobArg == "" {
		return "", errors.New("batch: --job is required unless TASK is a full name (projects/P/locations/L/jobs/J/taskGroups/G/tasks/N)")
	}
	if _, err := strconv.ParseUint(arg, 10, 63); err != nil {
		return "", fmt.Errorf("batch: task %q: give the task index (0, 1, ...) or its full name", arg)
	}
	jn, err := o.jobName(jobArg)
	if err != nil {
		return "", err
	}
	return jn + "/taskGroups/" + group + "/tasks/" + arg, nil
}

func newBatchCmd() *cobra.Command {
	o := &batchOpts{}
	cmd := &cobra.Command{
		Use:   "batch",
		Short: "Submit and manage Google Batch jobs on a Riffle server (like gcloud batch)",
		Long: `batch works like "gcloud batch": it submits, lists, describes, cancels and
deletes Batch jobs, lists their tasks and prints their logs. It talks to
riffle serve through the official Google Batch client over REST.

The server is --server HOST:PORT, else $RIFFLE_SERVER, else the address the
running riffle serve wrote into its data directory (--data-dir), else
127.0.0.1:8080. The project is --project, else $RIFFLE_PROJECT, else
$CLOUDSDK_CORE_PROJECT, else "default"; the location is --location, else
$RIFFLE_LOCATION, else $CLOUDSDK_BATCH_LOCATION, else us-central1.

JOB is a job ID or a full name, projects/PROJECT/locations/LOCATION/jobs/JOB.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.server, "server", "", "riffle serve HOST:PORT (default $RIFFLE_SERVER, then the running server's data dir, then 127.0.0.1:8080)")
	pf.StringVar(&o.dataDir, "data-dir", "", "data directory of the riffle serve to use (default $XDG_STATE_HOME/riffle or ~/.local/state/riffle)")
	pf.StringVar(&o.project, "project", "", "project ID (default $RIFFLE_PROJECT, $CLOUDSDK_CORE_PROJECT, or \"default\")")
	pf.StringVar(&o.location, "location", "", "Batch location (default $RIFFLE_LOCATION, $CLOUDSDK_BATCH_LOCATION, or us-central1; jobs list: every location unless given, or with all)")
	pf.StringVar(&o.format, "format", "", "output format: table, json, yaml or value(FIELD,...), e.g. value(name) or value(status.state) (default: table for lists, yaml for one resource, as gcloud)")

	jobs := &cobra.Command{Use: "jobs", Short: "Submit, list, describe, cancel and delete Batch jobs and print their logs"}
	jobs.AddCommand(newBatchSubmitCmd(o), newBatchDescribeCmd(o), newBatchListCmd(o),
		newBatchDeleteCmd(o), newBatchCancelCmd(o), newBatchLogsCmd(o))
	tasks := &cobra.Command{Use: "tasks", Short: "List and describe the tasks of a Batch job"}
	tasks.AddCommand(newBatchTasksListCmd(o), newBatchTasksDescribeCmd(o))
	cmd.AddCommand(jobs, tasks)
	return cmd
}

func newBatchDescribeCmd(o *batchOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "describe JOB",
		Short: "Show a job with its status and events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := o.jobName(args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, addr, err := o.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			j, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: name})
			if err != nil {
				return batchAPIError(addr, "describe "+name, err)
			}
			return printJobs(cmd.OutOrStdout(), o.format, "yaml", j)
		},
	}
}

func newBatchListCmd(o *batchOpts) *cobra.Command {
	var (
		filter, sortBy  string
		limit, pageSize int
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs (all locations unless --location is given)",
		Long: `list prints the jobs of the project, in every location unless --location
(or $RIFFLE_LOCATION, $CLOUDSDK_BATCH_LOCATION) names one; --location all
(or -) lists every location too.

--filter is evaluated by the server (AIP-160: name, uid, status.state,
create_time, update_time, labels.KEY; e.g. 'status.state="RUNNING"').
--sort-by takes gcloud's form, fields separated by commas, ~ for descending
(name, createTime, updateTime): --sort-by=~createTime.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			orderBy, err := gcloudSortToOrderBy(sortBy)
			if err != nil {
				return err
			}
			if limit < 0 || pageSize < 0 {
				return errors.New("batch: --limit and --page-size must not be negative")
			}
			ctx := cmd.Context()
			c, addr, err := o.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			loc := o.locationID("-")
			if loc == "all" { // as the flag's help says; the API spells it "-"
				loc = "-"
			}
			parent := "projects/" + o.projectID() + "/locations/" + loc
			it := c.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: parent, Filter: filter, OrderBy: orderBy, PageSize: int32(pageSize)})
			if pageSize > 0 {
				it.PageInfo().MaxSize = pageSize
			}
			var jobs []*batchpb.Job
			for limit == 0 || len(jobs) < limit {
				j, err := it.Next()
				if errors.Is(err, iterator.Done) {
					break
				}
				if err != nil {
					return batchAPIError(addr, "list jobs in "+parent, err)
				}
				jobs = append(jobs, j)
			}
			return printJobs(cmd.OutOrStdout(), o.format, "table", jobs...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&filter, "filter", "", "server-side filter, e.g. 'status.state=\"RUNNING\" AND labels.env=\"dev\"'")
	f.StringVar(&sortBy, "sort-by", "", "comma-separated fields to sort by, ~ for descending: name, createTime, updateTime")
	f.IntVar(&limit, "limit", 0, "print at most this many jobs (default: all)")
	f.IntVar(&pageSize, "page-size", 0, "jobs fetched per request (default: the server's, 100)")
	return cmd
}

// gcloudSortToOrderBy turns gcloud's --sort-by (FIELD,~FIELD) into the
// API's orderBy ("FIELD, FIELD desc").
func gcloudSortToOrderBy(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", nil
	}
	var parts []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		desc := strings.HasPrefix(f, "~")
		f = strings.TrimPrefix(f, "~")
		switch f {
		case "name", "createTime", "create_time", "updateTime", "update_time":
		default:
			return "", fmt.Errorf("batch: --sort-by: cannot sort by %q; use name, createTime or updateTime, with ~ for descending", f)
		}
		if desc {
			f += " desc"
		}
		parts = append(parts, f)
	}
	return strings.Join(parts, ", "), nil
}

func newBatchDeleteCmd(o *batchOpts) *cobra.Command {
	return newBatchStopCmd(o, stopVerb{
		use: "delete JOB", short: "Delete a job, stopping its tasks first; waits until it is gone unless --async",
		verb: "delete", noun: "deletion", waiting: "deleted", done: "Deleted",
		start: func(ctx context.Context, c *batch.Client, name string) (stopOp, error) {
			op, err := c.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: name, RequestId: job.NewUUID()})
			if err != nil {
				return stopOp{}, err
			}
			return stopOp{name: op.Name(), poll: op.Poll, done: op.Done}, nil
		},
	})
}

func newBatchCancelCmd(o *batchOpts) *cobra.Command {
	return newBatchStopCmd(o, stopVerb{
		use: "cancel JOB", short: "Cancel a job: stop its running tasks and mark it CANCELLED; waits unless --async",
		verb: "cancel", noun: "cancellation", waiting: "cancelled", done: "Cancelled",
		start: func(ctx context.Context, c *batch.Client, name string) (stopOp, error) {
			op, err := c.CancelJob(ctx, &batchpb.CancelJobRequest{Name: name, RequestId: job.NewUUID()})
			if err != nil {
				return stopOp{}, err
			}
			poll := func(ctx context.Context, opts ...gax.CallOption) error {
				_, err := op.Poll(ctx, opts...)
				return err
			}
			return stopOp{name: op.Name(), poll: poll, done: op.Done}, nil
		},
	})
}

// stopOp is a started delete or cancel operation.
type stopOp struct {
	name string
	poll func(context.Context, ...gax.CallOption) error
	done func() bool
}

// stopVerb describes delete or cancel for newBatchStopCmd.
type stopVerb struct {
	use, short, verb, noun, waiting, done string
	start                                 func(ctx context.Context, c *batch.Client, name string) (stopOp, error)
}

// newBatchStopCmd builds delete and cancel, which differ only in the call
// that starts their long-running operation.
func newBatchStopCmd(o *batchOpts, v stopVerb) *cobra.Command {
	var async bool
	cmd := &cobra.Command{
		Use:   v.use,
		Short: v.short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := o.jobName(args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, addr, err := o.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			op, err := v.start(ctx, c, name)
			if err != nil {
				return batchAPIError(addr, v.verb+" "+name, err)
			}
			if async {
				fmt.Fprintf(cmd.ErrOrStderr(), "Job %s %s is in progress (operation %s).\n", name, v.noun, op.name)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Waiting for job %s to be %s...\n", name, v.waiting)
			if err := waitOp(ctx, op.poll, op.done); err != nil {
				return batchAPIError(addr, v.verb+" "+name, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%s job [%s].\n", v.done, name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&async, "async", false, "return once the "+v.noun+" has started, without waiting for it to finish")
	return cmd
}

func newBatchTasksListCmd(o *batchOpts) *cobra.Command {
	var (
		jobArg, group, filter string
		limit, pageSize       int
	)
	cmd := &cobra.Command{
		Use:   "list --job JOB",
		Short: "List the tasks of a job with their states",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if jobArg == "" {
				return errors.New("batch: --job is required: the job whose tasks to list (ID or full name)")
			}
			if limit < 0 || pageSize < 0 {
				return errors.New("batch: --limit and --page-size must not be negative")
			}
			name, err := o.jobName(jobArg)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, addr, err := o.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			parent := name + "/taskGroups/" + group
			it := c.ListTasks(ctx, &batchpb.ListTasksRequest{Parent: parent, Filter: filter, PageSize: int32(pageSize)})
			if pageSize > 0 {
				it.PageInfo().MaxSize = pageSize
			}
			var tasks []*batchpb.Task
			for limit == 0 || len(tasks) < limit {
				t, err := it.Next()
				if errors.Is(err, iterator.Done) {
					break
				}
				if err != nil {
					return batchAPIError(addr, "list tasks of "+name, err)
				}
				tasks = append(tasks, t)
			}
			return printTasks(cmd.OutOrStdout(), o.format, "table", tasks...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&jobArg, "job", "", "the job (ID or full name)")
	f.StringVar(&group, "task-group", job.TaskGroupID, "the task group")
	f.StringVar(&filter, "filter", "", "server-side filter, e.g. 'status.state=\"FAILED\"'")
	f.IntVar(&limit, "limit", 0, "print at most this many tasks (default: all)")
	f.IntVar(&pageSize, "page-size", 0, "tasks fetched per request (default: the server's)")
	return cmd
}

func newBatchTasksDescribeCmd(o *batchOpts) *cobra.Command {
	var jobArg, group string
	cmd := &cobra.Command{
		Use:   "describe TASK --job JOB",
		Short: "Show a task (by index, or full name) with its status events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := o.taskName(args[0], jobArg, group)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, addr, err := o.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			t, err := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: name})
			if err != nil {
				return batchAPIError(addr, "describe "+name, err)
			}
			return printTasks(cmd.OutOrStdout(), o.format, "yaml", t)
		},
	}
	cmd.Flags().StringVar(&jobArg, "job", "", "the job (ID or full name); not needed when TASK is a full name")
	cmd.Flags().StringVar(&group, "task-group", job.TaskGroupID, "the task group")
	return cmd
}

// waitOp polls a long-running operation until it is done. The client's
// own Wait polls after 1s and backs off to a minute: too slow for a server
// on this machine, where a stop usually takes milliseconds.
func waitOp(ctx context.Context, poll func(context.Context, ...gax.CallOption) error, done func() bool) error {
	d := 50 * time.Millisecond
	for {
		if err := poll(ctx); err != nil {
			return err
		}
		if done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		if d < 2*time.Second {
			d = d * 3 / 2
		}
	}
}
