package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultCaps is Docker's default capability set. Batch runs containers with
// Docker, so images written for Batch expect exactly these (runc spec's three
// would break apt-get, chown, su and friends).
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// allCaps is every capability of Linux 5.9+, for --privileged.
var allCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// Paths runc spec and Docker hide or freeze in /proc and /sys.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// cpuPeriod is the CFS period for CPU quotas: 100ms, as Docker uses.
const cpuPeriod = 100000

// resolved is a Spec merged with its parsed Options: everything needed to
// write config.json.
type resolved struct {
	id, hostname    string
	args, env       []string
	cwd, user       string
	volumes         []Volume
	tmpfs           []string
	readOnly        bool
	newNetNS        bool
	privileged      bool
	shmSize         int64
	ulimits         []specs.POSIXRlimit
	capAdd, capDrop []string
	memory          int64 // bytes
	cpuMilli        int64
	pidsLimit       int64
	pidHost         bool
	ipcHost         bool
	noNewPriv       bool
	annotations     map[string]string
	addHosts        []string
}

// resolve merges spec and its options and validates everything that can be
// validated without the root filesystem.
func resolve(id string, s *Spec) (*resolved, error) {
	o, err := ParseOptions(s.Options)
	if err != nil {
		return nil, err
	}
	r := &resolved{id: id, readOnly: o.ReadOnly, privileged: o.Privileged, shmSize: o.ShmSize,
		ulimits: o.Ulimits, capAdd: o.CapAdd, capDrop: o.CapDrop, pidsLimit: o.PidsLimit,
		pidHost: o.PIDHost, ipcHost: o.IPCHost, noNewPriv: o.NoNewPriv, tmpfs: o.Tmpfs, addHosts: o.AddHosts}

	entrypoint := s.Entrypoint
	if entrypoint == "" && o.Entrypoint != nil {
		entrypoint = *o.Entrypoint
	}
	if r.args, err = processArgs(s.Image, entrypoint, s.Commands); err != nil {
		return nil, err
	}

	switch {
	case s.BlockExternalNetwork && o.Network == "host":
		return nil, fmt.Errorf("%w: options: --network=host conflicts with blockExternalNetwork; drop one", ErrInvalidSpec)
	case s.BlockExternalNetwork || o.Network == "none":
		r.newNetNS = true
	}

	r.hostname = id
	if s.Hostname != "" {
		r.hostname = s.Hostname
	}
	if o.Hostname != "" {
		r.hostname = o.Hostname
	}

	r.cwd = "/"
	if s.Image.WorkingDir != "" {
		r.cwd = s.Image.WorkingDir
	}
	if o.Workdir != "" {
		r.cwd = o.Workdir
	}
	if !path.IsAbs(r.cwd) {
		return nil, fmt.Errorf("%w: working directory %q must be absolute", ErrInvalidSpec, r.cwd)
	}
	r.user = s.Image.User
	if o.User != "" {
		r.user = o.User
	}

	r.env = mergeEnv(s.Image.Env, s.Env, o.Env)

	for _, vs := range append(append([]string(nil), s.Volumes...), o.Volumes...) {
		v, err := ParseVolume(vs)
		if err != nil {
			return nil, err
		}
		r.volumes = append(r.volumes, v)
	}
	for _, t := range o.Tmpfs {
		if dst, _, _ := strings.Cut(t, ":"); !path.IsAbs(dst) {
			return nil, fmt.Errorf("%w: options: --tmpfs %q: the path must be absolute", ErrInvalidSpec, t)
		}
	}

	r.memory = s.MemoryMiB << 20
	if o.Memory > 0 {
		r.memory = o.Memory
	}
	r.cpuMilli = s.CPUMilli
	if o.CPUMilli > 0 {
		r.cpuMilli = o.CPUMilli
	}
	if r.memory < 0 || r.cpuMilli < 0 {
		return nil, fmt.Errorf("%w: negative CPU or memory limit", ErrInvalidSpec)
	}

	r.annotations = map[string]string{}
	for k, v := range s.Labels {
		r.annotations[k] = v
	}
	for k, v := range o.Labels {
		r.annotations[k] = v
	}
	if o.Name != "" {
		r.annotations["dev.riffle.docker-name"] = o.Name
	}
	return r, nil
}

