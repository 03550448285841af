// Package store keeps Riffle's Batch resources (jobs, tasks, long-running
// operations and create request IDs) in one bbolt file in the data dir,
// so they survive restarts, including kill -9 (bbolt commits are atomic
// and fsynced).
//
// # Records
//
// Jobs, tasks and operations are stored as the official batchpb and
// longrunningpb messages in binary protobuf, keyed by resource name
// (tasks by job name and big-endian index, so a job's tasks are one
// ordered range). Side buckets index pending stop operations by job, map
// request IDs to what they created, and remember when a job last entered
// RUNNING, for runDuration.
//
// # What the scheduler calls
//
// The API creates jobs (CreateJob) and starts stops (BeginStop); whoever
// runs jobs reports only through these methods, each one transaction:
//
//   - SetJobState: a job state change, with the event Batch writes
//     ("Job state is set from QUEUED to SCHEDULED for job NAME.") and
//     runDuration kept; forbidden transitions are ErrFailedPrecondition.
//   - SetTaskState: a task state change with its event ("Task state is
//     updated from RUNNING to FAILED on HOST with exit code 1.") and the
//     job's per-state counts in status.taskGroups kept in step.
//   - AddJobEvent, AddTaskEvent: extra events (image streamed or pulled,
//     retries, recovery after restart).
//   - FinishStop: tasks stopped after a cancel or delete; completes the
//     operations.
//   - JobsInState, Tasks: what to recover after a restart.
//
// # Listing
//
// ListJobs and ListTasks take Batch's filter (an AIP-160 subset: field
// op value joined by AND, OR, NOT and parentheses, over the fields listed
// on ListQuery; anything else is ErrInvalidArgument), orderBy (name,
// create_time, update_time, each optionally desc), pageSize and
// pageToken. Page tokens hold the last sort key, not an offset, so
// concurrent creates and deletes never repeat or skip an item.
package store
