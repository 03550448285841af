package job

import (
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults Batch fills in when a job leaves them out.
const (
	DefaultCPUMilli       = 2000
	DefaultMemoryMib      = 2000
	DefaultMaxRunDuration = 7 * 24 * time.Hour
	// TaskGroupID is the only task group name Batch uses.
	TaskGroupID = "group0"
)

// Name returns the resource name of job id under parent
// ("projects/P/locations/L").
func Name(parent, id string) string { return parent + "/jobs/" + id }

// TaskGroupName returns the name of the job's (only) task group.
func TaskGroupName(jobName string) string { return jobName + "/taskGroups/" + TaskGroupID }

// TaskName returns the name of task index in the job's task group.
func TaskName(jobName string, index int64) string {
	return fmt.Sprintf("%s/tasks/%d", TaskGroupName(jobName), index)
}

// SplitName splits "projects/P/locations/L/jobs/J" into its parts; ok is
// false when name is not a job name.
func SplitName(name string) (project, location, id string, ok bool) {
	p := strings.Split(name, "/")
	if len(p) != 6 || p[0] != "projects" || p[2] != "locations" || p[4] != "jobs" || p[1] == "" || p[3] == "" || p[5] == "" {
		return "", "", "", false
	}
	return p[1], p[3], p[5], true
}

// Prepare turns a validated config into the job Batch would store: it
// clears output-only fields and fills in name, uid, the task group name,
// taskCount, parallelism, computeResource, maxRunDuration, status QUEUED
// with its first status event, and createTime/updateTime. features are
// the ignored features (see Check); each gets a status event so the
// degradation is visible in `describe`, never silent.
func Prepare(j *batchpb.Job, parent, id string, now time.Time, features []Feature) {
	name := Name(parent, id)
	j.Name = name
	j.Uid = uidFor(id)
	ts := timestamppb.New(now)
	j.CreateTime = ts
	j.UpdateTime = ts
	for _, g := range j.GetTaskGroups() {
		g.Name = TaskGroupName(name)
		if g.TaskCount == 0 {
			g.TaskCount = 1
			if n := len(g.GetTaskEnvironments()); n > 0 {
				g.TaskCount = int64(n)
			}
		}
		if g.Parallelism == 0 || g.Parallelism > g.TaskCount {
			g.Parallelism = g.TaskCount
		}
		if g.TaskSpec == nil {
			g.TaskSpec = &batchpb.TaskSpec{}
		}
		if g.TaskSpec.ComputeResource == nil {
			g.TaskSpec.ComputeResource = &batchpb.ComputeResource{}
		}
		cr := g.TaskSpec.ComputeResource
		if cr.CpuMilli == 0 {
			cr.CpuMilli = DefaultCPUMilli
		}
		if cr.MemoryMib == 0 {
			cr.MemoryMib = DefaultMemoryMib
		}
		if g.TaskSpec.MaxRunDuration == nil {
			g.TaskSpec.MaxRunDuration = durationpb.New(DefaultMaxRunDuration)
		}
	}
	j.Status = &batchpb.JobStatus{
		State: batchpb.JobStatus_QUEUED,
		StatusEvents: []*batchpb.StatusEvent{{
			Type:        "STATUS_CHANGED",
			Description: JobStateDescription(name, batchpb.JobStatus_STATE_UNSPECIFIED, batchpb.JobStatus_QUEUED),
			EventTime:   ts,
		}},
	}
	for _, f := range features {
		if f.Action != Ignore {
			continue
		}
		j.Status.StatusEvents = append(j.Status.StatusEvents, &batchpb.StatusEvent{
			Type:        "UNSUPPORTED_FEATURE_IGNORED",
			Description: f.String(),
			EventTime:   ts,
		})
	}
}

// uidFor makes a uid shaped like Batch's: a readable prefix of the job ID
// and a random suffix, unique across re-creations of the same ID.
func uidFor(id string) string {
	p := id
	if len(p) > 27 {
		p = strings.TrimRight(p[:27], "-")
	}
	return p + "-" + NewUUID()
}

// JobStateDescription is the description of a job state change event,
// worded as Batch words it.
func JobStateDescription(jobName string, from, to batchpb.JobStatus_State) string {
	return fmt.Sprintf("Job state is set from %s to %s for job %s.", from, to, jobName)
}

// TaskStateDescription is the description of a task state change event,
// worded as Batch words it ("on" names the machine, here the host).
func TaskStateDescription(from, to batchpb.TaskStatus_State, host string, exitCode *int32) string {
	s := fmt.Sprintf("Task state is updated from %s to %s on %s", from, to, host)
	if exitCode != nil {
		s += fmt.Sprintf(" with exit code %d", *exitCode)
	}
	return s + "."
}
