package job

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/runtime"
)

// jobIDRe is the job ID rule Batch documents.
var jobIDRe = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateJobID checks id against Batch's rule for job IDs: 1 to 63
// characters, lowercase letters, digits and hyphens, starting with a
// letter and not ending with a hyphen.
func ValidateJobID(id string) error {
	if jobIDRe.MatchString(id) {
		return nil
	}
	why := "must match ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
	switch {
	case id == "":
		why = "must not be empty"
	case len(id) > 63:
		why = fmt.Sprintf("is %d characters; the limit is 63", len(id))
	case id[0] < 'a' || id[0] > 'z':
		why = "must start with a lowercase letter"
	case strings.HasSuffix(id, "-"):
		why = "must not end with a hyphen"
	case strings.ToLower(id) != id:
		why = "must be lowercase"
	}
	return &FieldError{Path: "jobId", Msg: fmt.Sprintf("%q %s (1-63 lowercase letters, digits and hyphens, starting with a letter)", clip(id), why)}
}

// NewJobID generates a job ID for a job created without one: prefix (or
// "job" when empty), the UTC time, and random hex, e.g.
// "job-20261123-214500-3fa9c1". An over-long prefix is cut so the result
// always satisfies ValidateJobID when the prefix does.
func NewJobID(prefix string, now time.Time) string {
	if prefix == "" {
		prefix = "job"
	}
	suffix := "-" + now.UTC().Format("20060102-150405") + "-" + randHex(3)
	if len(prefix)+len(suffix) > 63 {
		prefix = strings.TrimRight(prefix[:63-len(suffix)], "-")
	}
	return prefix + suffix
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// NewUUID returns a random (version 4) UUID.
func NewUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Limits Batch documents; Riffle enforces the same so a job that passes
// here also passes on Google.
const (
	MaxTaskCount     = 100000
	MaxRetryCount    = 10
	MaxPriority      = 99
	MaxLabelLen      = 63
	MaxRunnableCount = 1000
)

// BackgroundStreamLabel set to "off" on a job makes the node mount the
// job's streamed images without whole-layer background streams: only what
// its tasks read (and the image's startup profile) is fetched, and the
// image does not settle. It applies when the node mounts an image for this
// job; a mount other tasks are using is shared as it is, and an idle mount
// made without the streams is mounted anew for a job that wants them. "on"
// is the default; the node's stream.noBackground config switches the streams off
// for every job.
const BackgroundStreamLabel = "riffle-background-stream"

// Validate checks a parsed job for what the schema alone cannot express:
// required fields, ranges, one-of choices and formats. Output-only fields
// (name, uid, status, times) are ignored, as Batch ignores them on create.
// All problems are returned together as FieldErrors.
func Validate(j *batchpb.Job) error {
	var errs FieldErrors
	bad := func(p, format string, args ...any) {
		errs = append(errs, &FieldError{Path: p, Msg: fmt.Sprintf(format, args...)})
	}
	if j.GetPriority() < 0 || j.GetPriority() > MaxPriority {
		bad("priority", "%d is out of range; use 0 to %d", j.GetPriority(), MaxPriority)
	}
	switch len(j.GetTaskGroups()) {
	case 0:
		bad("taskGroups", "must have one task group; add {\"taskSpec\": {\"runnables\": [...]}}")
	case 1:
	default:
		bad("taskGroups", "has %d task groups; Batch supports exactly one", len(j.GetTaskGroups()))
	}
	for k := range j.GetLabels() {
		if k == "" || len(k) > MaxLabelLen {
			bad(fmt.Sprintf("labels[%q]", k), "label keys must be 1 to %d characters", MaxLabelLen)
		}
	}
	if v, ok := j.GetLabels()[BackgroundStreamLabel]; ok && v != "on" && v != "off" {
		bad(fmt.Sprintf("labels[%q]", BackgroundStreamLabel), "is %q; use \"off\" to stream only what the tasks read, or \"on\" (the default)", v)
	}
	for gi, g := range j.GetTaskGroups() {
		gp := fmt.Sprintf("taskGroups[%d]", gi)
		if g.GetTaskCount() < 0 || g.GetTaskCount() > MaxTaskCount {
			bad(gp+".taskCount", "%d is out of range; use 1 to %d", g.GetTaskCount(), MaxTaskCount)
		}
		if g.GetParallelism() < 0 {
			bad(gp+".parallelism", "must not be negative")
		}
		if g.GetTaskCountPerNode() < 0 {
			bad(gp+".taskCountPerNode", "must not be negative")
		}
		if n := len(g.GetTaskEnvironments()); n > 0 && g.GetTaskCount() != 0 && int64(n) != g.GetTaskCount() {
			bad(gp+".taskEnvironments", "has %d entries but taskCount is %d; give one per task or drop taskCount", n, g.GetTaskCount())
		}
		ts := g.GetTaskSpec()
		if ts == nil {
			bad(gp+".taskSpec", "is required; add {\"runnables\": [...]}")
			continue
		}
		sp := gp + ".taskSpec"
		if len(ts.GetRunnables()) == 0 {
			bad(sp+".runnables", "must have at least one runnable (container, script or barrier)")
		}
		if len(ts.GetRunnables()) > MaxRunnableCount {
			bad(sp+".runnables", "has %d runnables; the limit is %d", len(ts.GetRunnables()), MaxRunnableCount)
		}
		if cr := ts.GetComputeResource(); cr != nil {
			if cr.GetCpuMilli() < 0 {
				bad(sp+".computeResource.cpuMilli", "must not be negative")
			}
			if cr.GetMemoryMib() < 0 {
				bad(sp+".computeResource.memoryMib", "must not be negative")
			}
		}
		if d := ts.GetMaxRunDuration(); d != nil && (d.AsDuration() <= 0 || !d.IsValid()) {
			bad(sp+".maxRunDuration", "must be a positive duration such as \"3600s\"")
		}
		if ts.GetMaxRetryCount() < 0 || ts.GetMaxRetryCount() > MaxRetryCount {
			bad(sp+".maxRetryCount", "%d is out of range; use 0 to %d", ts.GetMaxRetryCount(), MaxRetryCount)
		}
		for li, lp := range ts.GetLifecyclePolicies() {
			p := fmt.Sprintf("%s.lifecyclePolicies[%d]", sp, li)
			if lp.GetAction() == batchpb.LifecyclePolicy_ACTION_UNSPECIFIED {
				bad(p+".action", "is required; use RETRY_TASK or FAIL_TASK")
			}
			if len(lp.GetActionCondition().GetExitCodes()) == 0 {
				bad(p+".actionCondition.exitCodes", "must list at least one exit code")
			}
		}
		for vi, v := range ts.GetVolumes() {
			p := fmt.Sprintf("%s.volumes[%d]", sp, vi)
			validateVolume(v, p, bad)
		}
		for ri, r := range ts.GetRunnables() {
			validateRunnable(r, fmt.Sprintf("%s.runnables[%d]", sp, ri), bad)
		}
	}
	for ni, n := range j.GetNotifications() {
		if n.GetPubsubTopic() == "" {
			bad(fmt.Sprintf("notifications[%d].pubsubTopic", ni), "must not be empty")
		}
	}
	checkText(j.ProtoReflect(), "", bad)
	return errs.err()
}

func validateVolume(v *batchpb.Volume, p string, bad func(string, string, ...any)) {
	mp := v.GetMountPath()
	switch {
	case mp == "":
		bad(p+".mountPath", "must not be empty; give the absolute path to mount at")
	case !path.IsAbs(mp):
		bad(p+".mountPath", "%q must be an absolute path", clip(mp))
	}
	switch s := v.GetSource().(type) {
	case nil:
		bad(p, "must set one of nfs, gcs or deviceName")
	case *batchpb.Volume_Nfs:
		if s.Nfs.GetServer() == "" {
			bad(p+".nfs.server", "must not be empty")
		}
		if s.Nfs.GetRemotePath() == "" {
			bad(p+".nfs.remotePath", "must not be empty")
		}
	case *batchpb.Volume_Gcs:
		if s.Gcs.GetRemotePath() == "" {
			bad(p+".gcs.remotePath", "must not be empty")
		}
	case *batchpb.Volume_DeviceName:
		if s.DeviceName == "" {
			bad(p+".deviceName", "must not be empty")
		}
	}
}

func validateRunnable(r *batchpb.Runnable, p string, bad func(string, string, ...any)) {
	if d := r.GetTimeout(); d != nil && (d.AsDuration() <= 0 || !d.IsValid()) {
		bad(p+".timeout", "must be a positive duration such as \"600s\"")
	}
	switch x := r.GetExecutable().(type) {
	case nil:
		bad(p, "must set one of container, script or barrier")
	case *batchpb.Runnable_Container_:
		c := x.Container
		cp := p + ".container"
		if strings.TrimSpace(c.GetImageUri()) == "" {
			bad(cp+".imageUri", "must not be empty")
		} else if strings.ContainsAny(c.GetImageUri(), " \t\n") {
			bad(cp+".imageUri", "%q contains whitespace; give an image reference such as registry/repo:tag", clip(c.GetImageUri()))
		}
		for vi, v := range c.GetVolumes() {
			if err := checkBind(v); err != "" {
				bad(fmt.Sprintf("%s.volumes[%d]", cp, vi), "%q %s", clip(v), err)
			}
		}
		if c.GetPassword() != "" && c.GetUsername() == "" {
			bad(cp+".username", "must be set when password is")
		}
		// The runtime parses options when the container starts; parse them
		// now so a job that cannot start is refused at submit.
		if o, err := runtime.ParseOptions(c.GetOptions()); err != nil {
			bad(cp+".options", "%s", strings.TrimPrefix(strings.TrimPrefix(err.Error(), runtime.ErrInvalidSpec.Error()+": "), "options: "))
		} else if o.Detach && !r.GetBackground() {
			bad(cp+".options", "-d (detach) on a foreground runnable would end it at once while its container runs on; set \"background\": true on the runnable, or drop -d")
		}
	case *batchpb.Runnable_Script_:
		s := x.Script
		switch c := s.GetCommand().(type) {
		case nil:
			bad(p+".script", "must set one of text or path")
		case *batchpb.Runnable_Script_Text:
			if strings.TrimSpace(c.Text) == "" {
				bad(p+".script.text", "must not be empty")
			}
		case *batchpb.Runnable_Script_Path:
			if c.Path == "" {
				bad(p+".script.path", "must not be empty")
			}
		}
	case *batchpb.Runnable_Barrier_:
		// A barrier's name is optional in Batch.
	}
}

// checkBind validates a container volume string, "/host:/ctr" or
// "/host:/ctr:ro|rw", returning what is wrong or "".
func checkBind(v string) string {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return "must look like /host/path:/container/path or /host/path:/container/path:ro"
	}
	if !path.IsAbs(parts[0]) || !path.IsAbs(parts[1]) {
		return "must use absolute paths on both sides, e.g. /tmp:/tmp"
	}
	if len(parts) == 3 {
		for _, o := range strings.Split(parts[2], ",") {
			switch o {
			case "ro", "rw", "z", "Z", "shared", "rshared", "slave", "rslave", "private", "rprivate":
			default:
				return fmt.Sprintf("has unknown mount option %q; use ro or rw", o)
			}
		}
	}
	return ""
}