func capSet(r *resolved) ([]string, error) {
	base := defaultCaps
	if r.privileged {
		base = allCaps
	}
	set := map[string]bool{}
	for _, c := range base {
		set[c] = true
	}
	norm := func(c string) string {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		return c
	}
	known := map[string]bool{"ALL": true}
	for _, c := range allCaps {
		known[c] = true
	}
	for _, c := range r.capDrop {
		c = norm(c)
		if !known[c] {
			return nil, fmt.Errorf("%w: options: --cap-drop %s: unknown capability", ErrInvalidSpec, c)
		}
		if c == "ALL" {
			set = map[string]bool{}
		}
		delete(set, c)
	}
	for _, c := range r.capAdd {
		c = norm(c)
		if !known[c] {
			return nil, fmt.Errorf("%w: options: --cap-add %s: unknown capability", ErrInvalidSpec, c)
		}
		if c == "ALL" {
			for _, a := range allCaps {
				set[a] = true
			}
		}
		set[c] = true
	}
	delete(set, "ALL")
	held := heldCaps()
	for _, c := range r.capAdd {
		if c = norm(c); c != "ALL" && !held[c] {
			return nil, fmt.Errorf("%w: options: --cap-add %s: Riffle itself does not hold this capability", ErrInvalidSpec, c)
		}
	}
	var out []string
	for _, c := range allCaps {
		// Defaults and --privileged get what Riffle holds: asking runc for
		// more would fail the start (sandboxes drop CAP_SYS_RESOURCE, say).
		if set[c] && held[c] {
			out = append(out, c)
		}
	}
	return out, nil
}

// heldCaps reads this process's bounding set; allCaps is in kernel order, so
// a capability's index is its number.
func heldCaps() map[string]bool {
	held := map[string]bool{}
	var mask uint64 = 1<<len(allCaps) - 1
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil {
					mask = m
				}
			}
		}
	}
	for i, c := range allCaps {
		if mask&(1<<i) != 0 {
			held[c] = true
		}
	}
	return held
}

// nofileLimit is Docker's usual NOFILE limit, capped by our own hard limit:
// raising it needs CAP_SYS_RESOURCE in the initial user namespace, which a
// sandboxed Riffle may lack even as root.
func nofileLimit() uint64 {
	n := uint64(1 << 20)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Max < n {
		n = rl.Max
	}
	return n
}

// ociConfig builds config.json for r. rootfs is the mounted overlay, etcDir
// holds the generated hosts/hostname/resolv.conf, cgroupsPath is relative to
// runc's own cgroup.
func ociConfig(r *resolved, u execUser, rootfs, etcDir, cgroupsPath string) (*specs.Spec, error) {
	caps, err := capSet(r)
	if err != nil {
		return nil, err
	}
	env := r.env
	if !envHas(env, "PATH") {
		env = append([]string{defaultPath}, env...)
	}
	if !envHas(env, "HOSTNAME") {
		env = append(env, "HOSTNAME="+r.hostname)
	}
	if !envHas(env, "HOME") {
		env = append(env, "HOME="+u.Home)
	}
	pcaps := &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	if u.UID != 0 {
		// Docker gives a non-root user no effective capabilities; only the
		// bounding set limits what setuid binaries may gain.
		pcaps.Effective, pcaps.Permitted = nil, nil
	}
	nofile := nofileLimit()
	rlimits := []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: nofile, Hard: nofile}}
	for _, ul := range r.ulimits {
		replaced := false
		for i := range rlimits {
			if rlimits[i].Type == ul.Type {
				rlimits[i], replaced = ul, true
			}
		}
		if !replaced {
			rlimits = append(rlimits, ul)
		}
	}

	shm := int64(64 << 20)
	if r.shmSize > 0 {
		shm = r.shmSize
	}
	sysOpts := []string{"nosuid", "noexec", "nodev", "ro"}
	cgOpts := []string{"nosuid", "noexec", "nodev", "relatime", "ro"}
	if r.privileged {
		sysOpts[3], cgOpts[4] = "rw", "rw"
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=" + strconv.FormatInt(shm, 10)}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: sysOpts},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: cgOpts},
		{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(etcDir, "hosts"), Options: []string{"rbind", "rprivate"}},
		{Destination: "/etc/hostname", Type: "bind", Source: filepath.Join(etcDir, "hostname"), Options: []string{"rbind", "rprivate"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: filepath.Join(etcDir, "resolv.conf"), Options: []string{"rbind", "rprivate"}},
	}
	if r.ipcHost {
		// A fresh mqueue mount needs a private IPC namespace.
		mounts = append(mounts[:4], mounts[5:]...)
	}
	for _, t := range r.tmpfs {
		dst, opts, _ := strings.Cut(t, ":")
		o := []string{"nosuid", "nodev", "noexec"}
		if opts != "" {
			o = strings.Split(opts, ",")
		}
		mounts = append(mounts, specs.Mount{Destination: path.Clean(dst), Type: "tmpfs", Source: "tmpfs", Options: o})
	}
	for _, v := range r.volumes {
		o := []string{"rbind"}
		if v.ReadOnly {
			o = append(o, "ro")
		}
		prop := v.Propagation
		if prop == "" {
			prop = "rprivate"
		}
		o = append(o, prop)
		mounts = append(mounts, specs.Mount{Destination: v.Destination, Type: "bind", Source: v.Source, Options: o})
	}

	namespaces := []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.UTSNamespace}}
	if !r.pidHost {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}
	if !r.ipcHost {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.IPCNamespace})
	}
	if r.newNetNS {
		// runc configures loopback (and brings lo up) in a new network
		// namespace with no path; nothing else is created, so there is no
		// route out.
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}

	res := &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: r.privileged, Access: "rwm"}}}
	if r.memory > 0 {
		m := r.memory
		res.Memory = &specs.LinuxMemory{Limit: &m}
	}
	if r.cpuMilli > 0 {
		q, p := r.cpuMilli*cpuPeriod/1000, uint64(cpuPeriod)
		if q < 1000 {
			q = 1000 // the kernel's minimum quota is 1ms
		}
		res.CPU = &specs.LinuxCPU{Quota: &q, Period: &p}
	}
	if r.pidsLimit != 0 {
		l := r.pidsLimit
		res.Pids = &specs.LinuxPids{Limit: &l}
	}

	linux := &specs.Linux{
		CgroupsPath: cgroupsPath,
		Resources:   res,
		Namespaces:  namespaces,
	}
	if !r.privileged {
		linux.MaskedPaths = maskedPaths
		linux.ReadonlyPaths = readonlyPaths
	}

	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User:            specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids},
			Args:            r.args,
			Env:             env,
			Cwd:             r.cwd,
			Capabilities:    pcaps,
			Rlimits:         rlimits,
			NoNewPrivileges: r.noNewPriv,
		},
		Root:        &specs.Root{Path: rootfs, Readonly: r.readOnly},
		Hostname:    r.hostname,
		Mounts:      mounts,
		Annotations: r.annotations,
		Linux:       linux,
	}, nil
}

