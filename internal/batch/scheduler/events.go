package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// Exit codes the scheduler records for failures that are not a program's
// own exit status. The first two follow the tools Batch users know, the
// others are Batch's.
const (
	// ExitRunnableTimeout is recorded for a runnable stopped by its
	// timeout that still exited 0 (as timeout(1) exits 124).
	ExitRunnableTimeout = 124
	// ExitNotStarted is recorded when Riffle could not start a runnable or
	// prepare its task (logs, working directory, volumes), as `docker run`
	// exits 125 when the container cannot be created.
	ExitNotStarted = 125
	// ExitRestarted is recorded when Riffle restarted while the task ran
	// (Batch's 50003: the VM rebooted during execution).
	ExitRestarted = 50003
	// ExitMaxRunDuration is recorded when a task reached maxRunDuration
	// (Batch's 50005).
	ExitMaxRunDuration = 50005
)

// Event types Riffle adds beside Batch's STATUS_CHANGED (which the store
// writes with every state change). Each has one builder below, so its
// wording lives in one place.
const (
	evLogsPathFailed       = "LOGS_PATH_FAILED"
	evBarrierWarning       = "BARRIER_WARNING"
	evLogsFailed           = "LOGS_FAILED"
	evVolumeFailed         = "VOLUME_FAILED"
	evRunnableFailed       = "RUNNABLE_FAILED"
	evRunnableTimeout      = "RUNNABLE_TIMEOUT"
	evImageStreamed        = "IMAGE_STREAMED"
	evImagePulled          = "IMAGE_PULLED"
	evImageSettled         = "IMAGE_SETTLED"
	evImageStreamedBytes   = "IMAGE_STREAMED_BYTES"
	evImageStreamFallback  = "IMAGE_STREAMING_FALLBACK"
	evWaitingForCapacity   = "WAITING_FOR_CAPACITY"
	evTaskExceedsNodeLimit = "TASK_EXCEEDS_NODE_CAPACITY"
	evImageDataCorrupt     = "IMAGE_DATA_CORRUPT"
	evRegistryUnreachable  = "IMAGE_REGISTRY_UNREACHABLE"
	evImageFetchFailed     = "IMAGE_FETCH_FAILED"
)

// event is a status event to record on a job or task.
type event struct{ typ, desc string }

func logsPathFailedEvent(err error) event {
	return event{evLogsPathFailed, fmt.Sprintf("logsPolicy.logsPath: %v; logs are kept by Riffle only.", err)}
}

func barrierWarningEvent(atOnce, tasks int, why string) event {
	return event{evBarrierWarning, fmt.Sprintf(
		"The task group has barriers but runs %d of its %d tasks at a time (%s); a barrier waits for every task, so tasks may wait until maxRunDuration.", atOnce, tasks, why)}
}

func logsFailedEvent(err error) event {
	return event{evLogsFailed, fmt.Sprintf("Task output cannot be kept: %v", err)}
}

func volumeFailedEvent(err error) event { return event{evVolumeFailed, err.Error()} }

func runnableFailedEvent(ri int, err error) event {
	return event{evRunnableFailed, fmt.Sprintf("Runnable %d did not start: %v", ri, err)}
}

func runnableTimeoutEvent(ri int, timeout time.Duration, code int) event {
	return event{evRunnableTimeout, fmt.Sprintf("Runnable %d timed out after %v and was stopped (exit code %d).", ri, timeout, code)}
}

// imageReadyEvent says how a container runnable's image arrived.
func imageReadyEvent(ri int, imageURI string, rfs *RootFS, ready, started time.Duration) event {
	typ, how := evImagePulled, "pulled"
	switch rfs.Method {
	case node.MethodStreamed:
		typ, how = evImageStreamed, "streamed"
	case node.MethodSettled:
		typ, how = evImageSettled, "settled (streamed earlier; now served from its layers extracted on this node, with overlayfs and no FUSE)"
	}
	var detail string
	switch {
	case rfs.Method == node.MethodSettled:
		detail = "nothing fetched"
	case rfs.Reused && rfs.Method == node.MethodStreamed:
		detail = "its lazy mount was shared with earlier tasks, nothing fetched to start"
	case rfs.Reused:
		detail = "already pulled, nothing fetched"
	case rfs.Fetched == 0:
		detail = "nothing fetched over the wire to make it ready"
	case rfs.Method == node.MethodPulled:
		detail = fmt.Sprintf("%s compressed over the wire and %s uncompressed extracted to make it ready", byteSize(rfs.Fetched), byteSize(rfs.Extracted))
	default:
		detail = fmt.Sprintf("%s compressed over the wire to make it ready", byteSize(rfs.Fetched))
	}
	return event{typ, fmt.Sprintf(
		"Image %s (%s) was %s for runnable %d: ready in %v, container started %v after the runnable began; %s.",
		imageURI, rfs.Digest, how, ri, ready.Round(time.Millisecond), started.Round(time.Millisecond), detail)}
}

