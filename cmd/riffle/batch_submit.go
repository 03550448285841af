package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

// submitFlags are gcloud batch jobs submit's flags, plus --task-count and
// --parallelism, which gcloud lacks but a quick job often wants.
type submitFlags struct {
	// placeholders are the ${VAR}s of the config read, for error hints.
	placeholders   []string
	config         string
	jobPrefix      string
	imageURI       string
	commandsFile   string
	entrypoint     string
	scriptText     string
	scriptFilePath string
	taskCount      int64
	parallelism    int64
	machineType    string
	priority       int64
	provisioning   string
	network        string
	subnetwork     string
	noExternalIP   bool
	requestID      string
}

func newBatchSubmitCmd(o *batchOpts) *cobra.Command {
	f := &submitFlags{}
	cmd := &cobra.Command{
		Use:   "submit [JOB] (--config FILE|- | --container-image-uri IMAGE | --script-text TEXT | --script-file-path PATH)",
		Short: "Submit a job from a JSON or YAML config, or a quick container or script job from flags",
		Long: `submit creates a Batch job, as "gcloud batch jobs submit" does.

--config takes the job as JSON or YAML (a file, or - for stdin), in the form
gcloud accepts: camelCase or snake_case keys, and a single value where the
schema wants a list. Placeholders such as ${PROJECT_ID} are not expanded:
fill them in first (envsubst).

Without --config, the flags describe a one-runnable job:
  --container-image-uri IMAGE [--container-entrypoint E] [--container-commands-file F]
  --script-text 'echo $BATCH_TASK_INDEX'   or   --script-file-path /path/on/this/machine.sh
with --task-count and --parallelism for its task group.

JOB is a job ID or a full name; without it an ID is made from --job-prefix
(default "job") and the time. The job is printed as YAML (see --format).`,
		Example: `  riffle batch jobs submit hello --location us-central1 --config job.json
  envsubst < job.yaml | riffle batch jobs submit --config -
  riffle batch jobs submit --script-text 'echo task $BATCH_TASK_INDEX' --task-count 4 --parallelism 2`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := f.build(cmd)
			if err != nil {
				return f.placeholderHint(err)
			}
			parent, id, err := f.target(o, args)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, addr, err := o.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			created, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: j, RequestId: f.requestID})
			if err != nil {
				return f.placeholderHint(batchAPIError(addr, "submit "+job.Name(parent, id), err))
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Job %s was successfully submitted.\n", id)
			return printJobs(cmd.OutOrStdout(), o.format, "yaml", created)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "job config file, JSON or YAML; - reads standard input")
	fl.StringVar(&f.jobPrefix, "job-prefix", "", "prefix of the generated job ID when JOB is not given (default \"job\")")
	fl.StringVar(&f.imageURI, "container-image-uri", "", "quick container job: the image to run")
	fl.StringVar(&f.commandsFile, "container-commands-file", "", "quick container job: file with the commands (CMD), one argument a line")
	fl.StringVar(&f.entrypoint, "container-entrypoint", "", "quick container job: the entrypoint (replaces the image's ENTRYPOINT)")
	fl.StringVar(&f.scriptText, "script-text", "", "quick script job: the script text, run with sh on this machine")
	fl.StringVar(&f.scriptFilePath, "script-file-path", "", "quick script job: path of a script on the machine running riffle serve")
	fl.Int64Var(&f.taskCount, "task-count", 0, "number of tasks (taskGroups[0].taskCount; default 1)")
	fl.Int64Var(&f.parallelism, "parallelism", 0, "tasks run at the same time (taskGroups[0].parallelism; default all)")
	fl.StringVar(&f.machineType, "machine-type", "", "Compute Engine machine type; recorded but ignored: Riffle runs tasks on this machine")
	fl.Int64Var(&f.priority, "priority", 0, "job priority, 0 to 99")
	fl.StringVar(&f.provisioning, "provisioning-model", "", "STANDARD, SPOT or PREEMPTIBLE; recorded but ignored on one machine")
	fl.StringVar(&f.network, "network", "", "VPC network; recorded but ignored on one machine")
	fl.StringVar(&f.subnetwork, "subnetwork", "", "VPC subnetwork; recorded but ignored on one machine")
	fl.BoolVar(&f.noExternalIP, "no-external-ip-address", false, "no external IP for the VMs; recorded but ignored on one machine")
	fl.StringVar(&f.requestID, "request-id", "", "makes the submission idempotent: retrying with the same ID returns the same job")
	return cmd
}