// writeEtc writes the container's /etc/hosts, /etc/hostname and
// /etc/resolv.conf into dir, as Docker provides them: an image's own files
// know nothing of this host.
func writeEtc(dir string, r *resolved) error {
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + r.hostname + "\n"
	for _, h := range r.addHosts {
		hosts += h + "\n"
	}
	resolv := []byte{}
	if !r.newNetNS {
		// The host's resolver config; a loopback resolver (systemd-resolved's
		// 127.0.0.53) works because the network namespace is the host's.
		if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
			resolv = b
		}
	}
	for name, data := range map[string][]byte{
		"hosts":       []byte(hosts),
		"hostname":    []byte(r.hostname + "\n"),
		"resolv.conf": resolv,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("runtime: %w", err)
		}
	}
	return nil
}

// bundle is one container's directory under Config.Root/tasks: the
// overlay root filesystem and its upper and work directories, the
// generated /etc files and config.json. Close is the one place that undoes
// newBundle.
type bundle struct {
	dir, rootfs, upper, work, etc string
}

// newBundle makes the bundle of res in dir: the overlay of lower, the /etc
// files and config.json. On an error nothing of it is left.
func newBundle(dir string, lower []string, res *resolved, cgroupsPath string) (_ *bundle, retErr error) {
	b := &bundle{dir: dir, rootfs: filepath.Join(dir, "rootfs"), upper: filepath.Join(dir, "upper"),
		work: filepath.Join(dir, "work"), etc: filepath.Join(dir, "etc")}
	defer func() {
		if retErr != nil {
			if err := b.Close(); err != nil {
				retErr = errors.Join(retErr, err)
			}
		}
	}()
	for _, d := range []string{b.rootfs, b.upper, b.work, b.etc} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
	}
	// The upper directory's root becomes the container's "/": it must be
	// world-traversable like any root directory.
	if err := os.Chmod(b.upper, 0o755); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	if err := mountOverlay(lower, b.upper, b.work, b.rootfs); err != nil {
		return nil, err
	}
	u, err := resolveUser(b.rootfs, res.user)
	if err != nil {
		return nil, err
	}
	cfg, err := ociConfig(res, u, b.rootfs, b.etc, cgroupsPath)
	if err != nil {
		return nil, err
	}
	if err := writeEtc(b.etc, res); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	return b, nil
}

// Close unmounts the overlay and removes the directory. It removes
// nothing while the overlay is still mounted: that would delete through
// it into the image.
func (b *bundle) Close() error {
	if err := unmount(b.rootfs); err != nil {
		return err
	}
	if err := os.RemoveAll(b.dir); err != nil {
		return fmt.Errorf("runtime: %w", err)
	}
	return nil
}
