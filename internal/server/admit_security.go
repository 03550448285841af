package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/google/go-containerregistry/pkg/name"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/runtime"
)

// admitSecurity refuses, at submit, what a job may not do with the
// submitter's role and the server's config (docs/security.md):
//
//   - an image of the embedded registry in a project the submitter cannot
//     read (the server pulls it with its own token);
//   - an image on a registry whose address is private or link-local and
//     not in outbound.allowRegistries;
//   - host paths (container volumes, -v options, task volumes, a logs
//     path) outside hostPaths;
//   - container options that give up isolation (--privileged, --cap-add,
//     --pid=host, --ipc=host) unless the submitter is an admin.
//
// Field problems are INVALID_ARGUMENT naming the field and the config key;
// a missing role is PERMISSION_DENIED.
func (s *Server) admitSecurity(ctx context.Context, j *batchpb.Job) error {
	id := auth.IdentityFrom(ctx)
	admin := id.RoleIn(projectOf(j.GetName())) == auth.RoleAdmin
	s.markHostScripts(j, admin)
	var errs job.FieldErrors
	bad := func(path, format string, args ...any) {
		errs = append(errs, &job.FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	for gi, g := range j.GetTaskGroups() {
		ts := g.GetTaskSpec()
		sp := fmt.Sprintf("taskGroups[%d].taskSpec", gi)
		for vi, v := range ts.GetVolumes() {
			if msg := s.hostPathProblem(v.GetMountPath()); msg != "" {
				bad(fmt.Sprintf("%s.volumes[%d].mountPath", sp, vi), "%s", msg)
			}
		}
		for ri, r := range ts.GetRunnables() {
			c := r.GetContainer()
			if c == nil {
				continue
			}
			cp := fmt.Sprintf("%s.runnables[%d].container", sp, ri)
			if err := s.admitImageAccess(ctx, id, c.GetImageUri(), cp+".imageUri"); err != nil {
				var fe *job.FieldError
				if errors.As(err, &fe) {
					errs = append(errs, fe)
					continue
				}
				return err
			}
			for vi, v := range c.GetVolumes() {
				src, _, _ := strings.Cut(v, ":")
				if msg := s.hostPathProblem(src); msg != "" {
					bad(fmt.Sprintf("%s.volumes[%d]", cp, vi), "%q: %s", v, msg)
				}
			}
			s.admitOptions(c.GetOptions(), cp+".options", admin, bad)
		}
	}
	if lp := j.GetLogsPolicy(); lp.GetDestination() == batchpb.LogsPolicy_PATH && lp.GetLogsPath() != "" && !admin {
		if msg := s.hostPathProblem(filepath.Dir(lp.GetLogsPath())); msg != "" {
			bad("logsPolicy.logsPath", "%s (or submit the job with an admin token)", msg)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// markHostScripts lets the scripts of an admin's job run directly on the
// host when scripts.unconfinedForAdmin is on; a label given by anyone else
// is removed.
func (s *Server) markHostScripts(j *batchpb.Job, admin bool) {
	delete(j.Labels, scheduler.HostScriptsLabel)
	if admin && s.cfg.Scripts.UnconfinedForAdmin {
		if j.Labels == nil {
			j.Labels = map[string]string{}
		}
		j.Labels[scheduler.HostScriptsLabel] = "true"
	}
}

// admitOptions checks the docker-style options string of a container.
func (s *Server) admitOptions(opts, field string, admin bool, bad func(string, string, ...any)) {
	if strings.TrimSpace(opts) == "" {
		return
	}
	o, err := runtime.ParseOptions(opts)
	if err != nil {
		return // the scheduler reports malformed options on the task
	}
	for _, v := range o.Volumes {
		src, _, _ := strings.Cut(v, ":")
		if msg := s.hostPathProblem(src); msg != "" {
			bad(field, "volume %q: %s", v, msg)
		}
	}
	if admin {
		return
	}
	for flag, on := range map[string]bool{
		"--privileged": o.Privileged, "--cap-add": len(o.CapAdd) > 0, "--pid=host": o.PIDHost, "--ipc=host": o.IPCHost,
	} {
		if on {
			bad(field, "%s gives the container power over the host; only jobs submitted with an admin token may use it", flag)
		}
	}
}

// hostPathProblem says why p may not be used as a host path, or "".
func (s *Server) hostPathProblem(p string) string {
	if p == "" || !filepath.IsAbs(p) {
		return "" // not a host path (validation reports malformed ones)
	}
	clean := filepath.Clean(p)
	if !underAny(clean, s.cfg.HostPaths) {
		return fmt.Sprintf("host path %s is not under a directory allowed by hostPaths in the config (default: none); an operator can add one, e.g. hostPaths: [/srv/batch-data]", clean)
	}
	// A symlink under an allowed directory must not lead out of it.
	if real, err := filepath.EvalSymlinks(clean); err == nil && !underAny(real, s.cfg.HostPaths) {
		return fmt.Sprintf("host path %s resolves to %s, which is not under a directory allowed by hostPaths in the config", clean, real)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("host path %s cannot be checked: %v", clean, err)
	}
	return ""
}

func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}

// admitImageAccess checks that the submitter may read an image of the
// embedded registry, and that another registry's address is allowed.
func (s *Server) admitImageAccess(ctx context.Context, id *auth.Identity, uri, field string) error {
	ref, err := name.ParseReference(uri, name.Insecure)
	if err != nil {
		return nil // admitImages reports malformed references
	}
	host := ref.Context().RegistryStr()
	if s.isSelf(host) {
		proj, _, _ := strings.Cut(ref.Context().RepositoryStr(), "/")
		if err := auth.Authorize(id, proj, auth.RoleViewer); err != nil {
			s.refused(ctx, "batch", id, proj, "CreateJob", uri, err)
			return status.Errorf(codes.PermissionDenied, "job.%s: image %s: %v", field, uri, err)
		}
		return nil
	}
	if err := s.outbound.checkHost(ctx, host); err != nil {
		return &job.FieldError{Path: field, Msg: fmt.Sprintf("image %s: %v", uri, err)}
	}
	return nil
}

// scriptPolicy: scripts run confined, hiding the data directory (tokens,
// other jobs' files, the registry's storage).
func (s *Server) scriptPolicy() scheduler.ScriptPolicy {
	mask, err := filepath.Abs(s.cfg.DataDir)
	if err != nil {
		mask = s.cfg.DataDir
	}
	return scheduler.ScriptPolicy{Confine: true, HostNetwork: s.cfg.Scripts.HostNetwork, Mask: []string{mask}}
}
