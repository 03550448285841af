package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ConfineSpec is a host command to run confined: the host's programs and
// files, but none of its power.
type ConfineSpec struct {
	// Name goes into the runc container ID (IDPrefix + name + random).
	Name string
	// Args is the command; Args[0] is looked up in the host's PATH as seen
	// inside.
	Args []string
	// Env is the whole environment (nothing of the server's is added).
	Env []string
	// Workdir is the working directory; it stays writable.
	Workdir string
	// Mask lists host directories hidden behind an empty tmpfs (the data
	// directory, with its tokens and other jobs' state).
	Mask []string
	// HostNetwork keeps the host's network namespace. Default: a new one
	// with only a loopback device, so no network.
	HostNetwork bool
}

// hostRootSkipped are top-level host directories a confined command gets
// fresh instances of instead of the host's.
var hostRootSkipped = []string{"proc", "sys", "dev", "tmp", "run", "lost+found"}

// ConfinedCommand returns a command that runs spec under runc, and a
// cleanup to call once it has exited (it removes the container, killing
// anything left of it, and its bundle).
//
// The container's root is the host's: every top-level directory is bound
// recursively read-only (rro), so nothing on the host can be written, not
// even by root. /tmp, /run and /dev are private tmpfs, /proc belongs to
// the container's own pid namespace, and Workdir is bound writable at its
// own path. The process runs as root without any capability and with
// no_new_privs, in new mount, pid, ipc, uts, cgroup (and network) namespaces
// and a cgroup of its own under Config.CgroupParent.
//
// The command runs as `runc run` in the foreground in a process group of
// its own: signals sent to the group reach runc, which forwards them to
// the container.
func (r *Runtime) ConfinedCommand(spec ConfineSpec) (*exec.Cmd, func(), error) {
	id := newID(spec.Name)
	bundle := filepath.Join(r.tasks, id)
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, nil, fmt.Errorf("runtime: confined bundle: %w", err)
	}
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Kills what is left (a stop that ended with SIGKILL to runc
		// leaves the container running); fails only if runc never made it.
		if err := r.newRunc("").Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
			r.log.Debug("confined container already gone", "id", id, "err", err)
		}
		if err := os.RemoveAll(bundle); err != nil {
			r.log.Warn("removing confined bundle", "dir", bundle, "err", err)
		}
	}
	cfg, err := confinedConfig(spec, rootfs, r.cfg.CgroupParent+"/"+id)
	if err == nil {
		var raw []byte
		raw, err = json.MarshalIndent(cfg, "", "  ")
		if err == nil {
			err = os.WriteFile(filepath.Join(bundle, "config.json"), raw, 0o600)
		}
	}
	if err != nil {
		os.RemoveAll(bundle)
		return nil, nil, fmt.Errorf("runtime: confined bundle: %w", err)
	}
	cmd := exec.Command(r.cfg.Runc, "--root", filepath.Join(r.cfg.Root, "runc"), "run", "--bundle", bundle, id)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, cleanup, nil
}

// confinedConfig builds the OCI config of a confined command whose root
// directory is rootfs (an empty directory with the host's top level made
// of mount points and symlinks).
func confinedConfig(spec ConfineSpec, rootfs, cgroupsPath string) (*specs.Spec, error) {
	if len(spec.Args) == 0 || !filepath.IsAbs(spec.Workdir) {
		return nil, fmt.Errorf("confine: need a command and an absolute work directory")
	}
	top, err := os.ReadDir("/")
	if err != nil {
		return nil, err
	}
	var mounts []specs.Mount
	for _, e := range top {
		name := e.Name()
		if slices.Contains(hostRootSkipped, name) {
			continue
		}
		host := "/" + name
		switch {
		case e.Type()&os.ModeSymlink != 0: // /bin -> usr/bin on merged-/usr systems
			target, err := os.Readlink(host)
			if err != nil {
				return nil, err
			}
			if err := os.Symlink(target, filepath.Join(rootfs, name)); err != nil {
				return nil, err
			}
		case e.IsDir():
			mounts = append(mounts, specs.Mount{Destination: host, Type: "bind", Source: host, Options: []string{"rbind", "rro", "nosuid", "nodev"}})
		}
	}
	mounts = append(mounts,
		specs.Mount{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		specs.Mount{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		specs.Mount{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		specs.Mount{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		specs.Mount{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755"}},
	)
	for _, m := range spec.Mask {
		// Writable so runc can make the work directory's mount point in
		// it; what is written there is private and goes with the tmpfs.
		mounts = append(mounts, specs.Mount{Destination: m, Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "noexec", "mode=755", "size=1m"}})
	}
	mounts = append(mounts, specs.Mount{Destination: spec.Workdir, Type: "bind", Source: spec.Workdir, Options: []string{"rbind", "rw", "nosuid", "nodev"}})

	namespaces := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace}, {Type: specs.CgroupNamespace},
	}
	if !spec.HostNetwork {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	hostname := "riffle-task"
	if spec.HostNetwork {
		hostname, _ = os.Hostname()
	}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args:            spec.Args,
			Env:             spec.Env,
			Cwd:             spec.Workdir,
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{}, // none at all
		},
		Root:     &specs.Root{Path: rootfs, Readonly: true},
		Hostname: hostname,
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath:   cgroupsPath,
			Namespaces:    namespaces,
			Resources:     &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
		},
	}, nil
}
