package scheduler

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/riffle-dev/riffle/internal/runtime"
)

// HostScriptsLabel on a job lets its script runnables run directly on the
// host although ScriptPolicy.Confine is set. riffle serve sets it at
// submit, only for admin submitters when its config allows, and removes it
// from every other job.
const HostScriptsLabel = "riffle-host-scripts"

// ScriptPolicy says how script runnables run.
type ScriptPolicy struct {
	// Confine runs scripts under runc with the host's root read-only
	// (runtime.ConfinedCommand) instead of directly on the host. It needs
	// Options.Runtime.
	Confine bool
	// HostNetwork gives confined scripts the host's network.
	HostNetwork bool
	// Mask lists host directories confined scripts must not see (the
	// data directory).
	Mask []string
}

// confinedPath is PATH for confined scripts: the server's own environment
// is not passed on.
const confinedPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// forwardTerm runs "$@" as the child of a shell that is the container's
// PID 1. PID 1 gets no default signal actions, so a script run as PID 1
// would ignore the SIGTERM of a stop and always wait for the SIGKILL; this
// shell passes SIGTERM on and exits with the script's status.
const forwardTerm = `trap 'kill -TERM $c 2>/dev/null' TERM
"$@" & c=$!
while :; do wait $c; s=$?; kill -0 $c 2>/dev/null || exit $s; done`

// scriptCommand returns the command for a script runnable and a cleanup
// to call after it exits.
func (r *jobRun) scriptCommand(ri int, args, env []string, work string) (*exec.Cmd, func(), error) {
	pol := r.s.opts.Scripts
	if !pol.Confine || r.job.GetLabels()[HostScriptsLabel] == "true" {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Dir = work
		return cmd, func() {}, nil
	}
	if r.s.opts.Runtime == nil {
		return nil, nil, errors.New("script runnables run confined under runc, which is not available on this node; install runc (see docs/security.md)")
	}
	name := r.name[strings.LastIndex(r.name, "/")+1:]
	cmd, cleanup, err := r.s.opts.Runtime.ConfinedCommand(runtime.ConfineSpec{
		Name:        fmt.Sprintf("%s-script%d", name, ri),
		Args:        append([]string{"/bin/sh", "-c", forwardTerm, "sh"}, args...),
		Env:         append([]string{confinedPath, "HOME=/tmp"}, env...),
		Workdir:     work,
		Mask:        pol.Mask,
		HostNetwork: pol.HostNetwork,
	})
	if err != nil {
		return nil, nil, err
	}
	return cmd, cleanup, nil
}