// imageStreamedBytesEvent says what a streamed image's mount fetched while
// a runnable ran: compressed bytes over the wire and uncompressed bytes
// made available, each named so, with the startup profile's part.
func imageStreamedBytesEvent(ri int, d streamfs.Stats) event {
	msg := fmt.Sprintf("Runnable %d read its streamed image; while it ran the image's mount fetched %s compressed over the wire (%s by range for reads, %s by background layer streams) and made %s uncompressed available",
		ri, byteSize(d.WireBytes), byteSize(d.SpanWireBytes), byteSize(d.BackgroundWireBytes), byteSize(d.UncompressedBytes))
	if d.ProfileSpans > 0 {
		msg += fmt.Sprintf("; its startup profile prefetched %d spans (%s uncompressed) and %d first reads found theirs prefetched", d.ProfileSpans, byteSize(d.ProfileBytes), d.ProfileHits)
	}
	if d.Packs > 0 {
		msg += fmt.Sprintf("; %d prefetch packs (one request per layer, %s compressed) delivered %d of those spans", d.Packs, byteSize(d.PackWireBytes), d.PackSpans)
	}
	return event{evImageStreamedBytes, msg + "."}
}

// imageDataCorruptEvent names the layer and span of a streamed image
// whose fetched data did not match its digest while a runnable ran.
func imageDataCorruptEvent(ri int, imageURI string, p streamfs.Problem) event {
	return event{evImageDataCorrupt, fmt.Sprintf(
		"Image %s: layer %s span %d (bytes %d to %d of the layer's uncompressed tar) does not match its digest; reads of it by runnable %d failed with an I/O error. The registry serves data other than what the image was indexed from: re-push the image or check the registry's storage.",
		imageURI, p.Layer, p.Span, p.Offset, p.Offset+p.Size, ri)}
}

// registryUnreachableEvent says that a streamed image's registry stopped
// answering while a runnable ran, so reads of data not yet on the node
// failed.
func registryUnreachableEvent(ri int, imageURI string, p streamfs.Problem) event {
	return event{evRegistryUnreachable, fmt.Sprintf(
		"Image %s: its registry is unreachable, so reads by runnable %d of image data not yet on this node failed with an I/O error (layer %s span %d: %v). Such reads fail at once until the registry answers again.",
		imageURI, ri, p.Layer, p.Span, p.Err)}
}

// imageFetchFailedEvent says that a read of a streamed image's data
// failed for another reason (a timeout, an error answer).
func imageFetchFailedEvent(ri int, imageURI string, p streamfs.Problem) event {
	return event{evImageFetchFailed, fmt.Sprintf(
		"Image %s: reads by runnable %d of image data not yet on this node failed with an I/O error: layer %s span %d could not be fetched: %v.",
		imageURI, ri, p.Layer, p.Span, p.Err)}
}

// imageProblemEvents are the events for a mount's failed fetches since
// since: the latest problem of each kind (corrupt data, registry
// unreachable, other failures), corrupt first.
func imageProblemEvents(ri int, imageURI string, problems []streamfs.Problem, since time.Time) []event {
	var corrupt, unreachable, other *streamfs.Problem
	for i := range problems {
		p := &problems[i]
		switch {
		case p.Time.Before(since):
		case p.Corrupt:
			corrupt = p
		case errors.Is(p.Err, remote.ErrUnreachable):
			unreachable = p
		default:
			other = p
		}
	}
	var out []event
	if corrupt != nil {
		out = append(out, imageDataCorruptEvent(ri, imageURI, *corrupt))
	}
	if unreachable != nil {
		out = append(out, registryUnreachableEvent(ri, imageURI, *unreachable))
	}
	if other != nil && unreachable == nil {
		out = append(out, imageFetchFailedEvent(ri, imageURI, *other))
	}
	return out
}

