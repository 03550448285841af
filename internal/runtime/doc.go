// Package runtime runs one Batch container runnable as an OCI container under
// runc, driven through the runc binary (github.com/containerd/go-runc), never
// through libcontainer.
//
// # Root filesystem
//
// The caller hands over read-only lower directories: an image pulled whole and
// extracted, or a FUSE mount that streams the image in. The runtime stacks an
// overlayfs on them with a per-task upper and work directory, so a task's
// writes never reach the image and vanish with the task. Nothing here knows
// where the lower directories come from; that is what makes streaming and full
// pulls interchangeable. The overlay is mounted with the new mount API, one
// fsconfig "lowerdir+" per layer, so an image may have as many layers as
// overlayfs takes (500); mount(2), whose options must fit in a page (about 35
// layer-store paths), is used only on kernels before Linux 6.8.
//
// # Bundle
//
// Each task gets a directory under Config.Root/tasks holding config.json (built
// from runtime-spec types with the defaults `runc spec` and Docker use), the
// overlay mount point, its upper and work directories and generated
// /etc/hosts, /etc/hostname and /etc/resolv.conf. The container's process comes
// from the image config (ENTRYPOINT, CMD, Env, WorkingDir, User) with Batch's
// overrides applied as Batch documents them: a runnable's entrypoint replaces
// the image ENTRYPOINT and clears CMD, and its commands replace CMD. Batch's
// volume strings become bind mounts, computeResource becomes cgroup limits,
// and the docker-run options that make sense on one machine are honoured; the
// rest are refused by name.
//
// # Lifecycle
//
// Start runs `runc run` in the foreground: runc stays the parent of the
// container, so its exit status is the container's and no subreaper is needed.
// It is three steps, each with one owner of its cleanup: the bundle (directory
// and overlay; bundle.Close), the output pipes, and launch (runc run until the
// container's process runs). monitor undoes them in reverse order once runc
// exits, before Done closes.
// Stop sends SIGTERM, waits a grace period and then SIGKILLs; Run does the
// same when its context ends. runc keeps its state under Config.Root/runc, so
// Riffle never sees or touches other runc users' containers, and every
// container ID starts with "riffle-".
//
// # Crashes
//
// When Riffle dies without cleaning up (kill -9), containers may still run and
// overlays stay mounted. Cleanup, called at start-up before any task runs,
// kills and deletes every container in Riffle's runc root and unmounts and
// removes every leftover task directory.
package runtime