// target is the parent and job ID to create: from JOB (an ID or a full
// name), else generated from --job-prefix.
func (f *submitFlags) target(o *batchOpts, args []string) (parent, id string, err error) {
	if len(args) == 1 {
		if f.jobPrefix != "" {
			return "", "", errors.New("batch: give JOB or --job-prefix, not both")
		}
		name, err := o.jobName(args[0])
		if err != nil {
			return "", "", err
		}
		p, l, id, _ := job.SplitName(name)
		return "projects/" + p + "/locations/" + l, id, nil
	}
	if f.jobPrefix != "" {
		if err := job.ValidateJobID(f.jobPrefix); err != nil {
			return "", "", fmt.Errorf("batch: --job-prefix %q: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen", f.jobPrefix)
		}
	}
	return o.parent(), job.NewJobID(f.jobPrefix, time.Now()), nil
}

// build makes the job from --config or from the quick-job flags, then
// applies the flags that modify either.
func (f *submitFlags) build(cmd *cobra.Command) (*batchpb.Job, error) {
	quickContainer := f.imageURI != "" || f.commandsFile != "" || f.entrypoint != ""
	quickScript := f.scriptText != "" || f.scriptFilePath != ""
	var j *batchpb.Job
	switch {
	case f.config != "" && (quickContainer || quickScript):
		return nil, errors.New("batch: --config cannot be combined with --container-* or --script-* flags: put the runnable in the config")
	case quickContainer && quickScript:
		return nil, errors.New("batch: give either --container-image-uri (container job) or --script-text/--script-file-path (script job), not both")
	case f.scriptText != "" && f.scriptFilePath != "":
		return nil, errors.New("batch: give --script-text or --script-file-path, not both")
	case f.config != "":
		data, err := f.readConfig(cmd.InOrStdin())
		if err != nil {
			return nil, err
		}
		f.placeholders = placeholders(data)
		j, err = job.Parse(data, job.Lenient)
		if err != nil {
			return nil, fmt.Errorf("batch: --config %s: %w", f.configName(), err)
		}
	case quickContainer:
		if f.imageURI == "" {
			return nil, errors.New("batch: --container-entrypoint and --container-commands-file need --container-image-uri")
		}
		c := &batchpb.Runnable_Container{ImageUri: f.imageURI, Entrypoint: f.entrypoint}
		if f.commandsFile != "" {
			cmds, err := readCommandsFile(f.commandsFile)
			if err != nil {
				return nil, err
			}
			c.Commands = cmds
		}
		j = quickJob(&batchpb.Runnable{Executable: &batchpb.Runnable_Container_{Container: c}})
	case quickScript:
		s := &batchpb.Runnable_Script{}
		if f.scriptText != "" {
			s.Command = &batchpb.Runnable_Script_Text{Text: f.scriptText}
		} else {
			// The server runs the script on this machine; an absolute
			// path does not depend on the server's working directory.
			p, err := filepath.Abs(f.scriptFilePath)
			if err != nil {
				return nil, fmt.Errorf("batch: --script-file-path: %w", err)
			}
			s.Command = &batchpb.Runnable_Script_Path{Path: p}
		}
		j = quickJob(&batchpb.Runnable{Executable: &batchpb.Runnable_Script_{Script: s}})
	default:
		return nil, errors.New("batch: nothing to run: give --config FILE (or - for stdin), --container-image-uri IMAGE, --script-text TEXT or --script-file-path PATH")
	}
	return j, f.apply(cmd, j)
}

// placeholderRE matches ${VAR}, the placeholders of Batch's samples and of
// envsubst templates.
var placeholderRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// placeholders lists the ${VAR}s of a config, except the BATCH_* variables
// that tasks expand at run time.
func placeholders(data []byte) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range placeholderRE.FindAllStringSubmatch(string(data), -1) {
		if !strings.HasPrefix(m[1], "BATCH_") && !seen[m[0]] {
			seen[m[0]] = true
			out = append(out, m[0])
		}
	}
	return out
}

// placeholderHint adds to a refused submit that the config holds what look
// like unfilled placeholders: the error itself (a bad imageUri, a string
// where a number belongs) rarely says so.
func (f *submitFlags) placeholderHint(err error) error {
	if err == nil || len(f.placeholders) == 0 {
		return err
	}
	return fmt.Errorf("%w\nthe config holds %s, which look like unfilled placeholders: fill them first, e.g. envsubst < %s | riffle batch jobs submit --config -", err, strings.Join(f.placeholders, ", "), f.configName())
}

func (f *submitFlags) configName() string {
	if f.config == "-" {
		return "(stdin)"
	}
	return f.config
}

