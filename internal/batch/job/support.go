package job

import (
	"fmt"
	"strings"

	"cloud.google.com/go/batch/apiv1/batchpb"
)

// Action is what Riffle does with a feature a single machine cannot honour.
type Action int

const (
	// Refuse: the job is rejected. Used when running without the feature
	// would change what the job's programs see: a missing mount, disk,
	// GPU or secret, or a machine definition Riffle cannot inspect.
	Refuse Action = iota
	// Ignore: the job runs without the feature and a status event on the
	// job says so. Used when the feature only decides where, on what
	// hardware class, as whom or at what price Google would run the job,
	// or how it reports outside the job (Pub/Sub, Cloud Logging).
	Ignore
)

func (a Action) String() string {
	if a == Ignore {
		return "ignored"
	}
	return "refused"
}

// Feature is one use of a feature that a single machine does not have.
type Feature struct {
	// Path is the field path in the config, e.g.
	// "allocationPolicy.instances[0].policy.accelerators".
	Path string
	// What names the feature, e.g. "GPU accelerators".
	What string
	// Action is what Riffle does about it.
	Action Action
	// Hint says what to do instead (for refused features) or what happens
	// instead (for ignored ones).
	Hint string
}

func (f Feature) String() string {
	if f.Action == Ignore {
		return fmt.Sprintf("%s: %s ignored by Riffle (single machine): %s", f.Path, f.What, f.Hint)
	}
	return fmt.Sprintf("%s: %s not supported by Riffle (single machine): %s", f.Path, f.What, f.Hint)
}

// UnsupportedError is returned by CheckSupport when a job uses features
// Riffle refuses. It matches ErrInvalid and ErrUnsupported.
type UnsupportedError struct {
	Features []Feature // only the refused ones
}

// ErrUnsupported is matched (errors.Is) by UnsupportedError.
var ErrUnsupported = fmt.Errorf("%w: unsupported feature", ErrInvalid)

func (e *UnsupportedError) Error() string {
	parts := make([]string, len(e.Features))
	for i, f := range e.Features {
		parts[i] = f.String()
	}
	return "job: " + strings.Join(parts, "; ")
}

// Is makes errors.Is match ErrUnsupported and ErrInvalid.
func (e *UnsupportedError) Is(target error) bool {
	return target == ErrUnsupported || target == ErrInvalid
}

