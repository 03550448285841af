package runtime

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrInvalidSpec marks a Spec the runtime refuses before touching the system:
// a malformed volume, an unsupported option, a missing command.
var ErrInvalidSpec = errors.New("runtime: invalid container spec")

// Spec describes one container run. The scheduler maps a Batch container
// runnable (and its task's resources and environment) onto it; nothing here
// depends on Batch's protobuf types.
type Spec struct {
	// Name is a short human hint (for example "job1-t0-r2") that becomes part
	// of the container ID, so `runc list` output is recognisable. Optional.
	Name string

	// Lower lists the read-only root filesystem layers, top-most first (the
	// order of overlayfs's lowerdir). Usually one directory: an extracted
	// image or a FUSE mount streaming it. Required.
	Lower []string

	// Image is the image's config: Entrypoint, Cmd, Env, WorkingDir, User.
	Image ocispec.ImageConfig

	// Entrypoint, when set, replaces the image's ENTRYPOINT and clears its CMD
	// (as `docker run --entrypoint` does, which is what Batch runs).
	Entrypoint string
	// Commands, when non-empty, replace the image's CMD; they are appended to
	// the ENTRYPOINT as its arguments.
	Commands []string

	// Env holds KEY=VALUE pairs applied over the image's Env in order, so a
	// later entry wins: the caller lists them from lowest to highest
	// precedence (task group, task, runnable, BATCH_* variables).
	Env []string

	// Volumes are Batch/docker volume strings: "/host:/ctr" or
	// "/host:/ctr:ro" (also "rw" and propagation modes).
	Volumes []string

	// CPUMilli limits CPU time to CPUMilli/1000 CPUs (cgroup quota); 0 means
	// no limit.
	CPUMilli int64
	// MemoryMiB limits memory (cgroup memory limit); 0 means no limit.
	MemoryMiB int64

	// BlockExternalNetwork gives the container a network namespace of its own
	// with only the loopback interface (runc brings lo up). Otherwise the
	// container shares the host's network, as Batch's default network mode
	// has external access and Riffle has no bridge.
	BlockExternalNetwork bool

	// Options is the runnable's "docker run" options string. The flags that
	// make sense on one machine are honoured; any other is refused with an
	// error naming it. See ParseOptions.
	Options string

	// Hostname defaults to the container ID.
	Hostname string

	// Labels become OCI annotations in config.json.
	Labels map[string]string

	// StopGrace is how long Stop and a cancelled Run wait between SIGTERM
	// and SIGKILL; zero means Config.StopGrace.
	StopGrace time.Duration
}

// Volume is one bind mount parsed from a Batch/docker volume string.
type Volume struct {
	// Source is the absolute host path.
	Source string
	// Destination is the absolute path in the container.
	Destination string
	// ReadOnly is set by the "ro" mode.
	ReadOnly bool
	// Propagation is "" or one of private, rprivate, shared, rshared, slave,
	// rslave.
	Propagation string
}

// ParseVolume parses "/host:/ctr[:mode[,mode]]" as docker's --volume does for
// bind mounts. Named volumes (a source that is not an absolute path) do not
// exist here and are refused.
func ParseVolume(s string) (Volume, error) {
	bad := func(why string) (Volume, error) {
		return Volume{}, fmt.Errorf("%w: volume %q: %s", ErrInvalidSpec, s, why)
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return bad(`want "/host/path:/container/path" or "/host/path:/container/path:ro"`)
	}
	v := Volume{Source: parts[0], Destination: parts[1]}
	if v.Source == "" || !filepath.IsAbs(v.Source) {
		return bad("the host path must be absolute (named volumes are not supported)")
	}
	if v.Destination == "" || !path.IsAbs(v.Destination) {
		return bad("the container path must be absolute")
	}
	v.Source = filepath.Clean(v.Source)
	v.Destination = path.Clean(v.Destination)
	if v.Destination == "/" {
		return bad("the container path must not be /")
	}
	if len(parts) == 3 {
		seenRW := false
		for _, m := range strings.Split(parts[2], ",") {
			switch m {
			case "ro":
				if seenRW {
					return bad(`modes "ro" and "rw" conflict`)
				}
				v.ReadOnly, seenRW = true, true
			case "rw":
				if seenRW {
					return bad(`modes "ro" and "rw" conflict`)
				}
				seenRW = true
			case "private", "rprivate", "shared", "rshared", "slave", "rslave":
				if v.Propagation != "" {
					return bad("more than one propagation mode")
				}
				v.Propagation = m
			case "z", "Z":
				// SELinux relabelling: nothing to do without SELinux.
			default:
				return bad(fmt.Sprintf("unknown mode %q (use ro or rw)", m))
			}
		}
	}
	return v, nil
}

// processArgs applies Batch's entrypoint/commands rules to the image config.
func processArgs(img ocispec.ImageConfig, entrypoint string, commands []string) ([]string, error) {
	ep, cmd := img.Entrypoint, img.Cmd
	if entrypoint != "" {
		// docker run --entrypoint resets the image's CMD too.
		ep, cmd = []string{entrypoint}, nil
	}
	if len(commands) > 0 {
		cmd = commands
	}
	args := append(append([]string(nil), ep...), cmd...)
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: the image has no ENTRYPOINT or CMD; set the runnable's entrypoint or commands", ErrInvalidSpec)
	}
	return args, nil
}

// mergeEnv applies overrides (KEY=VALUE, later wins) over base, keeping the
// first position of each key so the result is stable.
func mergeEnv(base []string, overrides ...[]string) []string {
	idx := map[string]int{}
	var out []string
	add := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if k == "" {
			return
		}
		if i, ok := idx[k]; ok {
			out[i] = kv
			return
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	for _, kv := range base {
		add(kv)
	}
	for _, list := range overrides {
		for _, kv := range list {
			add(kv)
		}
	}
	return out
}

func envHas(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}
