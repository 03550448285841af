// Package scheduler runs Google Batch jobs on this machine: it is the
// api.Runner behind `riffle serve`. Jobs come from the store (the API
// created them); the scheduler reports progress only through the store's
// helpers, so every state change carries the event Batch would write.
//
// # Life cycle
//
// A job goes QUEUED -> SCHEDULED when picked up, RUNNING when its first
// task runs, then SUCCEEDED or FAILED. Its tasks go PENDING -> ASSIGNED
// (a slot is free) -> RUNNING -> SUCCEEDED or FAILED; a retried task goes
// back to PENDING with the exit code and the attempt in the event, and
// tasks that never ran because the job failed become UNEXECUTED. When a
// task fails for good the job fails: the other running tasks are stopped
// (FAILED, "Stopped because another task of the job failed.") as Batch
// stops a failed job's VMs.
//
// # Scheduling
//
// Up to parallelism tasks of a job run at once (one with schedulingPolicy
// IN_ORDER, which Batch documents as "sequentially with increased task
// index"), and over all jobs as many as the node's Options.Capacity holds:
// the computeResource (cpuMilli, memoryMib) of the tasks running at once
// fits in capacity × overcommit, as Batch fits tasks onto a VM. Tasks
// start in index order and take capacity first come, first served; one
// that must wait gets a WAITING_FOR_CAPACITY event saying what it needs
// and what is taken, and one larger than the whole node runs alone.
// taskCountPerNode does not limit anything: there is one node, and Batch
// uses it only to decide how many VMs to create.
//
// # Runnables
//
// Runnables run in order: container runnables under runc (internal/runtime)
// on a root filesystem from an ImageSource, script runnables on the host
// with /bin/sh (or the script's "#!" interpreter), barriers holding every
// task of the group until each has reached them (a task that ended counts
// as arrived, so a failure never blocks the others). After a failure only
// alwaysRun runnables run; ignoreExitStatus keeps a failure from counting;
// background runnables are started and not waited for, their exit status
// is ignored (but one that cannot start fails the task unless
// ignoreExitStatus, as its followers may wait for it), and they are stopped (SIGTERM, then SIGKILL after
// Options.StopGrace) when the task's other runnables are done. A
// runnable's timeout stops it and fails it; maxRunDuration stops the whole
// task (exit code 50005, as Batch) and no further runnable, not even
// alwaysRun, starts. The stop grace is part of maxRunDuration: SIGTERM
// comes a grace (Options.StopGrace, at most a tenth of the limit) before
// it and SIGKILL at it, so no task outlives its maxRunDuration; the event
// says so.
//
// Retries follow maxRetryCount and lifecyclePolicies: RETRY_TASK retries
// the exit codes it lists and fails the others, FAIL_TASK fails the codes
// it lists and retries the others; the first policy listing the code
// decides.
//
// # Environment
//
// Lowest precedence first: taskSpec.environments, taskSpec.environment,
// taskEnvironments[BATCH_TASK_INDEX], the runnable's environment, then
// BATCH_TASK_INDEX, BATCH_TASK_COUNT, BATCH_JOB_ID, BATCH_JOB_UID,
// BATCH_TASK_RETRY_ATTEMPT and, with requireHostsFile, BATCH_HOSTS_FILE (a
// file listing this host; containers see it at
// /etc/cloudbatch-taskgroup-hosts). Scripts also inherit Riffle's own
// environment, as a Batch VM's scripts inherit the agent's.
//
// # Images
//
// With enableImageStreaming the scheduler asks ImageSource.Stream first and
// falls back to Pull when it fails, with an IMAGE_STREAMING_FALLBACK task
// event saying why. Each container runnable's start adds an IMAGE_STREAMED,
// IMAGE_SETTLED (a streamed image whose layers have all been extracted on
// the node since: overlayfs, no FUSE) or IMAGE_PULLED event naming the digest, the time until the image was
// ready and until the container ran, and the bytes fetched; a streamed
// runnable also reports the bytes its mount fetched while it ran. The node
// engine (package node) is the ImageSource riffle serve uses.
//
// # Volumes
//
// TaskSpec.volumes without a source are host directories at mountPath;
// NFS volumes are mounted there with mount -t nfs (a failure fails the
// task with a VOLUME_FAILED event). Either way containers get them bound at
// the same path, as on Batch.
//
// # Logs
//
// Every runnable's stdout and stderr go to the task's files in
// DataDir/batch/logs (package logs); Logs returns them for the API and
// CLI. logsPolicy PATH also appends every line to logsPath. A retried
// attempt's lines follow a "riffle: retry: attempt N of M ..." line.
//
// # Stops and restarts
//
// Cancel stops the job's running runnables and then completes the stop
// (store.FinishStop: CANCELLED, or the job deleted). A deleted job's logs
// and work files are removed before the store forgets it, so a new job
// with the same ID starts with nothing of the old one; the API hands
// deletes of jobs that had already ended to Cancel too. Start
// recovers from a previous process, even one killed with SIGKILL: it
// removes its containers and mounts (runtime.Cleanup, and node.New
// unmounts dead stream mounts), completes stops that were in progress,
// removes the logs of jobs the store no longer has,
// and puts tasks left ASSIGNED or RUNNING back to PENDING, or FAILED with
// exit code 50003 when maxRetryCount and lifecyclePolicies allow no other
// attempt, each with an event saying Riffle restarted; then it resumes
// every unfinished job.
package scheduler
