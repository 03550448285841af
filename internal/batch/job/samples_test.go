package job

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/testutil"
)

// sampleVars fills the samples' ${VAR} placeholders, as their own scripts
// do with envsubst. Variables the samples expect at run time
// (BATCH_TASK_INDEX, ...) are not in the map and stay as written.
var sampleVars = map[string]string{
	"PROJECT_ID": "riffle-test", "ProjectID": "riffle-test", "HOST_PROJECT_ID": "riffle-host",
	"Location": "local", "REGION": "local", "ALLOWED_REGION": "regions/local",
	"ALLOWED_ZONE": "zones/local-a", "ALLOWED_LOCATION": "regions/local", "ALLOWED_LOCATIONS": "regions/local",
	"IMAGE": "127.0.0.1:5000/busybox:latest", "Image": "127.0.0.1:5000/busybox:latest",
	"CONTAINER_IMAGE": "127.0.0.1:5000/busybox:latest", "CONTAINER_IMAGE_URI": "127.0.0.1:5000/busybox:latest",
	"RepositoryName": "riffle", "CONTAINER_COMMAND": "echo hello",
	"MACHINE_TYPE": "e2-standard-4", "CPU_MILLI": "1000", "MEMORY_MIB": "512",
	"BOOT_DISK_SIZE_GB": "50", "BootDiskImage": "batch-debian", "BootDiskSize": "50", "BootDiskType": "pd-balanced",
	"DEVICE_NAME": "scratch", "MOUNT_PATH": "/mnt/disks/share", "MOUNT_OPTIONS": "rw,async",
	"REMOTE_PATH": "/share", "SERVER": "127.0.0.1", "BUCKET": "riffle-bucket", "BUCKET_PATH": "riffle-bucket/data",
	"LOCAL_SSD_SIZE": "375", "NEW_DISK_SIZE": "100", "NEW_DISK_TYPE": "pd-balanced",
	"EXT_DISK_SELF_LINK": "projects/riffle-test/zones/local-a/disks/data",
	"GPU_TYPE":           "nvidia-l4", "GPU_COUNT": "1", "INSTALL_GPU_DRIVERS": "true",
	"NETWORK": "global/networks/default", "SUBNET": "regions/local/subnetworks/default",
	"NO_EXTERNAL_IP_ADDRESS": "true", "BLOCK_EXTERNAL_NETWORK": "true",
	"ServiceAccountEmail":         "batch@riffle-test.iam.gserviceaccount.com",
	"BATCH_SERVICE_ACCOUNT_EMAIL": "batch@riffle-test.iam.gserviceaccount.com",
	"InstanceTemplateWithSA":      "projects/riffle-test/global/instanceTemplates/with-sa",
	"JobStateTopic":               "job-state", "TaskStateTopic": "task-state",
	"LOGS_DESTINATION": "CLOUD_LOGGING", "PARALLELISM": "2", "TASK_COUNT": "4", "TASK_COUNT_PER_NODE": "1",
	"RESERVATION": "projects/riffle-test/reservations/r1", "SHM_SIZE": "1g",
	"FOLLOWING_SCRIPT": "echo next", "HF_TOKEN_SECRET": "projects/riffle-test/secrets/hf/versions/1",
	"WANDB_API_KEY_SECRET": "projects/riffle-test/secrets/wandb/versions/1",
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func fillSample(s string) string {
	return placeholder.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := sampleVars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// samplesDir finds ../shared/batch-samples relative to the module root.
func samplesDir(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	dir := filepath.Join(root, "..", "shared", "batch-samples")
	if _, err := os.Stat(dir); err != nil {
		if testutil.InCI() {
			t.Fatalf("batch samples missing at %s: %v", dir, err)
		}
		t.Skipf("batch samples missing at %s", dir)
	}
	return dir
}

// angleVars fills the hand-edited <...> placeholders some samples carry
// (the user replaces them before submitting).
var angleVars = map[string]string{
	"<CUSTOM_BOOT_DISK_SIZE>": "50", "<CUSTOM_BOOT_IMAGE>": "batch-debian", "<CUSTOM_GPU_TYPE>": "nvidia-l4",
	"<SELECTED_ZONE>": "local-a", "<SRUN_COMMAND>": "hostname",
	"<YOUR FILESTORE IP ADDRESS>": "127.0.0.1", "<YOUR FILESTORE PATH>": "/share",
	"<YOUR FILESTORE SHARE PATH, e.g. /share>": "/share", "<YOUR PROJECT ID>": "riffle-test",
	"<your Filestore IP address>": "127.0.0.1", "<your Filestore share path, e.g. /share>": "/share",
	"<your project>": "riffle-test", "<your repo>": "riffle", "<your image name>": "busybox",
}

func fillAll(s string) string {
	s = fillSample(s)
	for k, v := range angleVars {
		s = strings.ReplaceAll(s, k, v)
	}
	return s
}

// TestSamples parses every real Batch config in ../shared/batch-samples the
// way `riffle batch jobs submit --config` does. Jobs a single machine can run
// must be accepted; the others must be refused naming exactly the
// unsupported fields, or be accepted with those fields listed as ignored.
func TestSamples(t *testing.T) {
	type want struct {
		outcome string   // "ok", "refused" or "invalid"
		paths   []string // refused/ignored feature paths or error substrings, all required
	}
	const cl = "logsPolicy.destination"
	table := map[string]want{
		"api-samples/boot-disk/job_with_custom_boot_disk.json":                      {"ok", []string{"allocationPolicy.instances[0].policy.bootDisk", cl}},
		"api-samples/gcs/job_with_gcs_volume.json":                                  {"refused", []string{"taskGroups[0].taskSpec.volumes[0].gcs"}},
		"api-samples/gpu/gpu_job_with_driver_installation.json":                     {"refused", []string{"allocationPolicy.instances[0].policy.accelerators[0]"}},
		"api-samples/image-streaming/image_streaming_simple_job.json":               {"ok", []string{"allocationPolicy.instances[0].policy.machineType", cl}},
		"api-samples/local-ssd/job_with_local_ssd_volume.json":                      {"refused", []string{"taskGroups[0].taskSpec.volumes[0].deviceName", "allocationPolicy.instances[0].policy.disks[0]"}},
		"api-samples/network/container_job_block_external_network.json":             {"ok", []string{cl}},
		"api-samples/network/job_with_custom_network.json":                          {"ok", []string{"allocationPolicy.network", cl}},
		"api-samples/nfs/job_with_nfs_volume.json":                                  {"ok", []string{cl}},
		"api-samples/ops-agent/multi_tasks_per_node_w_gpu.yaml":                     {"refused", []string{"allocationPolicy.instances[0].policy.accelerators[0]"}},
		"api-samples/ops-agent/one_simple_task_per_node.yaml":                       {"ok", []string{"allocationPolicy.instances[0].policy.machineType"}},
		"api-samples/ops-agent/one_task_per_node_w_gpu.yaml":                        {"refused", []string{"allocationPolicy.instances[0].policy.accelerators[0]"}},
		"api-samples/persistent-disk/job_with_existing_pd_volume.json":              {"refused", []string{"taskGroups[0].taskSpec.volumes[0].deviceName", "allocationPolicy.instances[0].policy.disks[0]"}},
		"api-samples/persistent-disk/job_with_new_pd_volume.json":                   {"refused", []string{"taskGroups[0].taskSpec.volumes[0].deviceName", "allocationPolicy.instances[0].policy.disks[0]"}},
		"api-samples/pubsub/pubsub.json":                                            {"ok", []string{"notifications[0]", "notifications[1]", cl}},
		"api-samples/scheduling/task_run_in_order.json":                             {"ok", []string{cl}},
		"api-samples/scheduling/task_run_in_parallel.json":                          {"ok", []string{cl}},
		"api-samples/service-account/job_with_a_sa.json":                            {"ok", []string{"allocationPolicy.serviceAccount"}},
		"api-samples/service-account/template_with_a_sa.json":                       {"refused", []string{"allocationPolicy.instances[0].instanceTemplate"}},
		"api-samples/spot-preemption-handling/task_retry_including_preemption.json": {"ok", []string{"allocationPolicy.instances[0].policy.provisioningModel"}},
		"api-samples/spot-preemption-handling/task_retry_purely_on_preemption.json": {"ok", []string{"allocationPolicy.instances[0].policy.provisioningModel"}},
		"busybox/job.json":                     {"ok", []string{cl}},
		"gen-ai/fine-tune-axolotl/config.json": {"refused", []string{"taskGroups[0].taskSpec.volumes[0].gcs", "taskGroups[0].taskSpec.runnables[0].environment.secretVariables"}},
		// Not a Batch job at all: an axolotl training config.
		"gen-ai/fine-tune-axolotl/config.yaml": {"invalid", []string{"this is not a Job"}},
		// Malformed: destination and instances at the top level.
		"gen-ai/fine-tune-llama2/job.yaml":                        {"invalid", []string{"destination: unknown field", "instances: unknown field"}},
		"mpi-container/job.yaml":                                  {"ok", []string{"allocationPolicy.instances[0].policy.bootDisk", cl}},
		"simple-mpi/job.yaml":                                     {"ok", []string{cl}},
		"slurm-to-batch/examples/example_batch_job.yaml":          {"refused", []string{"allocationPolicy.instances[0].policy.accelerators[0]"}},
		"slurm-to-batch/examples/example_batch_job_template.yaml": {"refused", []string{"allocationPolicy.instances[0].policy.accelerators[0]"}},
		"train-cnn/normalize.yaml":                                {"ok", []string{cl}},
		"train-cnn/train.yaml":                                    {"refused", []string{"allocationPolicy.instances[0].policy.accelerators[0]"}},
		"transcoding/job.json":                                    {"refused", []string{"taskGroups[0].taskSpec.volumes[0].gcs"}},
		"wrf/job.yaml":                                            {"ok", []string{"allocationPolicy.location", "allocationPolicy.instances[0].policy.machineType"}},
	}
	dir := samplesDir(t)
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == filepath.Join(dir, "README.md") {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		seen[rel] = true
		w, ok := table[rel]
		if !ok {
			t.Errorf("%s: new sample; add it to the table", rel)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		t.Run(rel, func(t *testing.T) {
			var msg string
			outcome := "ok"
			j, err := Parse([]byte(fillAll(string(data))), Lenient)
			if err == nil {
				err = Validate(j)
			}
			var ign []Feature
			if err == nil {
				ign, err = CheckSupport(j)
				if err != nil {
					outcome = "refused"
					var ue *UnsupportedError
					if !errors.As(err, &ue) || !errors.Is(err, ErrInvalid) {
						t.Fatalf("refusal is %T, want *UnsupportedError", err)
					}
				}
			} else {
				outcome = "invalid"
			}
			if err != nil {
				msg = err.Error()
			} else {
				for _, f := range ign {
					msg += f.String() + "\n"
				}
				Prepare(j, "projects/riffle-test/locations/local", "sample", time.Now(), ign)
				if got := len(j.Status.StatusEvents); got != 1+len(ign) {
					t.Errorf("%d status events, want 1 + one per ignored feature (%d)", got, len(ign))
				}
			}
			if outcome != w.outcome {
				t.Fatalf("outcome %s, want %s: %s", outcome, w.outcome, msg)
			}
			for _, p := range w.paths {
				if !strings.Contains(msg, p) {
					t.Errorf("message does not name %q:\n%s", p, msg)
				}
			}
			t.Logf("%s", msg)
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel := range table {
		if !seen[rel] {
			t.Errorf("%s: listed in the table but missing from the samples", rel)
		}
	}
}