func (f *submitFlags) readConfig(stdin io.Reader) ([]byte, error) {
	var r io.Reader
	if f.config == "-" {
		r = stdin
	} else {
		fh, err := os.Open(f.config)
		if err != nil {
			return nil, fmt.Errorf("batch: --config: %w", err)
		}
		defer fh.Close()
		r = fh
	}
	// Read one byte past the limit so Parse reports the size instead of
	// a truncated document.
	data, err := io.ReadAll(io.LimitReader(r, job.MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("batch: --config %s: %w", f.configName(), err)
	}
	return data, nil
}

// readCommandsFile reads --container-commands-file: one argument a line,
// as gcloud reads it; a trailing newline does not add an empty argument.
func readCommandsFile(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("batch: --container-commands-file: %w", err)
	}
	var cmds []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), job.MaxConfigSize)
	for sc.Scan() {
		cmds = append(cmds, strings.TrimSuffix(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("batch: --container-commands-file %s: %w", path, err)
	}
	return cmds, nil
}

// quickJob is the job gcloud builds from its quick-job flags: one task
// group with one runnable, everything else left to the server's defaults.
func quickJob(r *batchpb.Runnable) *batchpb.Job {
	return &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{
		TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{r}},
	}}}
}

// apply sets the fields the remaining flags name, on top of a config as
// gcloud does. Settings that mean nothing on one machine are still set, so
// the job reads as it would on Google, and the server records them as
// ignored in the job's status events; the warning says so up front.
func (f *submitFlags) apply(cmd *cobra.Command, j *batchpb.Job) error {
	fl := cmd.Flags()
	warn := func(flag string) {
		fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: --%s is recorded but ignored: Riffle runs every task on this machine.\n", flag)
	}
	group := func() *batchpb.TaskGroup {
		if len(j.TaskGroups) == 0 {
			j.TaskGroups = []*batchpb.TaskGroup{{}}
		}
		return j.TaskGroups[0]
	}
	if fl.Changed("task-count") {
		if f.taskCount < 1 {
			return fmt.Errorf("batch: --task-count %d: must be at least 1", f.taskCount)
		}
		group().TaskCount = f.taskCount
	}
	if fl.Changed("parallelism") {
		if f.parallelism < 1 {
			return fmt.Errorf("batch: --parallelism %d: must be at least 1", f.parallelism)
		}
		group().Parallelism = f.parallelism
	}
	if fl.Changed("priority") {
		if f.priority < 0 || f.priority > 99 {
			return fmt.Errorf("batch: --priority %d: must be between 0 and 99", f.priority)
		}
		j.Priority = f.priority
	}
	policy := func() *batchpb.AllocationPolicy_InstancePolicy {
		if j.AllocationPolicy == nil {
			j.AllocationPolicy = &batchpb.AllocationPolicy{}
		}
		ap := j.AllocationPolicy
		if len(ap.Instances) == 0 {
			ap.Instances = []*batchpb.AllocationPolicy_InstancePolicyOrTemplate{{}}
		}
		ip := ap.Instances[0]
		if ip.GetPolicy() == nil {
			ip.PolicyTemplate = &batchpb.AllocationPolicy_InstancePolicyOrTemplate_Policy{Policy: &batchpb.AllocationPolicy_InstancePolicy{}}
		}
		return ip.GetPolicy()
	}
	if f.machineType != "" {
		warn("machine-type")
		policy().MachineType = f.machineType
	}
	if f.provisioning != "" {
		v, ok := batchpb.AllocationPolicy_ProvisioningModel_value[strings.ToUpper(f.provisioning)]
		if !ok || v == 0 {
			return fmt.Errorf("batch: --provisioning-model %q: use STANDARD, SPOT or PREEMPTIBLE", f.provisioning)
		}
		warn("provisioning-model")
		policy().ProvisioningModel = batchpb.AllocationPolicy_ProvisioningModel(v)
	}
	if f.network != "" || f.subnetwork != "" || f.noExternalIP {
		if f.network == "" || f.subnetwork == "" {
			return errors.New("batch: --network and --subnetwork go together (and --no-external-ip-address needs both), as in gcloud")
		}
		warn("network")
		if j.AllocationPolicy == nil {
			j.AllocationPolicy = &batchpb.AllocationPolicy{}
		}
		j.AllocationPolicy.Network = &batchpb.AllocationPolicy_NetworkPolicy{
			NetworkInterfaces: []*batchpb.AllocationPolicy_NetworkInterface{{
				Network: f.network, Subnetwork: f.subnetwork, NoExternalIpAddress: f.noExternalIP,
			}},
		}
	}
	return nil
}