// statsDelta is what a mount's counters grew by between a and b.
func statsDelta(a, b streamfs.Stats) streamfs.Stats {
	return streamfs.Stats{
		WireBytes: b.WireBytes - a.WireBytes, SpanWireBytes: b.SpanWireBytes - a.SpanWireBytes,
		BackgroundWireBytes: b.BackgroundWireBytes - a.BackgroundWireBytes,
		UncompressedBytes:   b.UncompressedBytes - a.UncompressedBytes,
		ProfileSpans:        b.ProfileSpans - a.ProfileSpans, ProfileBytes: b.ProfileBytes - a.ProfileBytes,
		ProfileHits: b.ProfileHits - a.ProfileHits,
		Packs:       b.Packs - a.Packs, PackSpans: b.PackSpans - a.PackSpans, PackBytes: b.PackBytes - a.PackBytes,
		PackWireBytes: b.PackWireBytes - a.PackWireBytes,
	}
}

func imageStreamFallbackEvent(ri int, why string, err error) event {
	return event{evImageStreamFallback, fmt.Sprintf(
		"Runnable %d asked for image streaming, but %s (%v); pulling the image in full instead.", ri, why, err)}
}

// waitingForCapacityEvent says why a task has not started yet.
func waitingForCapacityEvent(idx int64, why string) event {
	return event{evWaitingForCapacity, fmt.Sprintf(
		"Task %d waits for capacity on this node: %s. It starts when running tasks end; capacity is set in riffle serve's config (capacity.cpuMilli, capacity.memoryMib, capacity.overcommit).", idx, why)}
}

func taskExceedsNodeEvent(d demand, p *pool) event {
	return event{evTaskExceedsNodeLimit, fmt.Sprintf(
		"Each task asks for %d mCPU and %d MiB (taskSpec.computeResource, 2000 and 2000 when unset, as on Batch), more than this node offers (%d mCPU and %d MiB after overcommit %g); each runs only when no other task runs.",
		d.cpu, d.mem, p.cpu, p.mem, p.cfg.Overcommit)}
}

// jobEvent records ev on the job; a failure is logged, not returned: an
// event lost is no reason to stop the job.
func (r *jobRun) jobEvent(ctx context.Context, ev event) {
	r.s.logStore(ctx, "recording a job event", r.s.st.AddJobEvent(ctx, r.name, ev.typ, ev.desc), "job", r.name, "type", ev.typ)
}

// taskEvent records ev on task idx, logging a failure.
func (r *jobRun) taskEvent(ctx context.Context, idx int64, ev event) {
	name := taskName(r.name, idx)
	r.s.logStore(ctx, "recording a task event", r.s.st.AddTaskEvent(ctx, name, ev.typ, ev.desc), "task", name, "type", ev.typ)
}

// setTask moves task idx to state to. The error is returned for callers
// that stop on it, and logged here once when it is not the expected
// refusal of a job being stopped or deleted.
func (r *jobRun) setTask(ctx context.Context, idx int64, to batchpb.TaskStatus_State, u store.TaskUpdate) error {
	name := taskName(r.name, idx)
	_, err := r.s.st.SetTaskState(ctx, name, to, u)
	r.s.logStore(ctx, "setting task state", err, "task", name, "to", to)
	return err
}

// taskDone marks task idx's logs done, so followers stop.
func (r *jobRun) taskDone(idx int64) {
	if err := r.s.logs.MarkTaskDone(r.name, idx); err != nil {
		r.s.log.Warn("scheduler: marking task logs done; followers will wait for the job", "job", r.name, "task", idx, "err", err)
	}
}

// jobDone marks the job's logs done.
func (s *Scheduler) jobDone(name string) {
	if err := s.logs.MarkJobDone(name); err != nil {
		s.log.Warn("scheduler: marking job logs done; followers will not stop by themselves", "job", name, "err", err)
	}
}

// logStore logs a failed store write. A job being cancelled or deleted
// refuses writes (ErrFailedPrecondition, ErrNotFound), and a stopping
// scheduler's context ends: those are expected and logged at debug level.
func (s *Scheduler) logStore(ctx context.Context, what string, err error, args ...any) {
	if err == nil {
		return
	}
	level := slog.LevelError
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrFailedPrecondition) {
		level = slog.LevelDebug
	}
	s.log.Log(context.WithoutCancel(ctx), level, "scheduler: "+what, append(args, "err", err)...)
}