// Check lists every feature of j that a single machine cannot honour,
// refused and ignored alike, in config order.
func Check(j *batchpb.Job) []Feature {
	var fs []Feature
	add := func(path, what string, a Action, hint string) {
		fs = append(fs, Feature{Path: path, What: what, Action: a, Hint: hint})
	}
	for gi, g := range j.GetTaskGroups() {
		gp := fmt.Sprintf("taskGroups[%d]", gi)
		ts := g.GetTaskSpec()
		sp := gp + ".taskSpec"
		checkEnv(ts.GetEnvironment(), sp+".environment", add)
		for ei, e := range g.GetTaskEnvironments() {
			checkEnv(e, fmt.Sprintf("%s.taskEnvironments[%d]", gp, ei), add)
		}
		for vi, v := range ts.GetVolumes() {
			p := fmt.Sprintf("%s.volumes[%d]", sp, vi)
			switch v.GetSource().(type) {
			case *batchpb.Volume_Gcs:
				add(p+".gcs", "Cloud Storage (GCS) volumes", Refuse, "mount the data through NFS or copy it to the host and use a container volume \"/host:/ctr\"")
			case *batchpb.Volume_DeviceName:
				add(p+".deviceName", "disk volumes (persistent disk, local SSD)", Refuse, "there are no attachable disks; use a host directory through a container volume \"/host:/ctr\"")
			}
		}
		for ri, r := range ts.GetRunnables() {
			checkEnv(r.GetEnvironment(), fmt.Sprintf("%s.runnables[%d].environment", sp, ri), add)
		}
	}
	ap := j.GetAllocationPolicy()
	if ap != nil {
		if ap.GetLocation() != nil {
			add("allocationPolicy.location", "location policy", Ignore, "the job runs on this machine")
		}
		for ii, inst := range ap.GetInstances() {
			ip := fmt.Sprintf("allocationPolicy.instances[%d]", ii)
			if inst.GetInstanceTemplate() != "" {
				add(ip+".instanceTemplate", "instance templates", Refuse, "a template can carry GPUs, disks and images Riffle cannot provide or inspect; describe the machine with policy instead, or drop it")
			}
			pol := inst.GetPolicy()
			for ai := range pol.GetAccelerators() {
				add(fmt.Sprintf("%s.policy.accelerators[%d]", ip, ai), "GPU accelerators", Refuse, "this machine has no GPUs to attach; remove accelerators to run on the CPU")
			}
			if inst.GetInstallGpuDrivers() && len(pol.GetAccelerators()) == 0 {
				add(ip+".installGpuDrivers", "GPU driver installation", Ignore, "no GPU is attached, so no driver is installed")
			}
			for di := range pol.GetDisks() {
				add(fmt.Sprintf("%s.policy.disks[%d]", ip, di), "attached disks", Refuse, "there are no disks to attach; use a host directory through a container volume \"/host:/ctr\"")
			}
			if pol.GetMachineType() != "" {
				add(ip+".policy.machineType", "machine types", Ignore, "tasks run on this machine, limited by taskSpec.computeResource")
			}
			if pol.GetMinCpuPlatform() != "" {
				add(ip+".policy.minCpuPlatform", "CPU platform selection", Ignore, "tasks run on this machine's CPU")
			}
			if pol.GetProvisioningModel() != batchpb.AllocationPolicy_PROVISIONING_MODEL_UNSPECIFIED {
				add(ip+".policy.provisioningModel", "provisioning models (Spot, preemptible)", Ignore, "tasks are never preempted here")
			}
			if pol.GetBootDisk() != nil {
				add(ip+".policy.bootDisk", "boot disk image and size", Ignore, "script runnables run on this machine's own system")
			}
			if pol.GetReservation() != "" {
				add(ip+".policy.reservation", "reservations", Ignore, "the job runs on this machine")
			}
			if inst.GetInstallOpsAgent() {
				add(ip+".installOpsAgent", "Ops Agent", Ignore, "no agent is installed")
			}
			if inst.GetBlockProjectSshKeys() {
				add(ip+".blockProjectSshKeys", "project SSH keys", Ignore, "there are no project SSH keys here")
			}
		}
		if ap.GetServiceAccount() != nil {
			add("allocationPolicy.serviceAccount", "service accounts", Ignore, "tasks run without Google credentials")
		}
		if len(ap.GetLabels()) > 0 {
			add("allocationPolicy.labels", "VM labels", Ignore, "there are no VMs to label")
		}
		if ap.GetNetwork() != nil {
			add("allocationPolicy.network", "VPC networks", Ignore, "tasks use this machine's network (or none with container.blockExternalNetwork)")
		}
		if ap.GetPlacement() != nil {
			add("allocationPolicy.placement", "placement policies", Ignore, "all tasks run on one machine")
		}
		if len(ap.GetTags()) > 0 {
			add("allocationPolicy.tags", "network tags", Ignore, "there are no VMs to tag")
		}
	}
	for ni := range j.GetNotifications() {
		add(fmt.Sprintf("notifications[%d]", ni), "Pub/Sub notifications", Ignore, "no message is published; poll the job with get or list")
	}
	if lp := j.GetLogsPolicy(); lp.GetDestination() == batchpb.LogsPolicy_CLOUD_LOGGING {
		add("logsPolicy.destination", "Cloud Logging", Ignore, "logs are kept by Riffle and read with `riffle batch jobs logs`")
	}
	return fs
}

func checkEnv(e *batchpb.Environment, p string, add func(string, string, Action, string)) {
	if len(e.GetSecretVariables()) > 0 {
		add(p+".secretVariables", "Secret Manager secrets", Refuse, "there is no Secret Manager; pass the values in variables")
	}
	if e.GetEncryptedVariables() != nil {
		add(p+".encryptedVariables", "KMS-encrypted variables", Refuse, "there is no Cloud KMS; pass the values in variables")
	}
}

// CheckSupport runs Check and returns the ignored features, or an
// *UnsupportedError listing every refused one.
func CheckSupport(j *batchpb.Job) (ignored []Feature, err error) {
	var refused []Feature
	for _, f := range Check(j) {
		if f.Action == Refuse {
			refused = append(refused, f)
		} else {
			ignored = append(ignored, f)
		}
	}
	if len(refused) > 0 {
		return ignored, &UnsupportedError{Features: refused}
	}
	return ignored, nil
}
